"""Export: consented segments only, cut at idle gaps and at what is not consented, scrubbed,
unwanted bot turns as silence, Slack gated; and a property test over random conversations."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot import config as config_mod
from bot.engine.base import Decision
from bot.message import ConversationKey, Deletion, Edit, Message, Reaction
from bot.render import from_records, with_silences
from bot.store import ExportSegment, Store, export_conversations, export_jsonl
from bot.transcript import parse_line

K = ConversationKey("test", "general")
MIN = 60.0


def msg(author: str, text: str, mid: str, ts: float, key: ConversationKey = K,
        **kw) -> Message:  # type: ignore[no-untyped-def]
    return Message(key, author, author.title(), text, message_id=mid, ts=ts, **kw)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(tmp_path / "store.sqlite3") as s:
        await s.set_channel_logging("test", "general", True)
        for user in ("ann", "bob"):
            await s.set_consent("test", user, True)
        yield s


async def export(store: Store, **kw) -> list[ExportSegment]:  # type: ignore[no-untyped-def]
    async with contextlib.aclosing(export_conversations(store, **kw)) as it:
        return [seg async for seg in it]


async def bot(store: Store, text: str, reply_to: str, mid: str,
              key: ConversationKey = K) -> None:
    await store.record_bot_turn(key, text, message_id=mid, in_reply_to=reply_to,
                                p_silence=0.1, model_version="v1", latency_ms=1.0)
    await store.record_decision(key, Decision(0.1, True), model_version="v1", addressed=True,
                                message_id=reply_to, mode="semi-active")


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def contents(seg: ExportSegment) -> list[str | None]:
    return [r["content"] for r in seg.records]


async def test_segments_are_cut_at_idle_gaps_and_at_non_consented_messages(store: Store
                                                                            ) -> None:
    t = 1_000_000.0
    await store.record_message(msg("ann", "morning all", "1", t))
    await store.record_message(msg("bob", "assistant, what is 429?", "2", t + 1 * MIN))
    await bot(store, "Too Many Requests", "2", "b1")
    await store.record_message(msg("ann", "thanks", "3", t + 2 * MIN))
    await store.record_message(msg("cy", "I never opted in", "4", t + 3 * MIN))
    await store.record_message(msg("ann", "anyway, lunch?", "5", t + 4 * MIN))
    await store.record_message(msg("bob", "the next day", "6", t + 24 * 60 * MIN))
    segs = await export(store, idle_gap_minutes=60)
    assert [contents(s) for s in segs] == [
        ["morning all", "assistant, what is 429?", "Too Many Requests", "thanks"],
        ["anyway, lunch?"],
        ["the next day"]]
    assert "I never opted in" not in json.dumps([s.to_json() for s in segs])
    assert segs[0].records[2] == {"role": "assistant", "content": "Too Many Requests"}
    assert segs[0].authors == {("test", "ann"), ("test", "bob")}
    assert segs[0].id != segs[1].id
    # Every line is valid conversation JSONL, and renders to the alternating turn shape.
    for s in segs:
        conv = parse_line(json.dumps(s.to_json(), ensure_ascii=False))
        turns = with_silences(from_records(conv.records))
        assert [t.role for t in turns][:2] == ["user", "assistant"]


async def test_unwanted_bot_turns_are_exported_as_silence(store: Store) -> None:
    await store.record_message(msg("ann", "assistant, joke?", "1", 1.0))
    await bot(store, "a bad joke", "1", "b1")
    await store.record_message(msg("bob", "assistant, another?", "2", 2.0))
    await bot(store, "a deleted joke", "2", "b2")
    await store.record_message(msg("ann", "assistant, a good one?", "3", 3.0))
    await bot(store, "a good joke", "3", "b3")
    await store.record_reaction(Reaction(K, "b1", "cy", "👎"))  # anyone's 👎 counts
    await store.record_deletion(Deletion(K, "b2"))
    [seg] = await export(store)
    assert seg.records == [
        {"role": "user", "name": "Ann", "content": "assistant, joke?"},
        {"role": "user", "name": "Bob", "content": "assistant, another?"},
        {"role": "user", "name": "Ann", "content": "assistant, a good one?"},
        {"role": "assistant", "content": "a good joke"}]
    # Taking the 👎 back makes the turn count again.
    await store.record_reaction(Reaction(K, "b1", "cy", "👎", added=False))
    [seg] = await export(store)
    assert contents(seg)[1] == "a bad joke"


async def test_pii_is_scrubbed_with_placeholders_stable_within_a_segment(store: Store) -> None:
    await store.record_message(msg("ann", "mail me at ann@example.com", "1", 1.0))
    await store.record_message(msg("bob", "ok, ann@example.com it is; mine is b@example.org",
                                   "2", 2.0))
    await store.record_message(msg("ann", "call +44 20 7946 0958", "3", 10_000.0))
    segs = await export(store, idle_gap_minutes=60)
    assert contents(segs[0]) == ["mail me at <EMAIL_1>", "ok, <EMAIL_1> it is; mine is <EMAIL_2>"]
    assert contents(segs[1]) == ["call <PHONE_1>"]  # a fresh numbering per segment
    raw = await export(store, scrub=False)
    assert "ann@example.com" in contents(raw[0])[0]


async def test_slack_data_needs_the_switch_and_says_why(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    slack = ConversationKey("slack", "C123")
    async with Store(tmp_path / "s.sqlite3") as store:
        await store.set_channel_logging("slack", "C123", True)
        await store.set_consent("slack", "U1", True)
        await store.record_message(Message(slack, "U1", "Ann", "from slack", message_id="1.1"))
        with caplog.at_level(logging.WARNING, logger="bot.store"):
            assert await export(store) == []
        assert "Slack's API terms restrict training" in caplog.text
        assert "training.allow_slack_data = true" in caplog.text
        [seg] = await export(store, allow_slack_data=True)
        assert contents(seg) == ["from slack"] and seg.platform == "slack"


async def test_export_jsonl_writes_the_file_and_forget_cleans_unused_exports(
        store: Store, tmp_path: Path) -> None:
    await store.record_message(msg("ann", "ann's line", "1", 1.0))
    await store.record_message(msg("bob", "bob's line", "2", 2.0))
    await store.record_message(msg("bob", "bob alone", "3", 100_000.0))
    settings = config_mod.parse({"store": {"path": str(store.path)}})
    used, fresh = tmp_path / "used.jsonl", tmp_path / "fresh.jsonl"
    assert await export_jsonl(settings, used, store=store) == 2
    assert await store.mark_export_used(used) == 1
    assert await export_jsonl(settings, fresh, store=store) == 2
    result = await store.forget("ann", "test")
    assert (result.export_segments, result.export_files) == (1, [str(fresh.resolve())])
    fresh_lines = [json.loads(line) for line in fresh.read_text().splitlines()]
    assert [[m["content"] for m in c["messages"]] for c in fresh_lines] == [["bob alone"]]
    assert "ann's line" in used.read_text()  # already trained on: retraining retires it
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*forget-tmp"))


async def test_edits_and_deletions_show_in_the_export(store: Store) -> None:
    await store.record_message(msg("ann", "teh typo", "1", 1.0))
    await store.record_message(msg("bob", "to be deleted", "2", 2.0))
    await store.record_message(msg("ann", "after", "3", 3.0))
    await store.record_edit(Edit(K, "1", "ann", "the typo fixed"))
    await store.record_deletion(Deletion(K, "2"))
    assert [contents(s) for s in await export(store)] == [["the typo fixed"], ["after"]]


@pytest.mark.parametrize("how", ["forget", "delete", "optout", "edit"])
async def test_a_bot_turn_repeating_a_message_goes_when_that_message_does(store: Store,
                                                                          how: str) -> None:
    await store.record_message(msg("ann", "my flight lands at 18:05 in Oslo", "1", 1.0))
    await store.record_decision(K, Decision(0.9, False), model_version="v1", addressed=False,
                                message_id="1", mode="semi-active")
    await store.record_message(msg("bob", "assistant, when does ann land?", "2", 2.0))
    await bot(store, "Ann said: my flight lands at 18:05 in Oslo", "2", "b1")
    [seg] = await export(store)
    assert "18:05 in Oslo" in contents(seg)[2]  # while ann is opted in, it is hers to share
    if how == "forget":
        await store.forget("ann", "test")
    elif how == "delete":
        await store.record_deletion(Deletion(K, "1"))
    elif how == "optout":
        await store.set_consent("test", "ann", False)
    else:
        await store.record_edit(Edit(K, "1", "ann", "never mind"))
    dump = json.dumps([s.to_json() for s in await export(store)])
    assert "Oslo" not in dump and "when does ann land?" in dump


async def test_a_bot_turn_quoting_a_message_sent_while_logging_was_off_is_withheld(
        store: Store) -> None:
    await store.set_channel_logging("test", "general", False)
    assert not await store.record_message(msg("cy", "my pin is 4242 4242 tell nobody", "1", 1.0))
    await store.set_channel_logging("test", "general", True)
    await store.record_message(msg("ann", "assistant, what did cy say?", "2", 2.0))
    await bot(store, "Cy said: my pin is 4242 4242 tell nobody", "2", "b1")
    dump = json.dumps([s.to_json() for s in await export(store, scrub=False)])
    assert "4242" not in dump and "what did cy say?" in dump


async def test_many_unkept_messages_do_not_push_out_what_a_bot_turn_may_quote(
        store: Store) -> None:
    await store.record_message(msg("cy", "my home address is 12 Elm Street", "c", 1.0))
    await store.record_decision(K, Decision(0.9, False), model_version="v1", addressed=False,
                                message_id="c", mode="semi-active")
    for i in range(200):
        await store.record_message(msg("dee", f"chatter number {i} from dee, not opted in",
                                       f"d{i}", 2.0 + i))
        await store.record_decision(K, Decision(0.9, False), model_version="v1",
                                    addressed=False, message_id=f"d{i}", mode="semi-active")
    await store.record_message(msg("ann", "assistant, where does cy live?", "a", 300.0))
    await bot(store, "Cy said: my home address is 12 Elm Street", "a", "b1")
    dump = json.dumps([s.to_json() for s in await export(store, scrub=False)])
    assert "Elm Street" not in dump and "where does cy live?" in dump


async def test_past_the_unkept_memory_bound_bot_turns_are_withheld_until_restart(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store.privacy, "conversation_chars", 100)
    elsewhere = ConversationKey("test", "other")
    await store.set_channel_logging("test", "other", True)
    for i in range(5):  # 5 x 29 letters/digits: past 100, the oldest cannot be remembered
        await store.record_message(msg("cy", f"cy number {i} has not opted in at all", f"c{i}",
                                       1.0 + i))
    assert store.privacy.unkept_texts(K) is None
    await store.record_message(msg("ann", "assistant, hello?", "a", 10.0))
    await bot(store, "hello ann", "a", "b1")
    await store.record_message(msg("ann", "assistant, hello?", "a2", 10.0, key=elsewhere))
    await bot(store, "hello ann", "a2", "b2", key=elsewhere)  # other conversations: unaffected
    texts = rows(store.path, "SELECT platform_message_id FROM messages WHERE "
                             "role = 'assistant' AND text IS NOT NULL")
    assert texts == [("b2",)]
    assert store.privacy.chars() <= 100  # memory stays bounded
    async with Store(store.path) as restarted:  # a fresh process: the model starts afresh too
        await restarted.record_message(msg("ann", "assistant, again?", "a3", 20.0))
        await bot(restarted, "hello again", "a3", "b3")
    assert ("b3",) in rows(store.path, "SELECT platform_message_id FROM messages WHERE "
                                       "role = 'assistant' AND text IS NOT NULL")


async def test_a_thread_answer_quoting_an_unkept_channel_message_is_withheld(
        store: Store) -> None:
    thread = ConversationKey("test", "general", "1")
    await store.record_message(msg("cy", "the launch code is swordfish42", "1", 1.0))
    await store.record_message(msg("ann", "assistant, what is the code?", "2", 2.0, key=thread))
    await bot(store, "It is swordfish42.", "2", "b1", key=thread)
    dump = json.dumps([s.to_json() for s in await export(store, scrub=False)])
    assert "swordfish" not in dump and "what is the code?" in dump


# -- the property: no text that is not consented ever leaves the store ---------------------
CHANNELS = [ConversationKey("test", "c0"), ConversationKey("test", "c1"),
            ConversationKey("slack", "C2")]
USERS = ["u0", "u1", "u2", "u3"]
# Logging is toggled often: a message sent while it was off must not come back through a bot
# turn after it is on.
KINDS = ["msg"] * 8 + ["optin", "optin", "optout", "logging", "logging", "logging", "logging",
                       "bot", "bot", "bot", "decide", "edit", "delete", "forget"]


@dataclass
class Sent:
    mid: str
    key: ConversationKey
    user: str
    token: str
    stored: bool
    alive: bool = True
    old: list[str] = field(default_factory=list)


async def run_scenario(path: Path, events: list[tuple[str, int, int, int]]) -> None:
    # Start where leaks could happen: logging on everywhere, two users opted in, two never
    # asked; the events change any of it.
    consent: dict[str, bool | None] = {"u0": True, "u1": True, "u2": None, "u3": None}
    logging_on = {k: True for k in CHANNELS}
    sent: list[Sent] = []
    tokens: list[str] = []
    batch_start = {k: 0 for k in CHANNELS}  # index into `sent` where the undecided batch starts
    ts = 1_000_000.0

    def new_token() -> str:
        tokens.append(f"secret{len(tokens):05d}token")
        return tokens[-1]

    async with Store(path) as store:
        for k in CHANNELS:
            await store.set_channel_logging(k.platform, k.channel, True)
        for user in ("u0", "u1"):
            for platform in ("test", "slack"):
                await store.set_consent(platform, user, True)
        for n, (kind, a, b, c) in enumerate(events):
            key = CHANNELS[b % len(CHANNELS)]
            here = [s for s in sent if s.key == key]
            if kind == "msg":
                user = USERS[a % len(USERS)]
                ts += (c % 7) * 20 * MIN  # sometimes past the idle gap
                s = Sent(f"m{n}", key, user, new_token(),
                         bool(consent[user]) and logging_on[key])
                stored = await store.record_message(Message(key, user, user.upper(), s.token,
                                                            message_id=s.mid, ts=ts))
                assert stored == s.stored  # the consent matrix, on every message
                sent.append(s)
            elif kind in ("optin", "optout"):
                user = USERS[a % len(USERS)]
                consent[user] = kind == "optin"
                for platform in ("test", "slack"):
                    await store.set_consent(platform, user, kind == "optin")
            elif kind == "logging":
                logging_on[key] = bool(c % 2)
                await store.set_channel_logging(key.platform, key.channel, bool(c % 2))
            elif kind in ("bot", "decide") and here:
                anchor = here[-1]
                if kind == "bot":
                    batch = [s for s in sent[batch_start[key]:] if s.key == key]
                    quoted = {0: [anchor], 1: batch, 2: [here[c % len(here)]]}[a % 3]
                    # An answer repeats what it was given (and sometimes older context).
                    text = "re: " + " ".join(q.token for q in quoted)
                    await store.record_bot_turn(key, text, message_id=f"b{n}",
                                                in_reply_to=anchor.mid, p_silence=0.1,
                                                model_version="v", latency_ms=1.0)
                await store.record_decision(key, Decision(0.5, kind == "bot"),
                                            model_version="v", addressed=False,
                                            message_id=anchor.mid, mode="semi-active")
                batch_start[key] = len(sent)
            elif kind == "edit" and sent:
                s = sent[c % len(sent)]
                new = new_token()
                await store.record_edit(Edit(s.key, s.mid, s.user, new))
                if s.stored and s.alive:
                    if consent[s.user] and logging_on[s.key]:
                        s.old.append(s.token)
                        s.token = new
                    else:
                        s.alive = False
            elif kind == "delete" and sent:
                s = sent[c % len(sent)]
                await store.record_deletion(Deletion(s.key, s.mid))
                s.alive = False
            elif kind == "forget":
                user = USERS[a % len(USERS)]
                await store.forget(user)
                consent[user] = None
                for s in sent:
                    if s.user == user:
                        s.alive = False
        segs = [seg.to_json() async for seg in export_conversations(store)]
    dump = json.dumps(segs, ensure_ascii=False)
    allowed = {s.token for s in sent if s.stored and s.alive and consent[s.user]
               and s.key.platform != "slack"}
    for token in set(tokens) - allowed:
        assert token not in dump, f"{token} is not consented but was exported"
    for token in allowed:
        assert token in dump, f"{token} is consented but missing from the export"


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 5), st.integers(0, 2),
                          st.integers(0, 1000)), min_size=8, max_size=50))
# Found by an audit: logging off, a message, logging on, a message, a bot turn quoting the
# batch (both), then more messages: the first message came back through the bot turn.
@example([("logging", 0, 0, 0), ("msg", 0, 0, 0), ("logging", 0, 0, 1), ("msg", 0, 0, 0),
          ("bot", 1, 0, 0), ("msg", 0, 0, 0), ("msg", 0, 0, 0), ("msg", 0, 0, 0)])
def test_export_never_contains_a_non_consented_text(
        events: list[tuple[str, int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run_scenario(Path(tmp) / "s.sqlite3", events))


async def test_a_bot_turn_quoting_thread_context_fetched_from_the_platform_is_withheld(
        store: Store) -> None:
    """A thread new to the bot gets its earlier messages as context straight from the platform
    (Core.seed_context): they never pass through record_message, so the store must still know
    not to keep a bot turn that repeats them."""
    from bot.core import Core
    from bot.engine.fake import ScriptedEngine
    from bot.message import user
    from bot.policy import Policy

    thread = ConversationKey("test", "general", thread="t1")
    eng = ScriptedEngine(answer=lambda turns: "Cy said: my pin is 4242 4242 tell nobody")
    core = Core(eng, Policy(config_mod.Settings().policy, ["assistant"]), store=store)
    assert core.seed_context(thread, [user("Cy", "my pin is 4242 4242 tell nobody")])
    assert not core.seed_context(thread, [])  # once per conversation
    async with core:
        await core.handle(msg("ann", "assistant, what did cy say?", "2", 2.0, key=thread))
        await core.flush()
    dump = json.dumps([s.to_json() for s in await export(store, scrub=False)])
    assert "4242" not in dump and "what did cy say?" in dump
