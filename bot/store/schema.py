"""The schema: numbered migrations (`PRAGMA user_version` holds the version) and running them
when a store is opened. A file written by a newer chimein is refused, unchanged."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import aiosqlite

from bot.store.db import StoreError, fetch

log = logging.getLogger(__name__)

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


def statements(script: str) -> list[str]:
    """A migration's script as its statements, comments left out."""
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


async def migrate(db: aiosqlite.Connection, path: Path) -> None:
    """Bring the file to SCHEMA_VERSION, one migration a transaction; refuse a newer file or
    an SQLite file that is not a store, without changing it."""
    version = (await fetch(db, "PRAGMA user_version"))[0][0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer chimein (store schema v{version}; this "
            f"version knows up to v{SCHEMA_VERSION}). Upgrade chimein, or point store.path "
            "at another file. The file was not changed.")
    if version == 0:
        tables = await fetch(
            db, "SELECT name FROM sqlite_master WHERE type = 'table' AND "
            "name NOT LIKE 'sqlite_%'")
        if tables:
            names = ", ".join(sorted(t[0] for t in tables))[:200]
            raise StoreError(f"{path} is an SQLite file but not a chimein store (it has "
                             f"tables {names}); point store.path at another file")
    for target, what, script in MIGRATIONS:
        if target <= version:
            continue
        await db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the lock.
            now = (await fetch(db, "PRAGMA user_version"))[0][0]
            if now >= target:
                await db.execute("COMMIT")
                continue
            for stmt in statements(script):
                await db.execute(stmt)
            await db.execute(f"PRAGMA user_version = {target}")
            await db.execute("COMMIT")
        except Exception as e:
            with contextlib.suppress(Exception):
                await db.execute("ROLLBACK")
            raise StoreError(f"{path}: migrating the store to schema v{target} "
                             f"({what}) failed: {e}. The file is unchanged.") from e
        log.info("store %s: migrated to schema v%d (%s)", path, target, what)
        version = target
