"""What happens in a conversation, written as it happens: messages, edits, deletions,
reactions, the model's decisions and the bot's own turns (the package docstring, "Consent",
the bot's turns and "Edits"). Every write is one job on the writer; consent is checked in the
same transaction, before anything is written."""

from __future__ import annotations

import json
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from bot.engine.base import Decision
from bot.message import ConversationKey, Deletion, Edit, Message, Reaction, clean_text
from bot.store.consent import Consent
from bot.store.db import Read, fetch
from bot.store.erasure import Eraser
from bot.store.forget import Forgetter
from bot.store.privacy import PrivacyMemory
from bot.store.writer import Writer

log = logging.getLogger(__name__)

# Longer messages are refused (with a log line saying why) rather than stored: Slack allows
# 40,000 characters and Discord 4,000, so anything past this is not a chat message.
MAX_TEXT_CHARS = 200_000

# Reactions that mark a bot turn as unwanted (Slack names, Discord/Unicode emoji).
NEGATIVE_REACTIONS = frozenset({
    "-1", "thumbsdown", "thumbs_down", "\U0001f44e", "x", "\u274c", "no_entry_sign",
    "\U0001f6ab", "no_entry", "\u26d4", "rage", "\U0001f621", "disappointed", "\U0001f61e",
    "face_with_raised_eyebrow", "\U0001f928", "person_facepalming", "facepalm", "\U0001f926",
})


def is_negative(emoji: str) -> bool:
    """A reaction that says the bot's message was unwanted."""
    e = emoji.strip().strip(":").lower()
    e = re.sub(r"::skin-tone-\d$", "", e)  # Slack: "-1::skin-tone-3"
    e = re.sub("[\U0001f3fb-\U0001f3ff\ufe0f]", "", e)  # Unicode skin tones, variation selector
    return e in NEGATIVE_REACTIONS


@dataclass
class _Recent:
    """Per conversation, in memory only: the rows of recent messages and where the last
    decided batch ended."""

    rows: OrderedDict[str, int] = field(default_factory=OrderedDict)  # platform id -> row
    decided_upto: int | None = None


MAX_RECENT_CONVERSATIONS = 1024
MAX_RECENT_ROWS = 512



class ConversationIds:
    """The row id of each conversation, cached in memory; an id found or made inside a write
    is kept only once its transaction commits (the writer's `on_commit` / `on_rollback`)."""

    def __init__(self) -> None:
        self.committed: dict[ConversationKey, int] = {}
        self._pending: dict[ConversationKey, int] = {}

    def get(self, key: ConversationKey) -> int | None:
        return self.committed.get(key) or self._pending.get(key)

    def add(self, key: ConversationKey, cid: int) -> None:
        self._pending[key] = cid

    def commit(self) -> None:
        self.committed.update(self._pending)
        self._pending = {}

    def rollback(self) -> None:
        self._pending = {}


class Events:
    """The core's seam (bot.core.Store) and the other writes of what happened."""

    def __init__(self, writer: Writer, read: Read, *, consent: Consent, privacy: PrivacyMemory,
                 forget: Forgetter, eraser: Eraser, conversations: ConversationIds) -> None:
        self._writer = writer
        self._read = read
        self._consent = consent
        self._privacy = privacy
        self._forget = forget
        self._eraser = eraser
        self._conversations = conversations
        self._recent: OrderedDict[int, _Recent] = OrderedDict()

    async def _conversation(self, db: aiosqlite.Connection, key: ConversationKey) -> int:
        cid = self._conversations.get(key)
        if cid is not None:
            return cid
        thread = key.thread or ""
        await db.execute("INSERT OR IGNORE INTO conversations (platform, channel, thread, "
                         "created_ts) VALUES (?, ?, ?, ?)",
                         (key.platform, key.channel, thread, time.time()))
        rows = await fetch(
            db, "SELECT id FROM conversations WHERE platform = ? AND channel = ? AND thread = ?",
            (key.platform, key.channel, thread))
        cid = int(rows[0][0])
        self._conversations.add(key, cid)
        return cid

    def _memory(self, conv_id: int) -> _Recent:
        mem = self._recent.get(conv_id)
        if mem is None:
            mem = self._recent[conv_id] = _Recent()
            while len(self._recent) > MAX_RECENT_CONVERSATIONS:
                self._recent.popitem(last=False)
        else:
            self._recent.move_to_end(conv_id)
        return mem

    def _remember_row(self, conv_id: int, message_id: str | None, row_id: int | None) -> None:
        mem = self._memory(conv_id)
        if message_id is not None and row_id:
            mem.rows[message_id] = row_id
            mem.rows.move_to_end(message_id)
            while len(mem.rows) > MAX_RECENT_ROWS:
                mem.rows.popitem(last=False)

    async def _kept_id(self, db: aiosqlite.Connection, key: ConversationKey,
                       platform_id: str | None) -> str | None:
        """`platform_id` if it names a message this store keeps in the channel (its thread
        included), else None: the platform id of a message that was not kept is not kept
        either (it points at a person who never opted in)."""
        if platform_id is None:
            return None
        rows = await fetch(
            db, "SELECT 1 FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE m.platform_message_id = ? AND c.platform = ? AND c.channel = ? LIMIT 1",
            (platform_id, key.platform, key.channel))
        return platform_id if rows else None

    # -- the core's seam ------------------------------------------------------------------
    async def record_message(self, msg: Message) -> bool:
        """Persist a message if its author opted in and its channel logs; True if its text was
        stored. Returns after the commit. Never raises on odd content: a message that cannot
        be stored is refused with a log line (and leaves a gap)."""
        if msg.is_self:
            return False  # the bot's own posts are recorded by record_bot_turn
        # A Message's text is clean (bot.message.clean_text) however it was made.
        text = msg.text
        where = f"message {msg.message_id or '?'} in {msg.key}"
        refused: str | None = None
        if len(text) > MAX_TEXT_CHARS:
            refused = (f"{len(text):,} characters is over the store's limit of "
                       f"{MAX_TEXT_CHARS:,}")
            text = ""
        attachments = json.dumps(list(msg.attachments),
                                 ensure_ascii=False) if msg.attachments else None

        async def op(db: aiosqlite.Connection) -> bool:
            key = msg.key
            opted, logging_on = await self._consent.allowed(db, key.platform, key.channel,
                                                            msg.author_id)
            if not logging_on:
                # A channel without logging keeps nothing, not even a gap; but the model may
                # still see the message after an admin turns logging on.
                self._privacy.remember(key, msg.text)
                return False
            cid = await self._conversation(db, key)
            if msg.is_bot or not opted or refused is not None:
                if refused is not None and opted:
                    log.warning("%s not stored: %s", where, refused)
                cur = await db.execute("INSERT INTO messages (conversation_id, role, ts) "
                                       "VALUES (?, 'gap', ?)", (cid, msg.ts))
                self._remember_row(cid, msg.message_id, cur.lastrowid)
                self._privacy.remember(key, msg.text)
                return False
            cur = await db.execute(
                "INSERT OR IGNORE INTO messages (conversation_id, role, platform_message_id, "
                "author_id, author_name, text, attachments, reply_to, ts) "
                "VALUES (?, 'user', ?, ?, ?, ?, ?, ?, ?)",
                (cid, msg.message_id, msg.author_id, msg.author_name, text, attachments,
                 await self._kept_id(db, key, msg.reply_to), msg.ts))
            if cur.rowcount == 0:
                log.debug("%s: already stored (a platform retry)", where)
            else:
                self._remember_row(cid, msg.message_id, cur.lastrowid)
            return True

        return await self._writer.submit(f"record_message({where})", op)

    async def record_edit(self, edit: Edit) -> None:
        """An edit replaces the stored text (the old text is not kept) and withholds the bot
        turns made from the old one; if the author is no longer opted in, or the channel no
        longer logs, the message becomes a gap. The old text then leaves the file's bytes
        as a deletion's does (bot.store.erasure)."""
        new_text = edit.new_text

        async def op(db: aiosqlite.Connection) -> bool:
            rows = await fetch(
                db, "SELECT m.id, m.conversation_id, m.author_id, m.text FROM messages m JOIN "
                "conversations c ON c.id = m.conversation_id WHERE c.platform = ? AND "
                "c.channel = ? AND m.platform_message_id = ? AND m.role = 'user'",
                (edit.key.platform, edit.key.channel, edit.message_id))
            changed = False
            for row_id, cid, author, old_text in rows:
                opted, logging_on = await self._consent.allowed(db, edit.key.platform,
                                                                edit.key.channel, author)
                if opted and logging_on and len(new_text) <= MAX_TEXT_CHARS:
                    if new_text != old_text:
                        # The bot's answers to the old text no longer fit the message (and
                        # may repeat what the author took back).
                        await self._forget.withhold_dependents(db, [(cid, row_id, old_text)])
                    await db.execute("UPDATE messages SET text = ?, edited_ts = ? WHERE id = ?",
                                     (new_text, edit.ts, row_id))
                    if new_text == old_text:
                        continue
                else:
                    await self._forget.to_gaps(db, [row_id])
                await self._eraser.request(db, "edit")
                changed = True
            return changed

        if await self._writer.submit(f"record_edit({edit.message_id})", op):
            self._eraser.wake()  # finished in the background: an edit never waits

    async def record_deletion(self, deletion: Deletion) -> None:
        """A deleted user message becomes a gap; a deleted bot turn loses its text and is
        exported as silence."""
        async def op(db: aiosqlite.Connection) -> bool:
            rows = await fetch(
                db, "SELECT m.id, m.role FROM messages m JOIN conversations c "
                "ON c.id = m.conversation_id WHERE c.platform = ? AND c.channel = ? "
                "AND m.platform_message_id = ?",
                (deletion.key.platform, deletion.key.channel, deletion.message_id))
            if rows:
                await self._eraser.request(db, "deletion")
            for row_id, role in rows:
                if role == "user":
                    # Deleted by its author: what the bot made of it goes with it.
                    await self._forget.to_gaps(db, [row_id])
                elif role == "assistant":
                    await db.execute("UPDATE messages SET deleted_ts = ?, text = NULL "
                                     "WHERE id = ?", (deletion.ts, row_id))
            return bool(rows)

        if await self._writer.submit(f"record_deletion({deletion.message_id})", op):
            self._eraser.wake()  # finished in the background: a deletion never waits

    async def record_reaction(self, reaction: Reaction) -> None:
        """Feedback on the bot's turns: kept with the reactor's id if they opted in and the
        channel logs, anonymously otherwise. Reactions on other messages are not kept."""
        emoji = reaction.emoji[:200]
        negative = is_negative(emoji)

        async def op(db: aiosqlite.Connection) -> None:
            key = reaction.key
            rows = await fetch(
                db, "SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                "WHERE c.platform = ? AND c.channel = ? AND m.platform_message_id = ? "
                "AND m.role = 'assistant'", (key.platform, key.channel, reaction.message_id))
            if not rows:
                return
            target = rows[0][0]
            opted, logging_on = await self._consent.allowed(db, key.platform, key.channel,
                                                            reaction.user_id)
            uid = reaction.user_id if opted and logging_on else None
            if reaction.added:
                if uid is not None:
                    dup = await fetch(
                        db, "SELECT 1 FROM reactions WHERE message_id = ? AND user_id = ? "
                        "AND emoji = ?", (target, uid, emoji))
                    if dup:
                        return
                await db.execute("INSERT INTO reactions (message_id, user_id, emoji, negative, "
                                 "ts) VALUES (?, ?, ?, ?, ?)",
                                 (target, uid, emoji, int(negative), reaction.ts))
            else:
                # The reactor's own row first, else one anonymous row with that emoji.
                await db.execute(
                    "DELETE FROM reactions WHERE id = (SELECT id FROM reactions WHERE "
                    "message_id = ? AND emoji = ? AND (user_id = ? OR user_id IS NULL) "
                    "ORDER BY user_id IS NULL LIMIT 1)", (target, emoji, reaction.user_id))

        await self._writer.submit(f"record_reaction({reaction.message_id})", op)

    async def record_decision(self, key: ConversationKey, decision: Decision, *,
                              model_version: str, addressed: bool, message_id: str | None,
                              mode: str, address: str | None = None) -> None:
        """Every decision, in every channel, without text or author (for metrics). `address`
        is how the decided message addressed the bot: "direct", "ambiguous", "follow-up" or
        None (see bot.policy)."""
        now = time.time()

        async def op(db: aiosqlite.Connection) -> None:
            cid = await self._conversation(db, key)
            mem = self._memory(cid)
            row = mem.rows.get(message_id) if message_id is not None else None
            if row is None and message_id is not None:  # stored before a restart
                found = await fetch(db, "SELECT id FROM messages WHERE conversation_id = ? "
                                     "AND platform_message_id = ?", (cid, message_id))
                row = int(found[0][0]) if found else None
            # No platform id (see migration 4): the row says which message it was.
            await db.execute(
                "INSERT INTO decisions (conversation_id, ts, message_row, addressed, mode, "
                "p_silence, speak, forced, fed_tokens, recomputed, latency_ms, model_version, "
                "address) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cid, now, row, int(addressed), mode, decision.p_silence,
                 int(decision.speak), int(decision.forced), decision.fed_tokens,
                 int(decision.recomputed), decision.latency_ms, model_version, address))
            await self._seen_version(db, model_version, now)
            if message_id is not None and message_id in mem.rows:
                mem.decided_upto = mem.rows[message_id]

        await self._writer.submit("record_decision", op)

    async def _seen_version(self, db: aiosqlite.Connection, version: str, now: float,
                            source: str | None = None, note: str | None = None,
                            decisions: int = 1) -> None:
        await db.execute(
            "INSERT INTO model_versions (version, first_seen, last_seen, decisions, source, note) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (version) DO UPDATE SET "
            "last_seen = MAX(last_seen, excluded.last_seen), "
            "decisions = decisions + excluded.decisions, "
            "source = COALESCE(excluded.source, source), note = COALESCE(excluded.note, note)",
            (version, now, now, decisions, source, note))

    async def record_bot_turn(self, key: ConversationKey, text: str, *,
                              message_id: str | None, in_reply_to: str | None,
                              p_silence: float, model_version: str,
                              latency_ms: float) -> None:
        """The bot's posted turn. Its text is kept only if the channel logs, the message it
        answered was kept, every message of the batch it was decided on was kept, and it does
        not repeat a recent message that was not kept; otherwise only the model's numbers are
        (a withheld turn: export cuts the conversation there)."""
        now = time.time()
        text = clean_text(text)  # what the engine generated: a bare CR becomes a newline

        async def op(db: aiosqlite.Connection) -> None:
            if not await self._consent.channel_logs(db, key.platform, key.channel):
                return
            cid = await self._conversation(db, key)
            anchor: int | None = None
            if in_reply_to is not None:
                rows = await fetch(
                    db, "SELECT id FROM messages WHERE conversation_id = ? AND "
                    "platform_message_id = ? AND role = 'user'", (cid, in_reply_to))
                anchor = rows[0][0] if rows else None
            else:
                rows = await fetch(
                    db, "SELECT id, role FROM messages WHERE conversation_id = ? "
                    "ORDER BY id DESC LIMIT 1", (cid,))
                anchor = rows[0][0] if rows and rows[0][1] == "user" else None
            mem = self._memory(cid)
            start = 0
            if anchor is not None:
                # The batch it was decided on starts after the previous decision's last message;
                # unknown (after a restart): after the bot's previous turn (stricter).
                if mem.decided_upto is not None and mem.decided_upto < anchor:
                    start = mem.decided_upto
                else:
                    prev = await fetch(
                        db, "SELECT MAX(COALESCE(sort_key, id)) FROM messages WHERE "
                        "conversation_id = ? AND role = 'assistant' AND "
                        "COALESCE(sort_key, id) < ?", (cid, anchor))
                    start = prev[0][0] or 0
            keep = anchor is not None and len(text) <= MAX_TEXT_CHARS
            if keep:
                gaps = await fetch(
                    db, "SELECT 1 FROM messages WHERE conversation_id = ? AND role = 'gap' "
                    "AND id > ? AND id < ? LIMIT 1", (cid, start, anchor))
                # Checked against everything not kept that the model may have seen (later
                # messages too: stricter, and simpler than knowing what it saw).
                keep = not gaps and not self._privacy.must_withhold(key, text)
            # Not kept: the row stays (text NULL, "withheld") so export cuts there and the
            # model's numbers still count.
            await db.execute(
                "INSERT OR IGNORE INTO messages (conversation_id, role, sort_key, context_from, "
                "platform_message_id, text, reply_to, ts, p_silence, model_version, latency_ms) "
                "VALUES (?, 'assistant', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cid, anchor, start, message_id if keep else None, text if keep else None,
                 in_reply_to if anchor is not None else None, now, p_silence, model_version,
                 latency_ms))

        await self._writer.submit("record_bot_turn", op)

    # -- model versions --------------------------------------------------------------------
    async def record_model_version(self, version: str, *, source: str | None = None,
                                   note: str | None = None) -> None:
        """Register a model version (the training side calls this on promotion)."""
        async def op(db: aiosqlite.Connection) -> None:
            await self._seen_version(db, version, time.time(), source, note, decisions=0)

        await self._writer.submit("record_model_version", op)

    async def model_versions(self) -> list[dict[str, Any]]:
        """Every model version seen, oldest first, with how many decisions it made."""
        rows = await self._read("SELECT version, first_seen, last_seen, decisions, source, note "
                                "FROM model_versions ORDER BY first_seen")
        return [dict(zip(("version", "first_seen", "last_seen", "decisions", "source", "note"),
                         r, strict=True)) for r in rows]

