"""Forget and retention while the store file is busy, checked on the file's bytes (issue 10,
items 7-9): export applies retention itself; forget never says done while the forgotten text is
still in the file or its WAL, tells the truth when another reader holds the file, and finishes
the removal later without freezing the bot; a retention purge is checkpointed like a forget."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from adapters.cli import main
from bot import config
from bot.engine.fake import ScriptedEngine
from bot.message import ConversationKey, Deletion, Edit, Message
from bot.store import Store
from bot.wiring import build_core
from tests.conftest import QueueAdapter

K = ConversationKey("test", "general")
SECRET = "ann's secret plan 7f3a9c"


def on_disk(path: Path, needle: str = SECRET) -> dict[str, bool]:
    """Which of the store's files hold `needle`, byte for byte."""
    return {f.name: needle.encode() in f.read_bytes()
            for f in (path, Path(f"{path}-wal")) if f.exists()}


@contextmanager
def reader_holding(path: Path) -> Iterator[None]:
    """Another program reading the store (a sqlite3 shell, a long export): an open read
    transaction on an older snapshot, which no checkpoint can pass."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("BEGIN")
        con.execute("SELECT COUNT(*) FROM messages").fetchall()
        yield
    finally:
        con.execute("ROLLBACK")
        con.close()


async def fill(store: Store, *, ts: float | None = None) -> None:
    await store.set_channel_logging("test", "general", True)
    await store.set_consent("test", "ann", True)
    await store.set_consent("test", "bob", True)
    await store.record_message(Message(K, "ann", "Ann", SECRET, message_id="a1",
                                       ts=time.time() if ts is None else ts))
    for i in range(5):
        await store.record_message(Message(K, "bob", "Bob", f"bob's message {i}",
                                           message_id=f"b{i}"))


def test_export_applies_retention_itself(tmp_path: Path) -> None:
    """Item 7: with retention 1 day a 10-day-old message is never exported. The store's own
    purge runs in the background when it opens, and an export started at once used to win
    that race whenever the purge could not commit first (here: another process holds the
    write lock for a second, as a busy bot or a second CLI does); it is purged on the way."""
    db = tmp_path / "store.sqlite3"

    async def write() -> None:
        async with Store(db) as store:  # no retention while it was written
            await fill(store, ts=time.time() - 10 * 86400)

    asyncio.run(write())
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[store]\npath = "{db}"\nretention_days = 1\n', encoding="utf-8")
    out = tmp_path / "export.jsonl"
    writer = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    release = threading.Timer(1.0, writer.execute, ("ROLLBACK",))
    release.start()
    try:
        assert main(["--config", str(cfg), "data", "export", str(out)]) == 0
    finally:
        release.join()
        writer.close()
    exported = out.read_text(encoding="utf-8")
    assert "secret plan" not in exported
    assert [m["content"] for line in exported.splitlines()
            for m in json.loads(line)["messages"]] == [f"bob's message {i}" for i in range(5)]
    assert on_disk(db) and not any(on_disk(db).values())


async def test_forget_while_another_reader_holds_the_file(tmp_path: Path) -> None:
    """Item 8, the store: forget does not wait out the reader (it used to block 10 s) and does
    not claim the bytes are gone while they are not; once the reader lets go, the store
    finishes by itself and nothing of the text is left in the file or its WAL."""
    path = tmp_path / "s.sqlite3"
    async with Store(path) as store:
        await fill(store)
        assert any(on_disk(path).values())
        with reader_holding(path):
            t0 = time.monotonic()
            result = await store.forget("ann", "test")
            took = time.monotonic() - t0
            assert result.messages == 1 and result.consent_removed
            assert took < 2.0, took
            assert not result.on_disk and store.erasure_pending
            # Why it is pending: the old pages are still there, and the tables are clean.
            assert any(on_disk(path).values())
            con = sqlite3.connect(path)
            assert con.execute("SELECT COUNT(*) FROM messages WHERE text LIKE '%secret%'"
                               ).fetchone() == (0,)
            con.close()
            assert not await store.wait_erased(timeout=0.3)  # still held: still pending
        assert await store.wait_erased(timeout=10)
        assert not store.erasure_pending
        assert not any(on_disk(path).values())
        con = sqlite3.connect(path)
        assert con.execute("SELECT COUNT(*) FROM erasures").fetchone() == (0,)
        con.close()
        # Without a reader in the way it is done before forget returns.
        await store.set_consent("test", "bob", True)
        result = await store.forget("bob", "test")
        assert result.on_disk and result.messages == 5
        assert not any(on_disk(path, "bob's message").values())


def test_cli_forget_is_honest_while_the_file_is_busy(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    """Item 8, `chimein data forget`: exit 3 and "NOT yet on disk" while a reader holds the
    file; the next chimein command that opens the store finishes the removal."""
    db = tmp_path / "store.sqlite3"

    async def write() -> None:
        async with Store(db) as store:
            await fill(store)

    asyncio.run(write())
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[store]\npath = "{db}"\n', encoding="utf-8")
    with reader_holding(db):
        t0 = time.monotonic()
        rc = main(["--config", str(cfg), "data", "forget", "--user", "test:ann",
                   "--wait", "0.5"])
        took = time.monotonic() - t0
        said = capsys.readouterr()
        assert rc == 3, said
        assert said.out.startswith("forgot in the tables (NOT yet on disk")
        assert "pending:" in said.err and "NOT yet from the file's bytes" in said.err
        assert took < 5.0, took
    assert main(["--config", str(cfg), "data", "stats"]) == 0  # opens the store: finishes it
    capsys.readouterr()
    assert not any(on_disk(db).values())
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM erasures").fetchone() == (0,)
    con.close()
    # Nothing in the way: "forgot" and 0.
    assert main(["--config", str(cfg), "data", "forget", "--user", "test:bob"]) == 0
    assert capsys.readouterr().out.startswith("forgot test:bob: 5 message(s)")


async def test_chat_forget_says_done_only_when_the_bytes_are_gone(tmp_path: Path) -> None:
    """Item 8, the chat: while a reader holds the file the answer says the removal from disk
    is pending (no "Done"), the bot keeps answering others meanwhile, and a notice follows
    once the bytes are gone."""
    path = tmp_path / "s.sqlite3"
    settings = config.Settings()
    async with Store(path) as store:
        await fill(store)
        core = build_core(settings, engine=ScriptedEngine(), store=store)
        adapter = QueueAdapter("test")
        core.add_adapter(adapter)
        async with core:
            with reader_holding(path):
                t0 = time.monotonic()
                await core.handle(Message(K, "ann", "Ann", "assistant forget",
                                          message_id="f1"))
                await core.handle(Message(K, "bob", "Bob", "assistant, are you there?",
                                          message_id="q1"))
                await asyncio.wait_for(core.flush(), 5)
                took = time.monotonic() - t0
                answer, echo = (r.text for r in adapter.sent)
                assert answer.startswith("I deleted 1 message(s)"), answer
                assert "Done" not in answer
                assert "overwritten as soon as the file is free" in answer
                assert echo == "echo: assistant, are you there?"
                assert took < 2.0, took  # the bot did not freeze behind the checkpoint
                assert any(on_disk(path).values())
            for _ in range(200):
                if len(adapter.sent) == 3:
                    break
                await asyncio.sleep(0.05)
            notice = adapter.sent[2]
            assert notice.text == "Your data is now also gone from my storage file on disk."
            assert notice.in_reply_to == "f1"
            assert not any(on_disk(path).values())
            # Nothing in the way: "Done" at once.
            await store.set_consent("test", "ann", True)
            await store.record_message(Message(K, "ann", "Ann", SECRET, message_id="a2"))
            await core.handle(Message(K, "ann", "Ann", "assistant forget", message_id="f2"))
            await asyncio.wait_for(core.flush(), 5)
            assert adapter.sent[3].text.startswith("Done: I deleted 1 message(s)")
            assert not any(on_disk(path).values())


async def test_retention_purge_and_deletions_leave_no_bytes_behind(tmp_path: Path) -> None:
    """Item 9: purged text is gone from the file and its WAL when the purge returns (it used to
    stay in the WAL until ~150 later messages); a platform deletion and the old text of an
    edit are erased the same way, in the background."""
    path = tmp_path / "s.sqlite3"
    async with Store(path) as store:
        await fill(store, ts=time.time() - 40 * 86400)
        assert any(on_disk(path).values())
        assert await store.purge_older_than(30) == 1
        assert not any(on_disk(path).values())
        assert any(on_disk(path, "bob's message 3").values())  # newer: kept
        await store.record_deletion(Deletion(K, "b3"))
        assert await store.wait_erased(timeout=10)
        assert not any(on_disk(path, "bob's message 3").values())
        assert any(on_disk(path, "bob's message 4").values())
        await store.record_edit(Edit(K, "b4", "bob", "edited: nothing to see"))
        assert await store.wait_erased(timeout=10)
        assert not any(on_disk(path, "bob's message 4").values())
        assert any(on_disk(path, "edited: nothing to see").values())
