"""The message store: one SQLite file (aiosqlite, WAL), opt-in logging, export for training.

Opening it::

    async with Store("data/chimein.sqlite3") as store:      # or Store.from_settings(s.store)
        await store.record_message(msg)

    store = await Store.open(path)   # the same without a block; `await store.close()` at the end

Opening creates the file (and its folder), switches it to WAL, and runs the schema migrations
(`MIGRATIONS`, numbered; `PRAGMA user_version` holds the version). A file written by a newer
chimein is refused with a StoreError that says so, and nothing in it is changed.

Writes. One writer task owns the write connection. Every write is a job on its queue; the writer
takes all jobs waiting at that moment, runs them in ONE transaction and commits, then wakes each
caller. So `await store.record_message(msg)` returns only after the row is committed (a `kill -9`
right after loses nothing: WAL with synchronous=NORMAL survives a process crash; power loss may
lose the last commits unless `synchronous="FULL"`), and concurrent conversations share commits
instead of fighting over the lock (no `database is locked`). If one job of a batch fails, the
batch is rolled back and its jobs re-run one by one, so only the bad one fails. Reads use a
second connection (WAL readers never block the writer).

Consent (DESIGN.md, privacy). `record_message` writes a message's text only when its author has
opted in (`optin`) AND its channel has logging on (an admin's `logging on`; new channels start
with `default_logging`). For anyone else, in a channel with logging on, it writes an anonymous
gap (a time, nothing else) so that export can cut the conversation there; in a channel with
logging off it writes nothing at all. Other bots are gaps too: they cannot consent. Decisions are
always recorded, without text, author or platform id (a decision points at its message's row,
a gap for someone who never opted in), so metrics cover every channel. A reply or a bot turn
keeps the platform id of the message it answers only if that message was kept.

The bot's own turns may carry what others wrote (an answer quotes, translates or sums up). A bot
turn's text is kept only if the message it answered was kept, every message of the batch it was
decided on was kept, and it does not repeat (a shared run of QUOTE_CHARS letters/digits) any
message the model may have seen that was not kept. Those "unkept" fingerprints live in memory
only, per conversation (a thread's turns are also checked against its channel's): every message
not stored (logging off, author not opted in, another bot, too long), whatever the channel's
state (an admin may turn logging on while the model still holds them), and messages of this run
turned into gaps later. They are never dropped while the model may still hold them: past
UNKEPT_CHARS of them in a conversation (or when the memory of all conversations passes
UNKEPT_TOTAL_CHARS), the conversation is marked overflowed instead and its bot turns are withheld
until the process restarts (the model's context lives in memory too and starts empty then), so
memory stays bounded and no quote slips through. Otherwise the turn is "withheld": its row keeps
the model's numbers, not its text. Export applies the same checks again against who is opted in
at export time.

Edits update the stored text (the old text is not kept, and bot turns made from it are withheld);
an edit by an author who is no longer opted in turns the row into a gap. A deleted message becomes
a gap, and the bot turns that carry it are withheld; a deleted bot turn loses its text and is
exported as silence, as is a bot turn with a negative reaction. Reactions are kept only on the
bot's turns (feedback), with the reactor's id only if they opted in (otherwise anonymously).
`forget` turns every message of a user into gaps, withholds the bot turns that carry them, clears
the forgotten messages' platform ids where other rows point at them (replies), deletes their
reactions and consent record, removes their conversations from export files not yet used for
training, and their entries from the index of every export file (one already used for training
is not edited: retraining retires it). What forget, retention, deletions and edits remove also
leaves the file's bytes: see "erasure on disk" in the Store class.

Export: `export_conversations(store, ...)` is the one function training reads the store through.
It yields consented conversation segments in the JSONL conversation format; see its docstring.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import math
import os
import re
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import aiosqlite

from bot.config import StoreSettings
from bot.engine.base import Decision
from bot.errors import ChimeinError
from bot.message import (
    ConversationKey,
    Deletion,
    Edit,
    Message,
    Reaction,
    clean_text,
    model_view_text,
)
from bot.scrub import Scrubber

log = logging.getLogger(__name__)

T = TypeVar("T")

# Longer messages are refused (with a log line saying why) rather than stored: Slack allows
# 40,000 characters and Discord 4,000, so anything past this is not a chat message.
MAX_TEXT_CHARS = 200_000
MAX_BATCH = 512  # jobs per transaction
BUSY_TIMEOUT_MS = 10_000  # another process (the `chimein data` CLI) may hold the write lock
# Erasure on disk (forget, retention, deletions; see "erasure on disk" below). One checkpoint
# attempt waits this long for other readers and the writer; a busy file is retried in the
# background from ERASE_RETRY_S[0] seconds, doubling up to ERASE_RETRY_S[1]; an open store also
# looks every ERASE_POLL_S for erasures another process left pending.
CHECKPOINT_BUSY_MS = 250
ERASE_RETRY_S = (0.5, 30.0)
ERASE_POLL_S = 60.0

# Reactions that mark a bot turn as unwanted (Slack names, Discord/Unicode emoji).
NEGATIVE_REACTIONS = frozenset({
    "-1", "thumbsdown", "thumbs_down", "\U0001f44e", "x", "\u274c", "no_entry_sign",
    "\U0001f6ab", "no_entry", "\u26d4", "rage", "\U0001f621", "disappointed", "\U0001f61e",
    "face_with_raised_eyebrow", "\U0001f928", "person_facepalming", "facepalm", "\U0001f926",
})

# -- schema --------------------------------------------------------------------------------
# Each entry migrates from the previous version. Never edit a released entry: add one.
MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "first schema", """
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY,
    platform TEXT NOT NULL,
    channel TEXT NOT NULL,
    thread TEXT NOT NULL DEFAULT '',
    created_ts REAL NOT NULL,
    UNIQUE (platform, channel, thread)
);
-- Users' messages, the bot's turns and gaps, in arrival order (id). A bot turn sorts right
-- after the message it answered (sort_key = that row's id), as in the model's history; its
-- context_from is the last row before the batch of messages it was decided on.
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'gap')),
    sort_key INTEGER,
    platform_message_id TEXT,
    author_id TEXT,
    author_name TEXT,
    text TEXT,
    attachments TEXT,
    reply_to TEXT,
    ts REAL NOT NULL,
    edited_ts REAL,
    deleted_ts REAL,
    p_silence REAL,
    model_version TEXT,
    latency_ms REAL,
    context_from INTEGER
);
CREATE INDEX messages_order ON messages (conversation_id, id);
CREATE UNIQUE INDEX messages_platform_id ON messages (conversation_id, platform_message_id)
    WHERE platform_message_id IS NOT NULL;
CREATE INDEX messages_by_platform_id ON messages (platform_message_id)
    WHERE platform_message_id IS NOT NULL;
CREATE INDEX messages_ts ON messages (ts);
CREATE TABLE reactions (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    user_id TEXT,
    emoji TEXT NOT NULL,
    negative INTEGER NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX reactions_message ON reactions (message_id);
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    ts REAL NOT NULL,
    message_id TEXT,
    addressed INTEGER NOT NULL,
    mode TEXT NOT NULL,
    p_silence REAL,
    speak INTEGER NOT NULL,
    forced INTEGER NOT NULL,
    fed_tokens INTEGER,
    recomputed INTEGER,
    latency_ms REAL,
    model_version TEXT
);
CREATE INDEX decisions_conversation ON decisions (conversation_id, ts);
CREATE TABLE consent (
    platform TEXT NOT NULL,
    user_id TEXT NOT NULL,
    opted_in INTEGER NOT NULL,
    updated_ts REAL NOT NULL,
    PRIMARY KEY (platform, user_id)
) WITHOUT ROWID;
CREATE TABLE channels (
    platform TEXT NOT NULL,
    channel TEXT NOT NULL,
    logging INTEGER NOT NULL,
    updated_by TEXT,
    updated_ts REAL NOT NULL,
    PRIMARY KEY (platform, channel)
) WITHOUT ROWID;
CREATE TABLE model_versions (
    version TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    decisions INTEGER NOT NULL DEFAULT 0,
    source TEXT,
    note TEXT
);
CREATE TABLE exports (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    created_ts REAL NOT NULL,
    used_ts REAL,
    segments INTEGER NOT NULL
);
CREATE TABLE export_segments (
    export_id INTEGER NOT NULL REFERENCES exports(id) ON DELETE CASCADE,
    segment_id TEXT NOT NULL,
    platform TEXT NOT NULL,
    author_id TEXT NOT NULL
);
CREATE INDEX export_segments_author ON export_segments (platform, author_id);
"""),
    (2, "admins' channel mode and threshold survive restarts; forget by author is indexed", """
ALTER TABLE channels ADD COLUMN mode TEXT;
ALTER TABLE channels ADD COLUMN threshold REAL;
CREATE INDEX messages_author ON messages (author_id) WHERE author_id IS NOT NULL;
"""),
    (3, "decisions say how the batch addressed the bot (direct, ambiguous, follow-up)", """
ALTER TABLE decisions ADD COLUMN address TEXT;
"""),
    (4, "decisions point at their message's row, not its platform id; erasures finish on disk",
     """
-- A decision keeps no platform id (whose message it was is not the store's to keep for
-- people who never opted in): message_row is the row of the message it was made on (a gap
-- for them), and message_id stays NULL.
ALTER TABLE decisions ADD COLUMN message_row INTEGER;
UPDATE decisions SET message_row = (SELECT m.id FROM messages m WHERE m.conversation_id =
    decisions.conversation_id AND m.platform_message_id = decisions.message_id)
    WHERE message_id IS NOT NULL;
UPDATE decisions SET message_id = NULL;
-- Erasures (forget, retention, this migration) whose old bytes may still be in the WAL: a
-- row stays until a checkpoint has copied the WAL into the file and truncated it.
CREATE TABLE erasures (
    id INTEGER PRIMARY KEY,
    requested_ts REAL NOT NULL,
    what TEXT NOT NULL
);
INSERT INTO erasures (requested_ts, what) SELECT CAST(strftime('%s', 'now') AS REAL),
    'migration 4' WHERE EXISTS (SELECT 1 FROM decisions);
"""),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class StoreError(ChimeinError, RuntimeError):
    """The store cannot be opened or used; the message says what to do."""


class StoreClosed(StoreError):
    """A write was attempted after the store was closed."""


@dataclass(frozen=True)
class UserStatus:
    """What the store holds about one user (the `status` command)."""

    opted_in: bool | None  # None: never asked
    messages: int
    channels: dict[str, int]  # "platform:channel" -> messages
    reactions: int
    first_ts: float | None
    last_ts: float | None


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


@dataclass
class _Job:
    fn: Callable[[aiosqlite.Connection], Awaitable[Any]]
    fut: asyncio.Future[Any]
    what: str


_STOP = object()


def is_negative(emoji: str) -> bool:
    """A reaction that says the bot's message was unwanted."""
    e = emoji.strip().strip(":").lower()
    e = re.sub(r"::skin-tone-\d$", "", e)  # Slack: "-1::skin-tone-3"
    e = re.sub("[\U0001f3fb-\U0001f3ff\ufe0f]", "", e)  # Unicode skin tones, variation selector
    return e in NEGATIVE_REACTIONS


# -- quotes ------------------------------------------------------------------------------------
# A bot turn may repeat what someone wrote. Text is compared as letters and digits only,
# case-folded; a shared run of QUOTE_CHARS such characters counts as a quote (a message shorter
# than that counts if it appears whole and has at least QUOTE_MIN_CHARS).
QUOTE_CHARS = 12
QUOTE_MIN_CHARS = 6
_NON_WORD = re.compile(r"[\W_]+")
# Of each message: twice what the model sees of one (runtime.max_message_chars, 8,000 by
# default; casefolding may lengthen text).
FINGERPRINT_CHARS = 16_000


def _norm(text: str) -> str:
    return _NON_WORD.sub("", text.casefold())[:FINGERPRINT_CHARS]


def _grams(norm: str) -> set[str]:
    return {norm[i:i + QUOTE_CHARS] for i in range(max(0, len(norm) - QUOTE_CHARS + 1))}


class _QuoteIndex:
    """Texts an answer must not repeat, indexed once (export checks every bot turn of a
    conversation against everything before it)."""

    def __init__(self) -> None:
        self.grams: set[str] = set()
        self.short: list[str] = []

    def add(self, text: str) -> None:
        norm = _norm(text)
        if len(norm) >= QUOTE_CHARS:
            self.grams |= _grams(norm)
        elif len(norm) >= QUOTE_MIN_CHARS:
            self.short.append(norm)

    def repeated_in(self, answer: str) -> bool:
        a = _norm(answer)
        if self.grams and not self.grams.isdisjoint(_grams(a)):
            return True
        return any(s in a for s in self.short)


def quotes(answer: str, others: Iterable[str]) -> bool:
    """Whether `answer` repeats a stretch of any of `others` (see QUOTE_CHARS)."""
    index = _QuoteIndex()
    for other in others:
        index.add(other)
    return index.repeated_in(answer)


@dataclass
class _Recent:
    """Per conversation, in memory only: the rows of recent messages and where the last
    decided batch ended."""

    rows: OrderedDict[str, int] = field(default_factory=OrderedDict)  # platform id -> row
    decided_upto: int | None = None


MAX_RECENT_CONVERSATIONS = 1024
MAX_RECENT_ROWS = 512

# What a bot turn must not repeat (see the module docstring, "unkept"). Entries are never
# dropped while they may still be in the model's context: a conversation whose memory would
# pass UNKEPT_CHARS (or that is evicted to keep all of them under UNKEPT_TOTAL_CHARS) is marked
# "overflowed" instead, and its bot turns are withheld until the process restarts (the model's
# context is in memory too, so it starts empty then). Past MAX_OVERFLOWED such conversations,
# every bot turn is withheld until restart. Memory stays bounded either way.
UNKEPT_CHARS = 64_000  # per conversation (the default 2,048-token context holds ~8,000 chars)
UNKEPT_TOTAL_CHARS = 8_000_000
MAX_OVERFLOWED = 100_000


@dataclass
class _Unkept:
    """Per conversation, in memory only: fingerprints (`_norm`) of texts that were not kept."""

    texts: deque[str] = field(default_factory=deque)
    chars: int = 0


def _memory_key(key: ConversationKey) -> ConversationKey:
    return ConversationKey(key.platform, key.channel, key.thread or None)


class Store:
    """The aiosqlite store; implements bot.core.Store. See the module docstring."""

    def __init__(self, path: str | os.PathLike[str], *, default_logging: bool = False,
                 retention_days: int = 0, retention_interval: float = 3600.0,
                 synchronous: str = "NORMAL", erase_poll_interval: float = ERASE_POLL_S):
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous must be NORMAL, FULL or EXTRA")
        self.path = Path(path)
        self.default_logging = default_logging
        self.retention_days = retention_days
        self.retention_interval = retention_interval
        self._synchronous = synchronous.upper()
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._jobs: asyncio.Queue[Any] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._ckpt: aiosqlite.Connection | None = None  # checkpoints only (a short busy wait)
        self._eraser: asyncio.Task[None] | None = None
        self._erase_wake = asyncio.Event()
        self._erase_changed = asyncio.Event()  # set (and replaced) when pending erasures finish
        self._erase_pending = True  # unknown until the first look at open
        self._busy_since: float | None = None  # when a checkpoint first found the file busy
        self.erase_poll_interval = erase_poll_interval
        self._closed = False
        self._conv_ids: dict[ConversationKey, int] = {}
        self._conv_pending: dict[ConversationKey, int] = {}
        self._overrides: dict[tuple[str, str], tuple[str | None, float | None]] = {}
        self._recent: OrderedDict[int, _Recent] = OrderedDict()
        self._unkept: OrderedDict[ConversationKey, _Unkept] = OrderedDict()
        self._unkept_chars = 0
        self._overflowed: set[ConversationKey] = set()
        self._lost_track = False  # more than MAX_OVERFLOWED overflowed: withhold every bot turn
        self._start_row = 0  # rows after this one were written while this process ran
        # For tests and the benchmark: how many jobs each commit carried.
        self.batches: list[int] = []

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> Store:
        """A store configured from the [store] section (path, default_logging, retention)."""
        return cls(settings.path, default_logging=settings.default_logging,
                   retention_days=settings.retention_days)

    @classmethod
    async def open(cls, path: str | os.PathLike[str], **kwargs: Any) -> Store:
        """Open (create, migrate) a store; close it with `await store.close()`."""
        store = cls(path, **kwargs)
        await store._open()
        return store

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- opening --------------------------------------------------------------------------
    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await db.execute("PRAGMA foreign_keys = ON")
            await db.execute(f"PRAGMA synchronous = {self._synchronous}")
            # Deleted and forgotten text is overwritten in the file, not just unlinked.
            await db.execute("PRAGMA secure_delete = ON")
        except BaseException:
            await db.close()
            raise
        return db

    async def _open(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await self._connect()
        except aiosqlite.OperationalError as e:  # permissions, a folder, a full disk...
            raise StoreError(f"cannot open the store {self.path}: {e}") from e
        except aiosqlite.DatabaseError as e:
            raise StoreError(f"{self.path} is not a chimein store ({e}); point store.path at "
                             "another file") from e
        except Exception as e:
            raise StoreError(f"cannot open the store {self.path}: {e}") from e
        try:
            try:
                mode = (await _fetch(db, "PRAGMA journal_mode = WAL"))[0][0]
            except aiosqlite.DatabaseError as e:
                raise StoreError(f"{self.path} is not a chimein store ({e}); point store.path "
                                 "at another file") from e
            if str(mode).lower() != "wal":
                log.warning("store %s: journal mode is %s, not WAL", self.path, mode)
            await self._migrate(db)
            rows = await _fetch(
                db, "SELECT platform, channel, mode, threshold FROM channels "
                "WHERE mode IS NOT NULL OR threshold IS NOT NULL")
            self._overrides = {(r[0], r[1]): (r[2], r[3]) for r in rows}
            seq = await _fetch(db, "SELECT seq FROM sqlite_sequence WHERE name = 'messages'")
            self._start_row = int(seq[0][0]) if seq else 0
            self._reader = await self._connect()
            self._ckpt = await self._connect()
            await self._ckpt.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_MS}")
        except BaseException:
            for conn in (self._reader, self._ckpt, db):
                if conn is not None:
                    await conn.close()
            self._reader = self._ckpt = None
            raise
        self._db = db
        self._writer = asyncio.create_task(self._write_loop(), name="chimein:store-writer")
        self._eraser = asyncio.create_task(self._erase_loop(), name="chimein:store-eraser")
        if self.retention_days > 0:
            self._retention = asyncio.create_task(self.run_retention(self.retention_interval),
                                                  name="chimein:store-retention")
        log.info("store %s open (schema v%d)", self.path, SCHEMA_VERSION)

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        version = (await _fetch(db, "PRAGMA user_version"))[0][0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer chimein (store schema v{version}; this "
                f"version knows up to v{SCHEMA_VERSION}). Upgrade chimein, or point store.path "
                "at another file. The file was not changed.")
        if version == 0:
            tables = await _fetch(
                db, "SELECT name FROM sqlite_master WHERE type = 'table' AND "
                "name NOT LIKE 'sqlite_%'")
            if tables:
                names = ", ".join(sorted(t[0] for t in tables))[:200]
                raise StoreError(f"{self.path} is an SQLite file but not a chimein store (it has "
                                 f"tables {names}); point store.path at another file")
        for target, what, script in MIGRATIONS:
            if target <= version:
                continue
            await db.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have migrated while we waited for the lock.
                now = (await _fetch(db, "PRAGMA user_version"))[0][0]
                if now >= target:
                    await db.execute("COMMIT")
                    continue
                for stmt in _statements(script):
                    await db.execute(stmt)
                await db.execute(f"PRAGMA user_version = {target}")
                await db.execute("COMMIT")
            except Exception as e:
                with contextlib.suppress(Exception):
                    await db.execute("ROLLBACK")
                raise StoreError(f"{self.path}: migrating the store to schema v{target} "
                                 f"({what}) failed: {e}. The file is unchanged.") from e
            log.info("store %s: migrated to schema v%d (%s)", self.path, target, what)
            version = target

    async def close(self) -> None:
        """Finish queued writes, stop the background tasks and close the file."""
        if self._closed:
            return
        self._closed = True
        if self._retention is not None:
            self._retention.cancel()
            await asyncio.gather(self._retention, return_exceptions=True)
        if self._eraser is not None:
            # Stopped by the flag, not cancelled: a cancellation that lands as asyncio.wait_for
            # times out is lost on Python 3.11, and close() would wait for ever.
            self._erase_wake.set()
            await asyncio.gather(self._eraser, return_exceptions=True)
        if self._writer is not None:
            await self._jobs.put(_STOP)
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._ckpt is not None and self._erase_pending:
            # A last try, now that this process writes nothing more.
            with contextlib.suppress(Exception):
                await self._erase_once(direct=True)
            if self._erase_pending:
                log.warning("store %s: removing erased text from the file is still pending (another "
                            "process reads it); the next chimein that opens the store finishes "
                            "it", self.path)
        self._erase_changed.set()  # wake anyone waiting in wait_erased: the answer is False
        for conn in (self._ckpt, self._reader, self._db):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._db = self._reader = self._ckpt = None

    # -- the writer -----------------------------------------------------------------------
    async def _submit(self, what: str, fn: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        if self._closed or self._writer is None:
            raise StoreClosed(f"the store {self.path} is closed ({what} not written)")
        if self._writer.done():
            raise StoreError(f"the store writer stopped; {what} not written")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._jobs.put(_Job(fn, fut, what))
        return await fut

    async def _write_loop(self) -> None:
        stop = False
        while not stop:
            job = await self._jobs.get()
            if job is _STOP:
                break
            batch = [job]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._jobs.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            try:
                await self._run_batch(batch)
            except Exception as e:  # never leave a caller waiting forever
                log.exception("store writer: a batch of %d failed", len(batch))
                for j in batch:
                    if not j.fut.done():
                        j.fut.set_exception(StoreError(f"{j.what} not written: {e}"))

    async def _run_batch(self, batch: list[_Job]) -> None:
        db = self._db
        assert db is not None  # internal invariant: the writer runs only while open
        live = [j for j in batch if not j.fut.done()]
        if not live:
            return
        results: list[Any] = []
        self._conv_pending = {}
        try:
            await db.execute("BEGIN IMMEDIATE")
            for j in live:
                results.append(await j.fn(db))
            await db.execute("COMMIT")
        except Exception as e:  # noqa: BLE001  (handed to the job's caller below)
            with contextlib.suppress(Exception):
                await db.execute("ROLLBACK")
            self._conv_pending = {}
            if len(live) == 1:
                log.warning("store: %s failed: %s", live[0].what, e)
                if not live[0].fut.done():
                    live[0].fut.set_exception(e)
                return
            # Re-run one by one so that only the job at fault fails.
            for j in live:
                await self._run_batch([j])
            return
        self._conv_ids.update(self._conv_pending)
        self._conv_pending = {}
        self.batches.append(len(live))
        if len(self.batches) > 10_000:
            del self.batches[:5_000]
        for j, r in zip(live, results, strict=True):
            if not j.fut.done():
                j.fut.set_result(r)

    async def _conversation(self, db: aiosqlite.Connection, key: ConversationKey) -> int:
        cid = self._conv_ids.get(key) or self._conv_pending.get(key)
        if cid is not None:
            return cid
        thread = key.thread or ""
        await db.execute("INSERT OR IGNORE INTO conversations (platform, channel, thread, "
                         "created_ts) VALUES (?, ?, ?, ?)",
                         (key.platform, key.channel, thread, time.time()))
        rows = await _fetch(
            db, "SELECT id FROM conversations WHERE platform = ? AND channel = ? AND thread = ?",
            (key.platform, key.channel, thread))
        cid = int(rows[0][0])
        self._conv_pending[key] = cid
        return cid

    async def _allowed(self, db: aiosqlite.Connection, platform: str, channel: str,
                       user_id: str) -> tuple[bool, bool]:
        """(the user is opted in, the channel logs) in one query."""
        rows = await _fetch(
            db, "SELECT (SELECT opted_in FROM consent WHERE platform = ? AND user_id = ?), "
            "(SELECT logging FROM channels WHERE platform = ? AND channel = ?)",
            (platform, user_id, platform, channel))
        opted, logging_on = rows[0]
        return bool(opted), self.default_logging if logging_on is None else bool(logging_on)

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

    def note_context(self, key: ConversationKey, texts: Iterable[str]) -> None:
        """Texts the model gets as context without their messages passing through
        `record_message` (a thread's earlier messages fetched from the platform when the bot
        first sees the thread): never stored, and bot turns that repeat them are withheld."""
        for text in texts:
            self._remember_unkept(key, text)

    def _remember_unkept(self, key: ConversationKey, text: object) -> None:
        """A text that was not kept (or no longer is) but may be in the model's context: bot
        turns of this conversation that repeat it are withheld. Never forgotten silently: see
        UNKEPT_CHARS."""
        key = _memory_key(key)
        if self._lost_track or key in self._overflowed:
            return
        norm = _norm(text if isinstance(text, str) else str(text))
        if len(norm) < QUOTE_MIN_CHARS:
            return
        mem = self._unkept.get(key)
        if mem is None:
            mem = self._unkept[key] = _Unkept()
        else:
            self._unkept.move_to_end(key)
        if mem.chars + len(norm) > UNKEPT_CHARS:
            self._overflow(key)
            return
        mem.texts.append(norm)
        mem.chars += len(norm)
        self._unkept_chars += len(norm)
        while self._unkept_chars > UNKEPT_TOTAL_CHARS and self._unkept:
            self._overflow(next(iter(self._unkept)))  # the least recently active

    def _overflow(self, key: ConversationKey) -> None:
        mem = self._unkept.pop(key, None)
        if mem is not None:
            self._unkept_chars -= mem.chars
        if len(self._overflowed) >= MAX_OVERFLOWED:
            if not self._lost_track:
                log.warning("store: too many conversations to remember what was not kept; "
                            "the bot's turns are withheld until chimein restarts")
            self._lost_track = True
            self._overflowed.clear()
            self._unkept.clear()
            self._unkept_chars = 0
            return
        self._overflowed.add(key)
        log.info("store: %s: more text that was not kept than the store remembers; the bot's "
                 "turns there are withheld until chimein restarts", key)

    def _unkept_texts(self, key: ConversationKey) -> list[str] | None:
        """What a bot turn in this conversation must not repeat (a thread's also what its
        channel holds: a thread's context may start with it); None: not known, withhold."""
        keys = [_memory_key(key)]
        if key.thread:
            keys.append(ConversationKey(key.platform, key.channel))
        if self._lost_track or any(k in self._overflowed for k in keys):
            return None
        texts: list[str] = []
        for k in keys:
            mem = self._unkept.get(k)
            if mem is not None:
                texts += mem.texts
        return texts

    async def _channel_logs(self, db: aiosqlite.Connection, platform: str,
                            channel: str) -> bool:
        rows = await _fetch(
            db, "SELECT logging FROM channels WHERE platform = ? AND channel = ?",
            (platform, channel))
        return self.default_logging if not rows else bool(rows[0][0])

    async def _kept_id(self, db: aiosqlite.Connection, key: ConversationKey,
                       platform_id: str | None) -> str | None:
        """`platform_id` if it names a message this store keeps in the channel (its thread
        included), else None: the platform id of a message that was not kept is not kept
        either (it points at a person who never opted in)."""
        if platform_id is None:
            return None
        rows = await _fetch(
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
            opted, logging_on = await self._allowed(db, key.platform, key.channel,
                                                    msg.author_id)
            if not logging_on:
                # A channel without logging keeps nothing, not even a gap; but the model may
                # still see the message after an admin turns logging on.
                self._remember_unkept(key, msg.text)
                return False
            cid = await self._conversation(db, key)
            if msg.is_bot or not opted or refused is not None:
                if refused is not None and opted:
                    log.warning("%s not stored: %s", where, refused)
                cur = await db.execute("INSERT INTO messages (conversation_id, role, ts) "
                                       "VALUES (?, 'gap', ?)", (cid, msg.ts))
                self._remember_row(cid, msg.message_id, cur.lastrowid)
                self._remember_unkept(key, msg.text)
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

        return await self._submit(f"record_message({where})", op)

    async def record_edit(self, edit: Edit) -> None:
        """An edit replaces the stored text (the old text is not kept) and withholds the bot
        turns made from the old one; if the author is no longer opted in, or the channel no
        longer logs, the message becomes a gap. The old text then leaves the file's bytes
        as a deletion's does ("erasure on disk")."""
        new_text = edit.new_text

        async def op(db: aiosqlite.Connection) -> bool:
            rows = await _fetch(
                db, "SELECT m.id, m.conversation_id, m.author_id, m.text FROM messages m JOIN "
                "conversations c ON c.id = m.conversation_id WHERE c.platform = ? AND "
                "c.channel = ? AND m.platform_message_id = ? AND m.role = 'user'",
                (edit.key.platform, edit.key.channel, edit.message_id))
            changed = False
            for row_id, cid, author, old_text in rows:
                opted, logging_on = await self._allowed(db, edit.key.platform,
                                                        edit.key.channel, author)
                if opted and logging_on and len(new_text) <= MAX_TEXT_CHARS:
                    if new_text != old_text:
                        # The bot's answers to the old text no longer fit the message (and
                        # may repeat what the author took back).
                        await self._withhold_dependents(db, [(cid, row_id, old_text)])
                    await db.execute("UPDATE messages SET text = ?, edited_ts = ? WHERE id = ?",
                                     (new_text, edit.ts, row_id))
                    if new_text == old_text:
                        continue
                else:
                    await self._to_gaps(db, [row_id])
                await self._request_erasure(db, "edit")
                changed = True
            return changed

        if await self._submit(f"record_edit({edit.message_id})", op):
            self._erase_wake.set()  # finished in the background: an edit never waits

    async def _to_gaps(self, db: aiosqlite.Connection, row_ids: Sequence[int]
                       ) -> tuple[int, int]:
        """Users' messages become anonymous gaps; the bot turns that may carry them are
        withheld. Returns (messages, bot turns)."""
        victims: list[tuple[int, int, str | None]] = []
        platform_ids: dict[int, list[str]] = {}  # conversation -> its victims' platform ids
        for chunk in _chunks(row_ids):
            q = ",".join("?" * len(chunk))
            for r in await _fetch(
                    db, "SELECT conversation_id, id, text, platform_message_id FROM messages "
                    f"WHERE role = 'user' AND id IN ({q})", chunk):
                victims.append((int(r[0]), int(r[1]), r[2]))
                if r[3] is not None:
                    platform_ids.setdefault(int(r[0]), []).append(str(r[3]))
        if not victims:
            return 0, 0
        withheld = await self._withhold_dependents(db, victims)
        # Their platform ids go from the rows that point at them too: replies (the bot's
        # and others', in the channel and its threads). Decisions keep no platform id.
        for cid, pids in platform_ids.items():
            convs = ("SELECT id FROM conversations WHERE (platform, channel) = (SELECT "
                     "platform, channel FROM conversations WHERE id = ?)")
            for part in _chunks(pids):
                q = ",".join("?" * len(part))
                await db.execute(f"UPDATE messages SET reply_to = NULL WHERE conversation_id "
                                 f"IN ({convs}) AND reply_to IN ({q})", (cid, *part))
        for chunk in _chunks([v[1] for v in victims]):
            q = ",".join("?" * len(chunk))
            await db.execute(f"DELETE FROM reactions WHERE message_id IN ({q})", chunk)
            await db.execute(
                "UPDATE messages SET role = 'gap', platform_message_id = NULL, author_id = NULL, "
                "author_name = NULL, text = NULL, attachments = NULL, reply_to = NULL, "
                f"edited_ts = NULL WHERE id IN ({q})", chunk)
        # The model's context may still hold those written while this process runs.
        recent = [(cid, text) for cid, rid, text in victims if text and rid > self._start_row]
        keys: dict[int, ConversationKey] = {}
        for chunk in _chunks(sorted({cid for cid, _ in recent})):
            q = ",".join("?" * len(chunk))
            keys.update({int(r[0]): ConversationKey(r[1], r[2], r[3] or None) for r in
                         await _fetch(db, "SELECT id, platform, channel, thread FROM "
                                      f"conversations WHERE id IN ({q})", chunk)})
        for cid, text in recent:
            if cid in keys:
                self._remember_unkept(keys[cid], text)
        return len(victims), withheld

    async def _withhold_dependents(self, db: aiosqlite.Connection,
                                   victims: Sequence[tuple[int, int, str | None]]) -> int:
        """Bot turns whose batch held one of these messages, or that repeat one, lose their
        text (they stay as withheld turns). Returns how many."""
        by_conv: dict[int, list[tuple[int, str | None]]] = {}
        for cid, rid, text in victims:
            by_conv.setdefault(cid, []).append((rid, text))
        withheld: list[int] = []
        for cid, items in by_conv.items():
            lo = min(rid for rid, _ in items)
            bots = await _fetch(
                db, "SELECT id, sort_key, context_from, text FROM messages WHERE "
                "conversation_id = ? AND role = 'assistant' AND text IS NOT NULL AND "
                "sort_key >= ?", (cid, lo))
            for bid, anchor, ctx, text in bots:
                in_batch = any((ctx or 0) < rid <= anchor for rid, _ in items)
                if in_batch or quotes(text, [t for rid, t in items if rid <= anchor and t]):
                    withheld.append(int(bid))
        for chunk in _chunks(withheld):
            q = ",".join("?" * len(chunk))
            await db.execute(f"DELETE FROM reactions WHERE message_id IN ({q})", chunk)
            await db.execute("UPDATE messages SET text = NULL, platform_message_id = NULL "
                             f"WHERE id IN ({q})", chunk)
        return len(withheld)

    async def record_deletion(self, deletion: Deletion) -> None:
        """A deleted user message becomes a gap; a deleted bot turn loses its text and is
        exported as silence."""
        async def op(db: aiosqlite.Connection) -> bool:
            rows = await _fetch(
                db, "SELECT m.id, m.role FROM messages m JOIN conversations c "
                "ON c.id = m.conversation_id WHERE c.platform = ? AND c.channel = ? "
                "AND m.platform_message_id = ?",
                (deletion.key.platform, deletion.key.channel, deletion.message_id))
            if rows:
                await self._request_erasure(db, "deletion")
            for row_id, role in rows:
                if role == "user":
                    # Deleted by its author: what the bot made of it goes with it.
                    await self._to_gaps(db, [row_id])
                elif role == "assistant":
                    await db.execute("UPDATE messages SET deleted_ts = ?, text = NULL "
                                     "WHERE id = ?", (deletion.ts, row_id))
            return bool(rows)

        if await self._submit(f"record_deletion({deletion.message_id})", op):
            self._erase_wake.set()  # finished in the background: a deletion never waits

    async def record_reaction(self, reaction: Reaction) -> None:
        """Feedback on the bot's turns: kept with the reactor's id if they opted in and the
        channel logs, anonymously otherwise. Reactions on other messages are not kept."""
        emoji = reaction.emoji[:200]
        negative = is_negative(emoji)

        async def op(db: aiosqlite.Connection) -> None:
            key = reaction.key
            rows = await _fetch(
                db, "SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                "WHERE c.platform = ? AND c.channel = ? AND m.platform_message_id = ? "
                "AND m.role = 'assistant'", (key.platform, key.channel, reaction.message_id))
            if not rows:
                return
            target = rows[0][0]
            opted, logging_on = await self._allowed(db, key.platform, key.channel,
                                                    reaction.user_id)
            uid = reaction.user_id if opted and logging_on else None
            if reaction.added:
                if uid is not None:
                    dup = await _fetch(
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

        await self._submit(f"record_reaction({reaction.message_id})", op)

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
                found = await _fetch(db, "SELECT id FROM messages WHERE conversation_id = ? "
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

        await self._submit("record_decision", op)

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
            if not await self._channel_logs(db, key.platform, key.channel):
                return
            cid = await self._conversation(db, key)
            anchor: int | None = None
            if in_reply_to is not None:
                rows = await _fetch(
                    db, "SELECT id FROM messages WHERE conversation_id = ? AND "
                    "platform_message_id = ? AND role = 'user'", (cid, in_reply_to))
                anchor = rows[0][0] if rows else None
            else:
                rows = await _fetch(
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
                    prev = await _fetch(
                        db, "SELECT MAX(COALESCE(sort_key, id)) FROM messages WHERE "
                        "conversation_id = ? AND role = 'assistant' AND "
                        "COALESCE(sort_key, id) < ?", (cid, anchor))
                    start = prev[0][0] or 0
            keep = anchor is not None and len(text) <= MAX_TEXT_CHARS
            if keep:
                gaps = await _fetch(
                    db, "SELECT 1 FROM messages WHERE conversation_id = ? AND role = 'gap' "
                    "AND id > ? AND id < ? LIMIT 1", (cid, start, anchor))
                # Checked against everything not kept that the model may have seen (later
                # messages too: stricter, and simpler than knowing what it saw).
                unkept = self._unkept_texts(key)
                keep = not gaps and unkept is not None and not quotes(text, unkept)
            # Not kept: the row stays (text NULL, "withheld") so export cuts there and the
            # model's numbers still count.
            await db.execute(
                "INSERT OR IGNORE INTO messages (conversation_id, role, sort_key, context_from, "
                "platform_message_id, text, reply_to, ts, p_silence, model_version, latency_ms) "
                "VALUES (?, 'assistant', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cid, anchor, start, message_id if keep else None, text if keep else None,
                 in_reply_to if anchor is not None else None, now, p_silence, model_version,
                 latency_ms))

        await self._submit("record_bot_turn", op)

    # -- consent, channels ----------------------------------------------------------------
    async def set_consent(self, platform: str, user_id: str, opted_in: bool) -> None:
        """`optin` / `optout`. Opting out keeps what is stored (see `forget`) but stores
        nothing new, and export leaves out everyone who is not opted in at export time."""
        async def op(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO consent (platform, user_id, opted_in, updated_ts) VALUES "
                "(?, ?, ?, ?) ON CONFLICT (platform, user_id) DO UPDATE SET "
                "opted_in = excluded.opted_in, updated_ts = excluded.updated_ts",
                (platform, user_id, int(opted_in), time.time()))

        await self._submit("set_consent", op)

    async def consent(self, platform: str, user_id: str) -> bool | None:
        """True opted in, False opted out, None never asked."""
        rows = await self._read("SELECT opted_in FROM consent WHERE platform = ? AND "
                                "user_id = ?", (platform, user_id))
        return None if not rows else bool(rows[0][0])

    async def set_channel_logging(self, platform: str, channel: str, on: bool,
                                  by: str | None = None) -> None:
        """An admin's `logging on|off` for a channel (and its threads)."""
        async def op(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO channels (platform, channel, logging, updated_by, updated_ts) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (platform, channel) DO UPDATE SET "
                "logging = excluded.logging, updated_by = excluded.updated_by, "
                "updated_ts = excluded.updated_ts",
                (platform, channel, int(on), by, time.time()))

        await self._submit("set_channel_logging", op)

    async def channel_logging(self, platform: str, channel: str) -> bool:
        rows = await self._read("SELECT logging FROM channels WHERE platform = ? AND "
                                "channel = ?", (platform, channel))
        return self.default_logging if not rows else bool(rows[0][0])

    async def set_channel_policy(self, platform: str, channel: str, *, mode: str | None = None,
                                 threshold: float | None = None, by: str | None = None) -> None:
        """Persist an admin's `mode` / `threshold` for a channel (restored at the next start
        through `channel_overrides`)."""
        async def op(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO channels (platform, channel, logging, updated_by, updated_ts, mode, "
                "threshold) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (platform, channel) DO "
                "UPDATE SET mode = COALESCE(excluded.mode, mode), "
                "threshold = COALESCE(excluded.threshold, threshold), "
                "updated_by = excluded.updated_by, updated_ts = excluded.updated_ts",
                (platform, channel, int(self.default_logging), by, time.time(), mode, threshold))

        await self._submit("set_channel_policy", op)
        old_mode, old_thr = self._overrides.get((platform, channel), (None, None))
        self._overrides[(platform, channel)] = (mode or old_mode,
                                                old_thr if threshold is None else threshold)

    def channel_overrides(self) -> dict[tuple[str, str], tuple[str | None, float | None]]:
        """(platform, channel) -> (mode, threshold) set by admins, as loaded at open."""
        return dict(self._overrides)

    async def discard_message(self, key: ConversationKey, message_id: str | None) -> bool:
        """Remove a stored message outright (a command addressed to the bot is not
        conversation: the model never sees it, so training must not either)."""
        if message_id is None:
            return False

        async def op(db: aiosqlite.Connection) -> bool:
            cur = await db.execute(
                "DELETE FROM messages WHERE role = 'user' AND platform_message_id = ? AND "
                "conversation_id IN (SELECT id FROM conversations WHERE platform = ? AND "
                "channel = ?)", (message_id, key.platform, key.channel))
            if cur.rowcount > 0:
                return True
            # Written as a gap (its author had not opted in yet): gaps carry no id, but this
            # process remembers which row it was.
            cid = self._conv_ids.get(key)
            mem = self._recent.get(cid) if cid is not None else None
            row = mem.rows.get(message_id) if mem is not None else None
            if row is None:
                return False
            cur = await db.execute("DELETE FROM messages WHERE id = ? AND role = 'gap'", (row,))
            return cur.rowcount > 0

        return await self._submit("discard_message", op)

    # -- forget, status, stats ------------------------------------------------------------
    async def forget(self, user_id: str, platform: str | None = None, *,
                     wait: float = 0.0) -> ForgetResult:
        """Delete everything of a user: their messages (and the bot's answers to them) become
        anonymous gaps, replies lose those messages' platform ids, their reactions and consent
        record go, their conversations are removed from export files not yet used for training,
        and they leave the index of every export. `platform` None: every platform.

        Then the bytes: see "erasure on disk". `wait`: how long to keep trying to finish that
        now; `result.on_disk` says whether it is done (otherwise it finishes in the
        background, and `wait_erased` tells when)."""
        async def op(db: aiosqlite.Connection) -> tuple[ForgetResult, list[tuple[int, str, str]]]:
            result = ForgetResult()  # built afresh: a failed batch runs its jobs again
            plats = [platform] if platform is not None else [
                r[0] for r in await _fetch(
                    db, "SELECT platform FROM consent WHERE user_id = ? UNION SELECT c.platform "
                    "FROM messages m JOIN conversations c ON c.id = m.conversation_id WHERE "
                    "m.author_id = ? UNION SELECT platform FROM export_segments WHERE "
                    "author_id = ? UNION SELECT c.platform FROM reactions r JOIN messages m "
                    "ON m.id = r.message_id JOIN conversations c ON c.id = m.conversation_id "
                    "WHERE r.user_id = ?", (user_id, user_id, user_id, user_id))]
            plan: list[tuple[int, str, str]] = []
            for plat in plats:
                ids = [int(r[0]) for r in await _fetch(
                    db, "SELECT m.id FROM messages m JOIN conversations c ON c.id = "
                    "m.conversation_id WHERE c.platform = ? AND m.author_id = ? AND "
                    "m.role = 'user'", (plat, user_id))]
                n_messages, n_bot = await self._to_gaps(db, ids)
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
                    await self._request_erasure(db, "forget")
                # An export already used for training is not edited any more, but its index
                # need not keep who was in it.
                await db.execute(
                    "DELETE FROM export_segments WHERE platform = ? AND author_id = ? AND "
                    "export_id IN (SELECT id FROM exports WHERE used_ts IS NOT NULL)",
                    (plat, user_id))
                rows = await _fetch(
                    db, "SELECT DISTINCT e.id, e.path, s.segment_id FROM export_segments s JOIN "
                    "exports e ON e.id = s.export_id WHERE e.used_ts IS NULL AND s.platform = ? "
                    "AND s.author_id = ?", (plat, user_id))
                plan += [(int(r[0]), str(r[1]), str(r[2])) for r in rows]
            return result, plan

        result, plan = await self._submit("forget", op)
        if plan:
            await self._forget_in_exports(plan, result)
        result.on_disk = await self.finish_erasure(wait)
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

        await self._submit("forget(exports)", op)

    async def user_status(self, platform: str, user_id: str) -> UserStatus:
        """What is stored about a user (the `status` command)."""
        opted = await self.consent(platform, user_id)
        rows = await self._read(
            "SELECT c.channel, COUNT(*), MIN(m.ts), MAX(m.ts) FROM messages m JOIN conversations "
            "c ON c.id = m.conversation_id WHERE c.platform = ? AND m.author_id = ? AND "
            "m.role = 'user' GROUP BY c.channel", (platform, user_id))
        reactions = await self._read(
            "SELECT COUNT(*) FROM reactions r JOIN messages m ON m.id = r.message_id JOIN "
            "conversations c ON c.id = m.conversation_id WHERE c.platform = ? AND "
            "r.user_id = ?", (platform, user_id))
        firsts = [r[2] for r in rows]
        lasts = [r[3] for r in rows]
        return UserStatus(opted, sum(r[1] for r in rows),
                          {f"{platform}:{r[0]}": r[1] for r in rows}, reactions[0][0],
                          min(firsts) if firsts else None, max(lasts) if lasts else None)

    async def stats(self) -> dict[str, Any]:
        """What is stored, per channel and per user (`chimein data stats`)."""
        channels = await self._read(
            "SELECT c.platform, c.channel, "
            "SUM(m.role = 'user'), SUM(m.role = 'assistant' AND m.text IS NOT NULL), "
            "SUM(m.role = 'gap'), "
            "COUNT(DISTINCT m.author_id), MIN(m.ts), MAX(m.ts) FROM conversations c "
            "LEFT JOIN messages m ON m.conversation_id = c.id GROUP BY c.platform, c.channel "
            "ORDER BY c.platform, c.channel")
        settings = {(r[0], r[1]): r[2:] for r in await self._read(
            "SELECT platform, channel, logging, mode, threshold FROM channels")}
        decisions = {(r[0], r[1]): r[2:] for r in await self._read(
            "SELECT c.platform, c.channel, COUNT(*), SUM(d.speak), AVG(d.latency_ms) FROM "
            "decisions d JOIN conversations c ON c.id = d.conversation_id "
            "GROUP BY c.platform, c.channel")}
        users = await self._read(
            "SELECT c.platform, m.author_id, COUNT(*), MAX(m.author_name), MIN(m.ts), "
            "MAX(m.ts) FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE m.role = 'user' GROUP BY c.platform, m.author_id ORDER BY c.platform, "
            "m.author_id")
        consent = {(r[0], r[1]): bool(r[2]) for r in await self._read(
            "SELECT platform, user_id, opted_in FROM consent")}
        out_channels = []
        for p, ch, n_user, n_bot, n_gap, n_authors, first, last in channels:
            logging_on, mode, thr = settings.get((p, ch), (None, None, None))
            n_dec, n_speak, lat = decisions.get((p, ch), (0, 0, None))
            out_channels.append({
                "channel": f"{p}:{ch}",
                "logging": self.default_logging if logging_on is None else bool(logging_on),
                "mode": mode, "threshold": thr, "messages": n_user or 0,
                "bot_turns": n_bot or 0, "gaps": n_gap or 0, "users": n_authors or 0,
                "decisions": n_dec or 0, "spoke": n_speak or 0,
                "mean_decision_ms": None if lat is None else round(lat, 2),
                "first": first, "last": last})
        seen = set()
        out_users = []
        for p, uid, n, name, first, last in users:
            seen.add((p, uid))
            out_users.append({"user": f"{p}:{uid}", "name": name, "messages": n,
                              "opted_in": consent.get((p, uid)), "first": first,
                              "last": last})
        for (p, uid), opted in sorted(consent.items()):
            if (p, uid) not in seen:
                out_users.append({"user": f"{p}:{uid}", "name": None, "messages": 0,
                                  "opted_in": opted, "first": None, "last": None})
        totals = (await self._read(
            "SELECT (SELECT COUNT(*) FROM messages WHERE role = 'user'), "
            "(SELECT COUNT(*) FROM messages WHERE role = 'assistant' AND text IS NOT NULL), "
            "(SELECT COUNT(*) FROM decisions), (SELECT COUNT(*) FROM reactions), "
            "(SELECT COUNT(*) FROM consent WHERE opted_in = 1)"))[0]
        return {"path": str(self.path), "schema": SCHEMA_VERSION,
                "totals": {"messages": totals[0], "bot_turns": totals[1],
                           "decisions": totals[2], "reactions": totals[3],
                           "opted_in_users": totals[4]},
                "channels": out_channels, "users": out_users,
                "model_versions": await self.model_versions()}

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._reader is None:
            raise StoreClosed(f"the store {self.path} is not open")
        return list(await _fetch(self._reader, sql, params))

    # -- model versions, exports ----------------------------------------------------------
    async def record_model_version(self, version: str, *, source: str | None = None,
                                   note: str | None = None) -> None:
        """Register a model version (the training side calls this on promotion)."""
        async def op(db: aiosqlite.Connection) -> None:
            await self._seen_version(db, version, time.time(), source, note, decisions=0)

        await self._submit("record_model_version", op)

    async def model_versions(self) -> list[dict[str, Any]]:
        rows = await self._read("SELECT version, first_seen, last_seen, decisions, source, note "
                                "FROM model_versions ORDER BY first_seen")
        return [dict(zip(("version", "first_seen", "last_seen", "decisions", "source", "note"),
                         r, strict=True)) for r in rows]

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

        return await self._submit("register_export", op)

    async def mark_export_used(self, path: str | os.PathLike[str]) -> int:
        """An export file went into training: `forget` no longer edits it (the trained model
        is retired by retraining instead). Returns how many export records were marked."""
        where = str(Path(path).resolve())

        async def op(db: aiosqlite.Connection) -> int:
            cur = await db.execute("UPDATE exports SET used_ts = ? WHERE path = ? AND "
                                   "used_ts IS NULL", (time.time(), where))
            return max(cur.rowcount, 0)

        return await self._submit("mark_export_used", op)

    # -- erasure on disk ------------------------------------------------------------------
    # Removing a row is not removing its bytes. secure_delete zeroes the text in the pages a
    # deletion writes, but those pages go to the WAL first: the file keeps its old pages, and
    # the WAL the pages that first held the text, until a checkpoint copies the WAL into the
    # file and truncates it. A TRUNCATE checkpoint cannot finish while another connection
    # (a long export, a `sqlite3` shell, another chimein process) reads an older snapshot.
    # So each forget, retention purge and deletion leaves a row in `erasures` in its own
    # transaction; a row goes only once a checkpoint has finished after it. Attempts wait
    # CHECKPOINT_BUSY_MS at most, on their own connection (aiosqlite's thread, never the event
    # loop), and a busy file is retried in the background until it is free.
    async def _request_erasure(self, db: aiosqlite.Connection, what: str) -> None:
        """Inside a write: what it removes must also leave the file's bytes."""
        await db.execute("INSERT INTO erasures (requested_ts, what) VALUES (?, ?)",
                         (time.time(), what))
        self._erase_pending = True

    async def _erase_once(self, *, direct: bool = False) -> bool:
        """One checkpoint attempt; True when no erasure is pending after it. `direct`: clear
        the done rows on the checkpoint connection (at close, the writer has stopped)."""
        ckpt = self._ckpt
        if ckpt is None:
            return False
        top = (await _fetch(ckpt, "SELECT MAX(id) FROM erasures"))[0][0]
        if top is None:
            self._erased()
            return True
        busy, _, _ = (await _fetch(ckpt, "PRAGMA wal_checkpoint(TRUNCATE)"))[0]
        if busy:
            if self._busy_since is None:
                self._busy_since = time.monotonic()
            return False

        async def op(db: aiosqlite.Connection) -> int:
            await db.execute("DELETE FROM erasures WHERE id <= ?", (top,))
            return int((await _fetch(db, "SELECT COUNT(*) FROM erasures"))[0][0])

        if direct:
            left = await op(ckpt)
        else:
            left = await self._submit("erasure done", op)
        if self._busy_since is not None:
            log.info("store %s: the file is free again; erased text is gone from it and its "
                     "WAL (pending for %.1fs)", self.path, time.monotonic() - self._busy_since)
            self._busy_since = None
        if left:
            return False  # requested meanwhile: the next attempt takes it
        self._erased()
        return True

    def _erased(self) -> None:
        self._erase_pending = False
        changed, self._erase_changed = self._erase_changed, asyncio.Event()
        changed.set()

    async def finish_erasure(self, wait: float = 0.0) -> bool:
        """Try to finish pending erasures now, for up to `wait` seconds (at least one attempt);
        True when the file and its WAL hold no erased byte any more. Otherwise the store keeps
        trying in the background."""
        deadline = time.monotonic() + wait
        delay = ERASE_RETRY_S[0]
        while True:
            try:
                if await self._erase_once():
                    return True
            except (aiosqlite.Error, StoreError) as e:
                log.warning("store: checkpoint failed (%s); retrying in the background", e)
            self._erase_wake.set()
            left = deadline - time.monotonic()
            if left <= 0 or self._closed:
                log.info("store %s: the file is busy (another connection reads it); erased text "
                         "is removed from it as soon as it is free", self.path)
                return False
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, ERASE_RETRY_S[1])

    @property
    def erasure_pending(self) -> bool:
        """Something was removed from the tables but may still be in the file's bytes."""
        return self._erase_pending

    async def wait_erased(self, timeout: float | None = None) -> bool:
        """Until no erasure is pending on disk (True), or `timeout` passes or the store closes
        (False)."""
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while self._erase_pending and not self._closed:
            changed = self._erase_changed
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                return False
        return not self._erase_pending

    async def _erase_loop(self) -> None:
        """In the background while open: finish pending erasures, retrying a busy file, and
        look every `erase_poll_interval` for those another process left."""
        delay = ERASE_RETRY_S[0]
        while not self._closed:
            try:
                done = await self._erase_once()
            except StoreClosed:
                return
            except Exception as e:  # noqa: BLE001 - keep trying: a later attempt may work
                log.warning("store: checkpoint failed (%s); trying again in %gs", e, delay)
                done = False
            if done:
                delay, timeout = ERASE_RETRY_S[0], self.erase_poll_interval
            else:
                timeout, delay = delay, min(delay * 2, ERASE_RETRY_S[1])
            if self._closed:
                return
            self._erase_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._erase_wake.wait(), timeout)

    # -- retention ------------------------------------------------------------------------
    async def purge_older_than(self, days: float, *, now: float | None = None,
                               wait: float = 0.0) -> int:
        """Delete messages (and their reactions) older than `days`; returns how many. Their
        bytes then leave the file as `forget`'s do (see "erasure on disk"; `wait` as there)."""
        if days <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - days * 86400.0

        async def op(db: aiosqlite.Connection) -> int:
            cur = await db.execute("DELETE FROM messages WHERE ts < ?", (cutoff,))
            n = max(cur.rowcount, 0)
            if n:
                await self._request_erasure(db, "retention")
            return n

        n = await self._submit("purge_older_than", op)
        if n:
            log.info("store: retention removed %d message(s) older than %g day(s)", n, days)
            await self.finish_erasure(wait)
        return n

    async def run_retention(self, interval: float = 3600.0, *,
                            days: float | None = None) -> None:
        """Purge messages older than `days` (default: retention_days) now and every
        `interval` seconds, until cancelled. Started by the store itself when opened with
        retention_days > 0."""
        days = self.retention_days if days is None else days
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


async def _fetch(db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return list(await db.execute_fetchall(sql, params))


def _any_between(sorted_ids: list[int], lo: int, hi: int) -> bool:
    """Whether an id in `sorted_ids` lies in (lo, hi]."""
    i = bisect.bisect_right(sorted_ids, lo)
    return i < len(sorted_ids) and sorted_ids[i] <= hi


def _chunks(items: Sequence[T], size: int = 500) -> list[list[T]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _statements(script: str) -> list[str]:
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


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


# -- export -------------------------------------------------------------------------------
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

    Reads one consistent snapshot through its own connection; use it with
    `contextlib.aclosing` (or run it to the end) so the connection is closed.
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
    db = await store._connect()
    try:
        await db.execute("BEGIN")  # one snapshot (WAL): writers carry on meanwhile
        opted = {(r[0], r[1]) for r in await _fetch(
            db, "SELECT platform, user_id FROM consent WHERE opted_in = 1")}
        convs = await _fetch(
            db, "SELECT c.id, c.platform FROM conversations c WHERE EXISTS (SELECT 1 FROM "
            "messages m WHERE m.conversation_id = c.id AND m.role = 'user') ORDER BY c.id")
        skipped_slack = cut = 0
        for conv_id, platform in convs:
            if platform == "slack" and not allow_slack_data:
                skipped_slack += 1
                stats.skipped_slack = skipped_slack
                continue
            negative = {r[0] for r in await _fetch(
                db, "SELECT DISTINCT r.message_id FROM reactions r JOIN messages m ON "
                "m.id = r.message_id WHERE m.conversation_id = ? AND r.negative = 1",
                (conv_id,))}
            cur: _Building | None = None
            unusable: list[int] = []  # rows not exported: gaps, authors not opted in now
            # ... the text of those that have one. User rows come in id order and a bot turn
            # right after the row it answered, so at a bot turn this holds exactly the texts
            # that came before it.
            unusable_text = _QuoteIndex()

            def close() -> ExportSegment | None:
                nonlocal cur
                seg, cur = cur, None
                if seg is None or seg.user_turns < min_user_turns:
                    return None
                return ExportSegment(f"store-{seg.conv_id}-{seg.first_row}", seg.platform,
                                     seg.records, frozenset(seg.authors), seg.first_ts,
                                     seg.last_ts)

            async with db.execute(
                    "SELECT id, role, author_id, author_name, text, attachments, ts, deleted_ts, "
                    "sort_key, context_from FROM messages WHERE conversation_id = ? AND "
                    "ts >= ? ORDER BY COALESCE(sort_key, id), id", (conv_id, cutoff)) as rows:
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
    finally:
        with contextlib.suppress(Exception):
            await db.execute("ROLLBACK")
        await db.close()


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


__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ExportSegment",
    "ExportStats",
    "ForgetResult",
    "Store",
    "StoreClosed",
    "StoreError",
    "UserStatus",
    "export_conversations",
    "export_jsonl",
    "is_negative",
    "model_view_text",
]
