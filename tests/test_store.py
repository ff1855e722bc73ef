"""The message store on real SQLite files: consent, edits, deletions, reactions, forget,
retention, bad input, concurrency and the file-level refusals."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import config as config_mod
from bot.engine.base import Decision
from bot.message import ConversationKey, Deletion, Edit, Message, Reaction
from bot.store import (
    MAX_TEXT_CHARS,
    SCHEMA_VERSION,
    Store,
    StoreClosed,
    StoreError,
    export_conversations,
    export_jsonl,
    is_negative,
    quotes,
)

K = ConversationKey("test", "general")
T = ConversationKey("test", "general", "thread-1")


def msg(author: str, text: str, mid: str, key: ConversationKey = K, ts: float = 1000.0,
        **kw) -> Message:  # type: ignore[no-untyped-def]
    return Message(key, author, author.title(), text, message_id=mid, ts=ts, **kw)


def rows(path: Path, sql: str, params: tuple = ()) -> list[tuple]:  # type: ignore[type-arg]
    """Read the SQLite file itself (not through the store)."""
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(tmp_path / "store.sqlite3") as s:
        yield s


async def decide(store: Store, mid: str, key: ConversationKey = K) -> None:
    await store.record_decision(key, Decision(0.9, False), model_version="v1", addressed=False,
                                message_id=mid, mode="semi-active")


async def test_open_creates_a_wal_file_at_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "s.sqlite3"
    store = await Store.open(path)
    try:
        assert path.exists()
        assert rows(path, "PRAGMA journal_mode") == [("wal",)]
        assert rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    finally:
        await store.close()
    with pytest.raises(StoreClosed):
        await store.set_consent("test", "ann", True)


async def test_consent_matrix_checked_on_the_file(tmp_path: Path) -> None:
    """opted in / opted out / never asked x channel enabled / disabled: only opted-in users in
    enabled channels leave text in the file; non-consented ones in enabled channels leave an
    anonymous gap; a disabled channel leaves no row at all."""
    path = tmp_path / "s.sqlite3"
    async with Store(path) as store:
        await store.set_consent("test", "inny", True)
        await store.set_consent("test", "outy", False)
        await store.set_channel_logging("test", "on", True, by="test:admin")
        await store.set_channel_logging("test", "off", False, by="test:admin")
        stored = {}
        for channel in ("on", "off", "default"):
            key = ConversationKey("test", channel)
            for user in ("inny", "outy", "never"):
                text = f"text-of-{user}-in-{channel}"
                stored[(user, channel)] = await store.record_message(
                    msg(user, text, f"{user}-{channel}", key))
    assert stored == {(u, c): (u == "inny" and c == "on")
                      for u in ("inny", "outy", "never") for c in ("on", "off", "default")}
    texts = [r[0] for r in rows(path, "SELECT text FROM messages WHERE text IS NOT NULL")]
    assert texts == ["text-of-inny-in-on"]
    authors = {r[0] for r in rows(path, "SELECT author_id FROM messages WHERE author_id "
                                        "IS NOT NULL")}
    assert authors == {"inny"}
    gaps = rows(path, "SELECT c.channel, m.author_id, m.author_name, m.text, "
                      "m.platform_message_id FROM messages m JOIN conversations c ON "
                      "c.id = m.conversation_id WHERE m.role = 'gap'")
    assert sorted(gaps) == [("on", None, None, None, None)] * 2  # outy and never, anonymous
    channels = {r[0] for r in rows(path, "SELECT c.channel FROM messages m JOIN "
                                         "conversations c ON c.id = m.conversation_id")}
    assert channels == {"on"}  # nothing at all from the disabled and default-off channels
    raw = path.read_bytes() + (tmp_path / "s.sqlite3-wal").read_bytes() if (
        tmp_path / "s.sqlite3-wal").exists() else path.read_bytes()
    assert b"text-of-outy" not in raw and b"text-of-never" not in raw


async def test_default_logging_applies_to_channels_no_admin_has_set(tmp_path: Path) -> None:
    async with Store(tmp_path / "s.sqlite3", default_logging=True) as store:
        await store.set_consent("test", "ann", True)
        assert await store.record_message(msg("ann", "hello", "1"))
        await store.set_channel_logging("test", "general", False)
        assert not await store.record_message(msg("ann", "not kept", "2"))
        assert await store.channel_logging("test", "elsewhere") is True


async def test_optout_stops_logging_and_export_drops_them(store: Store) -> None:
    await store.set_channel_logging("test", "general", True)
    await store.set_consent("test", "ann", True)
    assert await store.record_message(msg("ann", "kept while opted in", "1"))
    await store.set_consent("test", "ann", False)
    assert not await store.record_message(msg("ann", "after opting out", "2"))
    assert await store.consent("test", "ann") is False
    assert await store.consent("test", "nobody") is None
    st = await store.user_status("test", "ann")
    assert (st.opted_in, st.messages) == (False, 1)  # kept until `forget`
    assert [s async for s in export_conversations(store)] == []  # not exported meanwhile


async def test_edits_replace_text_and_deletions_leave_gaps(store: Store) -> None:
    await store.set_channel_logging("test", "general", True)
    await store.set_consent("test", "ann", True)
    await store.record_message(msg("ann", "frist draft", "1"))
    await store.record_message(msg("ann", "second", "2", key=T))
    await store.record_edit(Edit(K, "1", "ann", "first draft"))
    await store.record_edit(Edit(K, "2", "ann", "second, edited in the thread"))  # any thread
    await store.record_deletion(Deletion(K, "nope"))  # unknown ids are ignored
    got = rows(store.path, "SELECT platform_message_id, text, edited_ts IS NOT NULL FROM "
                           "messages ORDER BY id")
    assert got == [("1", "first draft", 1), ("2", "second, edited in the thread", 1)]
    await store.record_deletion(Deletion(K, "1"))
    got = rows(store.path, "SELECT role, platform_message_id, author_id, text FROM messages "
                           "ORDER BY id")
    assert got[0] == ("gap", None, None, None)
    # An edit after opting out: the row cannot be kept up to date, so it goes.
    await store.set_consent("test", "ann", False)
    await store.record_edit(Edit(T, "2", "ann", "changed my mind"))
    assert rows(store.path, "SELECT COUNT(*) FROM messages WHERE text IS NOT NULL") == [(0,)]


async def test_reactions_only_on_bot_turns_and_anonymous_without_consent(store: Store) -> None:
    await store.set_channel_logging("test", "general", True)
    await store.set_consent("test", "ann", True)
    await store.record_message(msg("ann", "assistant, ping?", "1"))
    await store.record_bot_turn(K, "pong", message_id="b1", in_reply_to="1", p_silence=0.2,
                                model_version="v1", latency_ms=3.0)
    await store.record_reaction(Reaction(K, "1", "ann", "+1"))  # on a human message: dropped
    await store.record_reaction(Reaction(K, "b1", "ann", "+1"))
    await store.record_reaction(Reaction(K, "b1", "ann", "+1"))  # duplicate event
    await store.record_reaction(Reaction(K, "b1", "bob", "-1::skin-tone-3"))
    got = rows(store.path, "SELECT user_id, emoji, negative FROM reactions ORDER BY id")
    assert got == [("ann", "+1", 0), (None, "-1::skin-tone-3", 1)]
    await store.record_reaction(Reaction(K, "b1", "bob", "-1::skin-tone-3", added=False))
    await store.record_reaction(Reaction(K, "b1", "ann", "+1", added=False))
    assert rows(store.path, "SELECT COUNT(*) FROM reactions") == [(0,)]


def test_negative_reactions() -> None:
    assert all(is_negative(e) for e in ("-1", ":thumbsdown:", "👎", "👎🏽", "-1::skin-tone-2",
                                         "x", "❌"))
    assert not any(is_negative(e) for e in ("+1", "👍", "tada", "heart", "eyes"))


async def test_decisions_are_recorded_everywhere_without_text_author_or_platform_id(
        store: Store) -> None:
    off = ConversationKey("test", "quiet")  # logging off (the default)
    await store.record_decision(off, Decision(0.8, False, fed_tokens=12, latency_ms=4.5),
                                model_version="v7", addressed=False, message_id="m1",
                                mode="semi-active")
    await store.record_decision(off, Decision(0.1, True, True), model_version="v7",
                                addressed=True, message_id="m2", mode="semi-active")
    cols = [r[1] for r in rows(store.path, "PRAGMA table_info(decisions)")]
    assert not {"text", "author_id", "author_name"} & set(cols)
    got = rows(store.path, "SELECT message_id, message_row, addressed, p_silence, speak, "
                           "forced, fed_tokens, latency_ms, model_version FROM decisions "
                           "ORDER BY id")
    assert got == [(None, None, 0, 0.8, 0, 0, 12, 4.5, "v7"),
                   (None, None, 1, 0.1, 1, 1, 0, 0.0, "v7")]
    assert rows(store.path, "SELECT COUNT(*) FROM messages") == [(0,)]
    # Where logging is on, a decision points at its message's row: the opted-in author's
    # message, or the anonymous gap of someone who never opted in, whose platform id is kept
    # nowhere in the file (issue 10, item 10).
    await store.set_channel_logging("test", "general", True)
    await store.set_consent("test", "ann", True)
    await store.record_message(msg("ann", "hello", "1700000100.000100"))
    await decide(store, "1700000100.000100")
    await store.record_message(msg("zed", "hi, I never opted in", "1700000200.000200"))
    await decide(store, "1700000200.000200")
    assert rows(store.path, "SELECT d.message_id, m.role, m.author_id FROM decisions d JOIN "
                            "messages m ON m.id = d.message_row ORDER BY d.id") == [
        (None, "user", "ann"), (None, "gap", None)]
    for f in (store.path, Path(f"{store.path}-wal")):
        if f.exists():
            assert b"1700000200.000200" not in f.read_bytes(), f


async def test_bot_turns_are_kept_only_when_their_context_was(store: Store) -> None:
    await store.set_channel_logging("test", "general", True)
    await store.set_consent("test", "ann", True)

    async def bot(text: str, reply_to: str, mid: str) -> None:
        await store.record_bot_turn(K, text, message_id=mid, in_reply_to=reply_to,
                                    p_silence=0.1, model_version="v1", latency_ms=1.0)
        await decide(store, reply_to)

    await store.record_message(msg("ann", "assistant, what is 2+2?", "1"))
    await bot("4", "1", "b1")  # kept
    await store.record_message(msg("bob", "assistant, my address is 12 Elm Street", "2"))
    await bot("Noted: 12 Elm Street", "2", "b2")  # answers a non-consented message: withheld
    await store.record_message(msg("bob", "ok so my pin is 4242 4242", "3"))
    await decide(store, "3")
    await store.record_message(msg("ann", "assistant, what did bob say?", "4"))
    await bot("He said my pin is 4242 4242", "4", "b3")  # repeats bob: withheld
    await store.record_message(msg("bob", "translate: je suis malade", "5"))
    await store.record_message(msg("ann", "assistant, and in English?", "6"))
    await bot("I am sick", "6", "b4")  # same batch as bob's message: withheld
    await store.record_message(msg("ann", "assistant, thanks", "7"))
    await bot("You're welcome", "7", "b5")  # kept
    got = rows(store.path, "SELECT platform_message_id, text, p_silence FROM messages WHERE "
                           "role = 'assistant' ORDER BY id")
    assert got == [("b1", "4", 0.1), (None, None, 0.1), (None, None, 0.1), (None, None, 0.1),
                   ("b5", "You're welcome", 0.1)]


def test_quotes_ignores_case_spacing_and_punctuation() -> None:
    assert quotes("He said: MY PIN is 4242-4242!", ["my pin is 4242 4242"])
    assert quotes("ok: 你好世界今天天气很好啊", ["今天天气很好啊"])
    assert not quotes("The weather is fine today.", ["my pin is 4242 4242"])
    assert not quotes("ok", ["ok"])  # too short to count


async def test_forget_removes_every_row_of_the_user(store: Store, tmp_path: Path) -> None:
    await store.set_channel_logging("test", "general", True)
    await store.set_consent("test", "ann", True)
    await store.set_consent("test", "bob", True)
    other = ConversationKey("test", "general", "t2")
    # Platform ids that do not spell her name: the file must not keep them either.
    ann_ids = {"1700000001.000100", "1700000003.000300"}
    await store.record_message(msg("ann", "ann's secret plan", "1700000001.000100"))
    await decide(store, "1700000001.000100")
    await store.record_message(msg("bob", "bob says hi", "2", reply_to="1700000001.000100"))
    await decide(store, "2")
    await store.record_message(msg("ann", "assistant, summarise my plan?", "1700000003.000300",
                                   key=other))
    await store.record_bot_turn(other, "Your plan: ann's secret plan", message_id="b1",
                                in_reply_to="1700000003.000300", p_silence=0.1,
                                model_version="v1", latency_ms=1.0)
    await decide(store, "1700000003.000300", other)
    await store.record_message(msg("bob", "assistant, hello", "4"))
    await store.record_bot_turn(K, "Hello bob", message_id="b2", in_reply_to="4",
                                p_silence=0.1, model_version="v1", latency_ms=1.0)
    await store.record_reaction(Reaction(K, "b2", "ann", "heart"))
    await store.record_reaction(Reaction(other, "b1", "ann", "+1"))
    # An export already used for training keeps its file, but not its index of ann.
    settings = config_mod.parse({"store": {"path": str(store.path)}})
    used = tmp_path / "used.jsonl"
    assert await export_jsonl(settings, used, store=store) >= 1
    assert await store.mark_export_used(used) == 1
    result = await store.forget("ann", "test")
    assert (result.messages, result.bot_turns, result.reactions, result.consent_removed) == (
        2, 1, 1, True)
    # Nothing of ann anywhere in the file: no id, no name, no text, no consent, no reaction,
    # none of her messages' platform ids, in any table.
    con = sqlite3.connect(store.path)
    try:
        tables = [t for t, in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert {"messages", "decisions", "export_segments", "reactions", "consent"} <= set(tables)
        for table in tables:
            for row in con.execute(f"SELECT * FROM {table}"):
                flat = " ".join(str(v) for v in row)
                assert "ann" not in flat.lower(), (table, row)
                assert not ann_ids & {str(v) for v in row}, (table, row)
                assert not any(i in flat for i in ann_ids), (table, row)
    finally:
        con.close()
    assert rows(store.path, "SELECT COUNT(*) FROM export_segments") == [(1,)]  # bob's stays
    # ... nor in the bytes on disk (secure_delete, and the WAL is checkpointed and truncated).
    for f in (store.path, Path(f"{store.path}-wal")):
        if f.exists():
            assert b"secret plan" not in f.read_bytes(), f
    assert await store.consent("test", "ann") is None
    assert (await store.user_status("test", "bob")).messages == 2
    assert rows(store.path, "SELECT text FROM messages WHERE role = 'assistant' AND "
                            "text IS NOT NULL") == [("Hello bob",)]
    again = await store.forget("ann", "test")
    assert again.total == 0 and not again.consent_removed


async def test_retention_purges_old_messages(tmp_path: Path) -> None:
    async with Store(tmp_path / "s.sqlite3") as store:
        await store.set_channel_logging("test", "general", True)
        await store.set_consent("test", "ann", True)
        now = time.time()
        await store.record_message(msg("ann", "old", "1", ts=now - 40 * 86400))
        await store.record_message(msg("ann", "new", "2", ts=now - 86400))
        assert await store.purge_older_than(0) == 0  # 0 = keep
        assert await store.purge_older_than(30) == 1
        assert rows(store.path, "SELECT text FROM messages") == [("new",)]
    # Opened with retention_days, the store purges by itself on a schedule.
    async with Store(tmp_path / "s.sqlite3", retention_days=1,
                     retention_interval=0.05) as store:
        await store.record_message(msg("ann", "fresh", "3", ts=time.time()))
        for _ in range(100):
            if rows(store.path, "SELECT COUNT(*) FROM messages WHERE text = 'new'") == [(0,)]:
                break
            await asyncio.sleep(0.02)
        assert rows(store.path, "SELECT text FROM messages") == [("fresh",)]


BAD_INPUT = {
    "nul": "a\x00b\x00c",
    "long": "x" * 50_000,
    "rtl": "مرحبا \u200f שלום \u202eevil\u202c",
    "zero-width": "in\u200bvis\u200cible\u200d\ufeff",
    "emoji": "👩‍👩‍👧‍👦 🏳️‍🌈 😂" * 3,
    "control": "\x1b[31mred\x1b[0m \x07\x08",
    "attachment-only": "",
}


async def test_bad_input_is_stored_intact_and_exported(store: Store) -> None:
    await store.set_channel_logging("test", "general", True)
    await store.set_consent("test", "ann", True)
    for i, (name, text) in enumerate(BAD_INPUT.items()):
        files = ("screenshot.png", "log.txt") if name == "attachment-only" else ()
        assert await store.record_message(msg("ann", text, name, ts=1000.0 + i,
                                              attachments=files)), name
    got = dict(rows(store.path, "SELECT platform_message_id, text FROM messages"))
    # A Message holds no control character but newline and tab (bot.message.clean_text); all
    # the rest (RTL marks, zero-width joiners, emoji sequences, 50k characters) byte for byte.
    cleaned = dict(BAD_INPUT, nul="abc", control="red ")
    assert got == cleaned
    [seg] = [s async for s in export_conversations(store, scrub=False)]
    contents = [r["content"] for r in seg.records]
    assert contents[0] == "abc"
    assert contents[1] == BAD_INPUT["long"]
    assert contents[2:6] == [cleaned[k] for k in ("rtl", "zero-width", "emoji", "control")]
    assert contents[6] == "[attachment: screenshot.png, log.txt]"
    json.loads(json.dumps(seg.to_json(), ensure_ascii=False))  # serialisable as it is


async def test_unstorable_input_is_refused_with_a_reason(store: Store,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    await store.set_channel_logging("test", "general", True)
    await store.set_consent("test", "ann", True)
    assert not await store.record_message(msg("ann", "y" * (MAX_TEXT_CHARS + 1), "big"))
    assert "over the store's limit" in caplog.text
    assert rows(store.path, "SELECT role FROM messages") == [("gap",)]
    # Invalid Unicode (a lone surrogate from a broken client) is stored with U+FFFD.
    assert await store.record_message(msg("ann", "bad \ud800 half", "sur"))
    text = rows(store.path, "SELECT text FROM messages WHERE platform_message_id = 'sur'")[0][0]
    assert text.startswith("bad ") and text.endswith(" half") and "\ufffd" in text


async def test_concurrent_conversations_share_commits_without_lock_errors(store: Store
                                                                           ) -> None:
    await store.set_consent("test", "ann", True)
    keys = [ConversationKey("test", f"c{i}") for i in range(20)]
    for k in keys:
        await store.set_channel_logging("test", k.channel, True)

    async def conversation(k: ConversationKey) -> list[bool]:
        return [await store.record_message(msg("ann", f"{k.channel} {j}", f"{k.channel}-{j}",
                                               key=k)) for j in range(25)]

    results = await asyncio.gather(*(conversation(k) for k in keys))
    assert all(all(r) for r in results)
    assert rows(store.path, "SELECT COUNT(*) FROM messages") == [(500,)]
    assert max(store.batches) > 1  # callers shared commits


async def test_a_second_process_style_connection_can_write_meanwhile(tmp_path: Path) -> None:
    """`chimein data forget` runs while the bot runs: both open the same file."""
    path = tmp_path / "s.sqlite3"
    async with Store(path) as bot_store, Store(path) as cli_store:
        await bot_store.set_channel_logging("test", "general", True)
        await bot_store.set_consent("test", "ann", True)

        async def bot_writes() -> None:
            for i in range(100):
                await bot_store.record_message(msg("ann", f"m{i}", f"m{i}"))

        async def cli_forgets() -> None:
            await asyncio.sleep(0.01)
            await cli_store.forget("ann", "test")

        await asyncio.gather(bot_writes(), cli_forgets())
    # Before the forget: turned into gaps by it; after: not stored (ann is no longer opted
    # in). Either way all 100 rows are there, none with ann's text, and nothing failed.
    assert rows(path, "SELECT COUNT(*), COUNT(text), COUNT(author_id) FROM messages") == [
        (100, 0, 0)]


async def test_a_failing_job_does_not_fail_the_others_in_its_batch(store: Store) -> None:
    await store.set_channel_logging("test", "general", True)
    await store.set_consent("test", "ann", True)

    async def broken(db) -> None:  # type: ignore[no-untyped-def]
        await db.execute("INSERT INTO no_such_table VALUES (1)")

    results = await asyncio.gather(
        store.record_message(msg("ann", "one", "1")), store._writer.submit("broken", broken),
        store.record_message(msg("ann", "two", "2")), return_exceptions=True)
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], sqlite3.OperationalError)
    assert rows(store.path, "SELECT text FROM messages ORDER BY id") == [("one",), ("two",)]


async def test_newer_schema_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    async with Store(path):
        pass
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer chimein") as e:
        async with Store(path):
            pass
    assert f"v{SCHEMA_VERSION + 5}" in str(e.value) and "Upgrade chimein" in str(e.value)
    assert path.read_bytes() == before


async def test_other_files_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("this is not a database, just some text " * 100)
    with pytest.raises(StoreError, match="not a chimein store"):
        await Store.open(junk)
    other = tmp_path / "other.sqlite3"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE invoices (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a chimein store.*invoices"):
        await Store.open(other)


async def test_channel_settings_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    async with Store(path) as store:
        await store.set_channel_policy("test", "general", mode="mention", by="test:admin")
        await store.set_channel_policy("test", "general", threshold=0.7)
        await store.set_channel_logging("test", "general", True)
    async with Store(path) as store:
        assert store.channel_overrides() == {("test", "general"): ("mention", 0.7)}
        assert await store.channel_logging("test", "general")


async def test_stats_per_channel_and_user(store: Store) -> None:
    await store.set_channel_logging("test", "general", True)
    await store.set_consent("test", "ann", True)
    await store.set_consent("test", "cy", True)
    await store.record_message(msg("ann", "a", "1"))
    await store.record_message(msg("bob", "b", "2"))
    await store.record_message(msg("ann", "c", "3", key=T))
    await decide(store, "3", T)
    stats = await store.stats()
    chans = {c["channel"]: c for c in stats["channels"]}
    assert chans["test:general"]["messages"] == 2 and chans["test:general"]["gaps"] == 1
    assert chans["test:general"]["decisions"] == 1 and chans["test:general"]["logging"]
    users = {u["user"]: u for u in stats["users"]}
    assert users["test:ann"]["messages"] == 2 and users["test:ann"]["opted_in"] is True
    assert users["test:cy"]["messages"] == 0  # opted in, nothing written yet
    assert "test:bob" not in users
    assert stats["totals"]["messages"] == 2 and stats["schema"] == SCHEMA_VERSION
