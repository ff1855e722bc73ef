"""Taking data away: messages becoming anonymous gaps (with the bot turns that carry them),
`forget`, the index of export files that lets forget reach into them, and retention. What is
removed here also leaves the file's bytes: see bot.store.erasure."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite

from bot.message import ConversationKey
from bot.store.db import StoreClosed, chunks, fetch
from bot.store.erasure import Eraser
from bot.store.privacy import PrivacyMemory, quotes
from bot.store.writer import Writer

log = logging.getLogger(__name__)


@dataclass
class ForgetResult:
    """What `forget` removed."""

    messages: int = 0
    bot_turns: int = 0
    reactions: int = 0
    consent_removed: bool = False
    export_segments: int = 0  # conversations removed from export files not yet trained on
    export_files: list[str] = field(default_factory=list)
    export_errors: list[str] = field(default_factory=list)
    # True: the store's file and its WAL hold no byte of what was removed. False: removed from
    # every table, but the file is busy (another connection reads an older snapshot), so old
    # pages still hold it; the store finishes that in the background (`Store.wait_erased`).
    on_disk: bool = True

    @property
    def total(self) -> int:
        return self.messages + self.bot_turns + self.reactions + self.export_segments



class Forgetter:
    """Gaps, forget, the export index and retention, on the store's writer."""

    def __init__(self, writer: Writer, privacy: PrivacyMemory, eraser: Eraser) -> None:
        self._writer = writer
        self._privacy = privacy
        self._eraser = eraser
        self.start_row = 0  # set at open: rows after this one were written while this process ran

    async def to_gaps(self, db: aiosqlite.Connection, row_ids: Sequence[int]
                      ) -> tuple[int, int]:
        """Users' messages become anonymous gaps; the bot turns that may carry them are
        withheld. Returns (messages, bot turns)."""
        victims: list[tuple[int, int, str | None]] = []
        platform_ids: dict[int, list[str]] = {}  # conversation -> its victims' platform ids
        for chunk in chunks(row_ids):
            q = ",".join("?" * len(chunk))
            for r in await fetch(
                    db, "SELECT conversation_id, id, text, platform_message_id FROM messages "
                    f"WHERE role = 'user' AND id IN ({q})", chunk):
                victims.append((int(r[0]), int(r[1]), r[2]))
                if r[3] is not None:
                    platform_ids.setdefault(int(r[0]), []).append(str(r[3]))
        if not victims:
            return 0, 0
        withheld = await self.withhold_dependents(db, victims)
        # Their platform ids go from the rows that point at them too: replies (the bot's
        # and others', in the channel and its threads). Decisions keep no platform id.
        for cid, pids in platform_ids.items():
            convs = ("SELECT id FROM conversations WHERE (platform, channel) = (SELECT "
                     "platform, channel FROM conversations WHERE id = ?)")
            for part in chunks(pids):
                q = ",".join("?" * len(part))
                await db.execute(f"UPDATE messages SET reply_to = NULL WHERE conversation_id "
                                 f"IN ({convs}) AND reply_to IN ({q})", (cid, *part))
        for chunk in chunks([v[1] for v in victims]):
            q = ",".join("?" * len(chunk))
            await db.execute(f"DELETE FROM reactions WHERE message_id IN ({q})", chunk)
            await db.execute(
                "UPDATE messages SET role = 'gap', platform_message_id = NULL, author_id = NULL, "
                "author_name = NULL, text = NULL, attachments = NULL, reply_to = NULL, "
                f"edited_ts = NULL WHERE id IN ({q})", chunk)
        # The model's context may still hold those written while this process runs.
        recent = [(cid, text) for cid, rid, text in victims if text and rid > self.start_row]
        keys: dict[int, ConversationKey] = {}
        for chunk in chunks(sorted({cid for cid, _ in recent})):
            q = ",".join("?" * len(chunk))
            keys.update({int(r[0]): ConversationKey(r[1], r[2], r[3] or None) for r in
                         await fetch(db, "SELECT id, platform, channel, thread FROM "
                                      f"conversations WHERE id IN ({q})", chunk)})
        for cid, text in recent:
            if cid in keys:
                self._privacy.remember(keys[cid], text)
        return len(victims), withheld

    async def withhold_dependents(self, db: aiosqlite.Connection,
                                  victims: Sequence[tuple[int, int, str | None]]) -> int:
        """Bot turns whose batch held one of these messages, or that repeat one, lose their
        text (they stay as withheld turns). Returns how many."""
        by_conv: dict[int, list[tuple[int, str | None]]] = {}
        for cid, rid, text in victims:
            by_conv.setdefault(cid, []).append((rid, text))
        withheld: list[int] = []
        for cid, items in by_conv.items():
            lo = min(rid for rid, _ in items)
            bots = await fetch(
                db, "SELECT id, sort_key, context_from, text FROM messages WHERE "
                "conversation_id = ? AND role = 'assistant' AND text IS NOT NULL AND "
                "sort_key >= ?", (cid, lo))
            for bid, anchor, ctx, text in bots:
                in_batch = any((ctx or 0) < rid <= anchor for rid, _ in items)
                if in_batch or quotes(text, [t for rid, t in items if rid <= anchor and t]):
                    withheld.append(int(bid))
        for chunk in chunks(withheld):
            q = ",".join("?" * len(chunk))
            await db.execute(f"DELETE FROM reactions WHERE message_id IN ({q})", chunk)
            await db.execute("UPDATE messages SET text = NULL, platform_message_id = NULL "
                             f"WHERE id IN ({q})", chunk)
        return len(withheld)

    # -- forget ---------------------------------------------------------------------------
    async def forget(self, user_id: str, platform: str | None = None, *,
                     wait: float = 0.0) -> ForgetResult:
        """Delete everything of a user: their messages (and the bot's answers to them) become
        anonymous gaps, replies lose those messages' platform ids, their reactions and consent
        record go, their conversations are removed from export files not yet used for training,
        and they leave the index of every export. `platform` None: every platform.

        Then the bytes: see bot.store.erasure. `wait`: how long to keep trying to finish that
        now; `result.on_disk` says whether it is done (otherwise it finishes in the
        background, and `Store.wait_erased` tells when)."""
        async def op(db: aiosqlite.Connection) -> tuple[ForgetResult, list[tuple[int, str, str]]]:
            result = ForgetResult()  # built afresh: a failed batch runs its jobs again
            plats = [platform] if platform is not None else [
                r[0] for r in await fetch(
                    db, "SELECT platform FROM consent WHERE user_id = ? UNION SELECT c.platform "
                    "FROM messages m JOIN conversations c ON c.id = m.conversation_id WHERE "
                    "m.author_id = ? UNION SELECT platform FROM export_segments WHERE "
                    "author_id = ? UNION SELECT c.platform FROM reactions r JOIN messages m "
                    "ON m.id = r.message_id JOIN conversations c ON c.id = m.conversation_id "
                    "WHERE r.user_id = ?", (user_id, user_id, user_id, user_id))]
            plan: list[tuple[int, str, str]] = []
            for plat in plats:
                ids = [int(r[0]) for r in await fetch(
                    db, "SELECT m.id FROM messages m JOIN conversations c ON c.id = "
                    "m.conversation_id WHERE c.platform = ? AND m.author_id = ? AND "
                    "m.role = 'user'", (plat, user_id))]
                n_messages, n_bot = await self.to_gaps(db, ids)
                result.messages += n_messages
                result.bot_turns += n_bot
                cur = await db.execute(
                    "DELETE FROM reactions WHERE user_id = ? AND message_id IN (SELECT m.id FROM "
                    "messages m JOIN conversations c ON c.id = m.conversation_id WHERE "
                    "c.platform = ?)", (user_id, plat))
                result.reactions += max(cur.rowcount, 0)
                cur = await db.execute("DELETE FROM consent WHERE platform = ? AND user_id = ?",
                                       (plat, user_id))
                result.consent_removed |= cur.rowcount > 0
                if n_messages or n_bot or result.reactions or cur.rowcount > 0:
                    await self._eraser.request(db, "forget")
                # An export already used for training is not edited any more, but its index
                # need not keep who was in it.
                await db.execute(
                    "DELETE FROM export_segments WHERE platform = ? AND author_id = ? AND "
                    "export_id IN (SELECT id FROM exports WHERE used_ts IS NOT NULL)",
                    (plat, user_id))
                rows = await fetch(
                    db, "SELECT DISTINCT e.id, e.path, s.segment_id FROM export_segments s JOIN "
                    "exports e ON e.id = s.export_id WHERE e.used_ts IS NULL AND s.platform = ? "
                    "AND s.author_id = ?", (plat, user_id))
                plan += [(int(r[0]), str(r[1]), str(r[2])) for r in rows]
            return result, plan

        result, plan = await self._writer.submit("forget", op)
        if plan:
            await self._forget_in_exports(plan, result)
        result.on_disk = await self._eraser.finish(wait)
        return result

    async def _forget_in_exports(self, plan: list[tuple[int, str, str]],
                                 result: ForgetResult) -> None:
        by_export: dict[tuple[int, str], set[str]] = {}
        for export_id, path, seg in plan:
            by_export.setdefault((export_id, path), set()).add(seg)
        done: list[tuple[int, set[str], bool]] = []
        for (export_id, path), segs in by_export.items():
            try:
                removed, exists = await asyncio.to_thread(_drop_lines, Path(path), segs)
            except OSError as e:
                result.export_errors.append(f"{path}: {e}")
                continue
            result.export_segments += removed
            if removed:
                result.export_files.append(path)
            done.append((export_id, segs, exists))

        async def op(db: aiosqlite.Connection) -> None:
            for export_id, segs, exists in done:
                if not exists:  # the file is gone: nothing left to clean later
                    await db.execute("DELETE FROM exports WHERE id = ?", (export_id,))
                    continue
                await db.executemany("DELETE FROM export_segments WHERE export_id = ? AND "
                                     "segment_id = ?", [(export_id, s) for s in segs])
                await db.execute("UPDATE exports SET segments = MAX(0, segments - ?) "
                                 "WHERE id = ?", (len(segs), export_id))

        await self._writer.submit("forget(exports)", op)

    # -- the export index (so that forget reaches into export files) -----------------------
    async def register_export(self, path: str | os.PathLike[str],
                              segments: Iterable[tuple[str, Iterable[tuple[str, str]]]]) -> int:
        """Remember which users' conversations an export file holds, so `forget` can remove
        them from it until it is marked used (`mark_export_used`)."""
        items = [(seg, list(authors)) for seg, authors in segments]
        where = str(Path(path).resolve())

        async def op(db: aiosqlite.Connection) -> int:
            cur = await db.execute("INSERT INTO exports (path, created_ts, segments) VALUES "
                                   "(?, ?, ?)", (where, time.time(), len(items)))
            export_id = int(cur.lastrowid or 0)
            await db.executemany(
                "INSERT INTO export_segments (export_id, segment_id, platform, author_id) "
                "VALUES (?, ?, ?, ?)",
                [(export_id, seg, p, a) for seg, authors in items for p, a in authors])
            return export_id

        return await self._writer.submit("register_export", op)

    async def mark_export_used(self, path: str | os.PathLike[str]) -> int:
        """An export file went into training: `forget` no longer edits it (the trained model
        is retired by retraining instead). Returns how many export records were marked."""
        where = str(Path(path).resolve())

        async def op(db: aiosqlite.Connection) -> int:
            cur = await db.execute("UPDATE exports SET used_ts = ? WHERE path = ? AND "
                                   "used_ts IS NULL", (time.time(), where))
            return max(cur.rowcount, 0)

        return await self._writer.submit("mark_export_used", op)

    # -- retention ------------------------------------------------------------------------
    async def purge_older_than(self, days: float, *, now: float | None = None,
                               wait: float = 0.0) -> int:
        """Delete messages (and their reactions) older than `days`; returns how many. Their
        bytes then leave the file as `forget`'s do (bot.store.erasure; `wait` as there)."""
        if days <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - days * 86400.0

        async def op(db: aiosqlite.Connection) -> int:
            cur = await db.execute("DELETE FROM messages WHERE ts < ?", (cutoff,))
            n = max(cur.rowcount, 0)
            if n:
                await self._eraser.request(db, "retention")
            return n

        n = await self._writer.submit("purge_older_than", op)
        if n:
            log.info("store: retention removed %d message(s) older than %g day(s)", n, days)
            await self._eraser.finish(wait)
        return n

    async def run_retention(self, interval: float, days: float) -> None:
        """Purge messages older than `days` now and every `interval` seconds, until
        cancelled (see `Store.run_retention`)."""
        if days <= 0:
            return
        while True:
            try:
                await self.purge_older_than(days)
            except StoreClosed:
                return
            except Exception:
                log.exception("store: retention purge failed; trying again in %gs", interval)
            await asyncio.sleep(interval)


def _drop_lines(path: Path, segment_ids: set[str]) -> tuple[int, bool]:
    """Rewrite a JSONL export without the conversations whose "id" is in `segment_ids`
    (atomically); returns (lines removed, the file exists)."""
    if not path.exists():
        return 0, False
    kept: list[str] = []
    removed = 0
    with path.open("r", encoding="utf-8", newline="") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                kept.append(line)  # not ours to judge: keep what we cannot read
                continue
            if isinstance(obj, dict) and obj.get("id") in segment_ids:
                removed += 1
            else:
                kept.append(line)
    if removed:
        tmp = path.with_name(path.name + ".forget-tmp")
        with tmp.open("w", encoding="utf-8", newline="") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return removed, True

