"""Schema migrations: a file written with the first schema opens, migrates and keeps its data."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from bot.message import ConversationKey, Message
from bot.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Store,
    StoreError,
    _statements,
    export_conversations,
)

# Released migrations are never edited (files in the wild were made with them): a new schema
# change is a new entry. If this fails, add a migration instead of changing an old one.
FIRST_SCHEMA_SHA256 = "d957c0bc628b028dd9d9610b14a1e2c359458375eb8f76d3da3f72e22691328e"


def make_v1(path: Path) -> None:
    """A store file exactly as the first schema wrote it, with some data."""
    version, _, script = MIGRATIONS[0]
    assert version == 1
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("BEGIN")
    for stmt in _statements(script):
        con.execute(stmt)
    con.execute("PRAGMA user_version = 1")
    con.execute("INSERT INTO conversations (id, platform, channel, thread, created_ts) VALUES "
                "(1, 'test', 'general', '', 1.0)")
    con.execute("INSERT INTO consent VALUES ('test', 'ann', 1, 1.0)")
    con.execute("INSERT INTO channels VALUES ('test', 'general', 1, 'test:admin', 1.0)")
    con.execute("INSERT INTO messages (conversation_id, role, platform_message_id, author_id, "
                "author_name, text, ts) VALUES (1, 'user', 'm1', 'ann', 'Ann', "
                "'written under schema v1', 100.0)")
    con.execute("INSERT INTO messages (conversation_id, role, sort_key, context_from, "
                "platform_message_id, text, ts, p_silence, model_version, latency_ms) VALUES "
                "(1, 'assistant', 1, 0, 'b1', 'an answer from v1 days', 101.0, 0.2, 'v1', 9.0)")
    con.execute("INSERT INTO decisions (conversation_id, ts, message_id, addressed, mode, "
                "p_silence, speak, forced) VALUES (1, 101.0, 'm1', 1, 'semi-active', 0.2, 1, 1)")
    con.execute("COMMIT")
    con.close()


def test_first_schema_is_frozen() -> None:
    digest = hashlib.sha256(MIGRATIONS[0][2].encode()).hexdigest()
    assert digest == FIRST_SCHEMA_SHA256, "the first migration changed: add a new one instead"


async def test_a_first_schema_file_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    make_v1(path)
    async with Store(path) as store:
        con = sqlite3.connect(path)
        assert con.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        cols = {r[1] for r in con.execute("PRAGMA table_info(channels)")}
        assert {"mode", "threshold"} <= cols
        indexes = {r[1] for r in con.execute("PRAGMA index_list(messages)")}
        assert "messages_author" in indexes
        con.close()
        # The old rows are all there and behave as before.
        assert await store.consent("test", "ann") is True
        assert await store.channel_logging("test", "general") is True
        [seg] = [s async for s in export_conversations(store)]
        assert seg.records == [
            {"role": "user", "name": "Ann", "content": "written under schema v1"},
            {"role": "assistant", "content": "an answer from v1 days"}]
        # ... and the new columns work.
        await store.set_channel_policy("test", "general", mode="mention", threshold=0.8)
        assert await store.record_message(Message(ConversationKey("test", "general"), "ann",
                                                  "Ann", "after the upgrade", message_id="m2"))
        stats = await store.stats()
        assert stats["totals"]["decisions"] == 1 and stats["totals"]["messages"] == 2
    async with Store(path) as store:  # opening again migrates nothing and loses nothing
        assert store.channel_overrides() == {("test", "general"): ("mention", 0.8)}
        assert (await store.user_status("test", "ann")).messages == 2


async def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    make_v1(path)
    con = sqlite3.connect(path)
    # Something in the way of migration 2 (an object with the name it creates).
    con.execute("CREATE INDEX messages_author ON messages (ts)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="migrating the store to schema v2.*unchanged"):
        await Store.open(path)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone() == (1,)
    assert "mode" not in {r[1] for r in con.execute("PRAGMA table_info(channels)")}
    assert con.execute("SELECT text FROM messages WHERE role = 'user'").fetchall() == [
        ("written under schema v1",)]
    con.close()


def test_migrations_are_numbered_in_order() -> None:
    assert [m[0] for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert SCHEMA_VERSION == MIGRATIONS[-1][0]


async def test_migration_4_drops_platform_ids_from_decisions_on_disk(tmp_path: Path) -> None:
    """Issue 10, item 10: decisions kept the platform id of every decided message, also of
    people who never opted in. Schema v4 keeps the row of the message instead, and the ids
    leave the file's bytes once the store is open (the migration is an erasure)."""
    path = tmp_path / "v3.sqlite3"
    make_v1(path)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("BEGIN")
    for version, _, script in MIGRATIONS[1:3]:
        for stmt in _statements(script):
            con.execute(stmt)
        con.execute(f"PRAGMA user_version = {version}")
    con.execute("INSERT INTO decisions (conversation_id, ts, message_id, addressed, mode, "
                "p_silence, speak, forced) VALUES (1, 102.0, 'zed-1700000300.000300', 0, "
                "'semi-active', 0.9, 0, 0)")
    con.execute("COMMIT")
    con.close()
    assert b"zed-1700000300.000300" in path.read_bytes() + (
        Path(f"{path}-wal").read_bytes() if Path(f"{path}-wal").exists() else b"")
    async with Store(path) as store:
        assert await store.wait_erased(timeout=10)
        con = sqlite3.connect(path)
        rows = con.execute("SELECT d.message_id, m.platform_message_id FROM decisions d LEFT "
                           "JOIN messages m ON m.id = d.message_row ORDER BY d.id").fetchall()
        con.close()
        assert rows == [(None, "m1"), (None, None)]  # m1 was stored: its row is kept
        for f in (path, Path(f"{path}-wal")):
            if f.exists():
                assert b"zed-1700000300" not in f.read_bytes(), f
