"""Export: the one way training reads the store. `export_conversations` yields consented
conversation segments in the JSONL conversation format, reading only through the store's
public read API (`Store.snapshot()`, bot.store.reads.Snapshot); `export_jsonl` writes them to a
file and registers it so that `forget` can reach into it."""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.message import clean_text, model_view_text
from bot.scrub import Scrubber
from bot.store.db import StoreError
from bot.store.privacy import QuoteIndex
from bot.store.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportSegment:
    """One consented stretch of a conversation, in the JSONL conversation format."""

    id: str
    platform: str
    records: list[dict[str, Any]]
    authors: frozenset[tuple[str, str]]  # (platform, author_id) of every user turn
    first_ts: float
    last_ts: float

    def to_json(self) -> dict[str, Any]:
        """The object written as one JSONL line (`bot.transcript.parse_line` reads it)."""
        return {"id": self.id, "messages": self.records,
                "tags": ["store", f"platform:{self.platform}"]}


@dataclass
class ExportStats:
    """What an export left out or cut (filled in by `export_conversations`)."""

    segments: int = 0
    skipped_slack: int = 0  # Slack conversations left out (training.allow_slack_data off)
    cut_messages: int = 0  # messages longer than max_message_chars, cut as the model sees them


def _any_between(sorted_ids: list[int], lo: int, hi: int) -> bool:
    """Whether an id in `sorted_ids` lies in (lo, hi]."""
    i = bisect.bisect_right(sorted_ids, lo)
    return i < len(sorted_ids) and sorted_ids[i] <= hi


@dataclass
class _Building:
    conv_id: int
    platform: str
    first_row: int
    first_ts: float
    scrubber: Scrubber | None
    records: list[dict[str, Any]] = field(default_factory=list)
    authors: set[tuple[str, str]] = field(default_factory=set)
    last_ts: float = 0.0
    user_turns: int = 0


async def export_conversations(store: Store, *, idle_gap_minutes: float = 60.0,
                               allow_slack_data: bool = False, scrub: bool = True,
                               use_presidio: bool | None = None,
                               max_message_chars: int | None = None,
                               min_user_turns: int = 1, stats: ExportStats | None = None,
                               retention_days: float | None = None
                               ) -> AsyncGenerator[ExportSegment, None]:
    """Consented conversation segments, in the JSONL conversation format.

    A conversation (channel or thread) is cut into segments wherever nobody wrote for
    `idle_gap_minutes`, and wherever a message was not kept (a gap: a user who had not opted
    in, another bot, a deleted or forgotten message) or its author is not opted in now; so no
    text that is not consented ever leaves the store. A bot turn is exported only when the
    stretch since its previous turn was consented (otherwise the segment is cut there); a bot
    turn deleted by a user or given a negative reaction is exported as silence (its assistant
    item is left out). Text is scrubbed of PII with stable placeholders (one Scrubber per
    segment, so segments cannot be linked through them) and shown as the model sees it
    (`model_view_text`: a message longer than `max_message_chars` is cut as the model saw it
    when deciding, with a log line that counts them; the store keeps it whole). Slack-origin
    conversations are exported only with `allow_slack_data` (Slack's API terms restrict
    training on API data); otherwise they are skipped with a log line that says why. `stats`,
    if given, is filled in with those counts. Retention applies (`retention_days`, default the
    store's): older messages are purged first, and none older is exported even if the purge
    could not run.

    Reads one consistent snapshot (`Store.snapshot()`) through its own connection; use it
    with `contextlib.aclosing` (or run it to the end) so the connection is closed.
    """
    gap_s = idle_gap_minutes * 60.0
    stats = stats if stats is not None else ExportStats()
    days = store.retention_days if retention_days is None else retention_days
    cutoff = -math.inf
    if days > 0:
        # Not left to the store's background purge, which an export started at once can beat.
        now = time.time()
        cutoff = now - days * 86400.0
        await store.purge_older_than(days, now=now)
    async with store.snapshot() as snap:  # one snapshot (WAL): writers carry on meanwhile
        opted = await snap.opted_in()
        convs = await snap.conversations()
        skipped_slack = cut = 0
        for conv_id, platform in convs:
            if platform == "slack" and not allow_slack_data:
                skipped_slack += 1
                stats.skipped_slack = skipped_slack
                continue
            negative = await snap.negative_rows(conv_id)
            cur: _Building | None = None
            unusable: list[int] = []  # rows not exported: gaps, authors not opted in now
            # ... the text of those that have one. User rows come in id order and a bot turn
            # right after the row it answered, so at a bot turn this holds exactly the texts
            # that came before it.
            unusable_text = QuoteIndex()

            def close() -> ExportSegment | None:
                nonlocal cur
                seg, cur = cur, None
                if seg is None or seg.user_turns < min_user_turns:
                    return None
                return ExportSegment(f"store-{seg.conv_id}-{seg.first_row}", seg.platform,
                                     seg.records, frozenset(seg.authors), seg.first_ts,
                                     seg.last_ts)

            async with contextlib.aclosing(snap.rows(conv_id, cutoff)) as rows:
                async for (row_id, role, author, name, text, attachments, ts, deleted, anchor,
                           ctx) in rows:
                    out: ExportSegment | None = None
                    if role == "gap" or (role == "user" and (platform, author) not in opted):
                        out = close()
                        unusable.append(row_id)  # rows other than bot turns come in id order
                        if text:
                            unusable_text.add(text)
                    elif role == "user":
                        if cur is not None and ts - cur.last_ts > gap_s:
                            out = close()
                        if cur is None:
                            cur = _Building(conv_id, platform, row_id, ts,
                                            Scrubber(use_presidio) if scrub else None)
                        files = json.loads(attachments) if attachments else []
                        if (max_message_chars is not None and text
                                and len(clean_text(text)) > max_message_chars):
                            cut += 1
                            stats.cut_messages = cut
                        content = model_view_text(text or "", files, max_message_chars)
                        if cur.scrubber is not None:
                            content = cur.scrubber.scrub(content)
                        cur.records.append({"role": "user",
                                            "name": (name or author or "user"),
                                            "content": content})
                        assert author is not None  # internal invariant: it is in `opted`
                        cur.authors.add((platform, author))
                        cur.user_turns += 1
                        cur.last_ts = max(cur.last_ts, ts)
                    elif deleted is not None or row_id in negative:
                        pass  # a bot turn exported as silence: its assistant item is left out
                    elif (text is None or cur is None or anchor is None
                          or _any_between(unusable, ctx or 0, anchor)
                          or unusable_text.repeated_in(text)):
                        # Withheld or forgotten, or decided on / repeating what is not
                        # consented: what follows cannot be shown without it.
                        out = close()
                    else:
                        content = clean_text(text)
                        if cur.scrubber is not None:
                            content = cur.scrubber.scrub(content)
                        cur.records.append({"role": "assistant", "content": content})
                    if out is not None:
                        stats.segments += 1
                        yield out
            last = close()
            if last is not None:
                stats.segments += 1
                yield last
        if skipped_slack:
            log.warning("export: skipped %d Slack conversation(s): Slack's API terms restrict "
                        "training on data obtained through the API; set "
                        "training.allow_slack_data = true only if your workspace admin has "
                        "agreed", skipped_slack)
        if cut:
            log.warning("export: %d message(s) longer than %d characters were cut as the model "
                        "sees them (runtime.max_message_chars); the store keeps them whole",
                        cut, max_message_chars)


async def export_jsonl(settings: Any, out: str | os.PathLike[str], *,
                       store: Store | None = None, stats: ExportStats | None = None) -> int:
    """Write `export_conversations` to a JSONL file (atomically) with the settings' idle gap,
    Slack switch and message cut, and register it for `forget`; returns the segment count.

    Used by `chimein data export` and `chimein retrain --data-from-store`. `stats`: see
    `export_conversations`."""
    path = Path(out)
    if store is None:
        if not Path(settings.store.path).exists():
            raise StoreError(f"no store at {settings.store.path}: nothing has been logged yet "
                             "(set store.path, and turn logging on in a channel)")
        async with Store.from_settings(settings.store) as opened:
            return await export_jsonl(settings, out, store=opened, stats=stats)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    written: list[tuple[str, frozenset[tuple[str, str]]]] = []
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as f:
            async with contextlib.aclosing(export_conversations(
                    store, idle_gap_minutes=settings.store.idle_gap_minutes,
                    allow_slack_data=settings.training.allow_slack_data,
                    max_message_chars=settings.runtime.max_message_chars,
                    stats=stats)) as segments:
                async for seg in segments:
                    f.write(json.dumps(seg.to_json(), ensure_ascii=False) + "\n")
                    written.append((seg.id, seg.authors))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    await store.register_export(path, written)
    return len(written)
