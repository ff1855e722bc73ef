"""Property tests (hypothesis) for everything that reads outside input (issue 10): Slack event
translation and the real bolt app over Socket Mode, Discord gateway payloads through the real
discord.py client, and the JSONL reader. Whatever arrives: no exception escapes a handler,
every Slack envelope is acknowledged, every bad JSONL line is reported with its number, and
everything that reaches the core is clean text (bot.message.clean_text).

Kept fast for `make test`: a few hundred pure examples, a handful of live-server ones."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.slack import SlackIdentity, translate_event, user_ids_to_resolve
from bot.message import ConversationKey, Message
from bot.transcript import iter_jsonl
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_slack import FakeSlack
from tests.test_discord_e2e import make_env as discord_env
from tests.test_discord_e2e import until
from tests.test_slack_e2e import make_env as slack_env
from training.data import read_file

FAST = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
LIVE = settings(max_examples=12, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- what outside text looks like -----------------------------------------------------------
PIECES = ["<@U0BOT>", "<@U0ANN|ann>", "<#C1|general>", "<!here>", "<https://x.test|x>", "&amp;",
          "&lt;", "\x00", "\x1b[31m", "\r\n", "\r", "\ud800", "\udcff", "\ud83d\ude00", "\u202e",
          "\u200d", "\x85", "\ufffd", "assistant, ", "(silence)", "(response) ", "\n", "\t",
          "<@1>", "<t:99999999999999999:R>", "<a:x:1>", "x" * 5000]
TEXT = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(categories=["Cs", "Cc", "Cf", "Zl", "Zp"]), max_size=20),
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=8)), max_size=8).map("".join),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8)


def anything(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A plausible value most of the time, anything JSON can carry otherwise."""
    return st.one_of(plausible, plausible, JSON)


def is_clean(text: str) -> bool:
    return not any(unicodedata.category(c) == "Cs" or (unicodedata.category(c) == "Cc"
                                                       and c not in "\n\t") for c in text)


def assert_clean(obj: Any) -> None:
    """Every text field of a neutral event (and its key) is clean."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, str):
            assert is_clean(value), (f.name, value)
        elif isinstance(value, ConversationKey):
            assert_clean(value)
        elif isinstance(value, tuple):
            assert all(is_clean(v) for v in value), (f.name, value)


# -- Slack ----------------------------------------------------------------------------------
ME = SlackIdentity("U0BOT", "B0BOT", "assistant")
TS = anything(st.one_of(st.just("1760000100.000100"),
                        st.from_regex(r"\A[0-9]{1,12}\.[0-9]{6}\Z"), TEXT))
USER = anything(st.sampled_from(["U0ANN", "U0BOB", "U0BOT", "W0X", ""]))
INNER = st.fixed_dictionaries({}, optional={
    "ts": TS, "text": anything(TEXT), "user": USER, "thread_ts": TS, "bot_id": anything(TEXT)})
SLACK_EVENT = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "app_mention", "reaction_added", "reaction_removed"])},
    optional={
        "channel": anything(st.sampled_from(["C0GENERAL", "D0ANNDM", "G0PRIV", ""])),
        "user": USER, "text": anything(TEXT), "ts": TS, "thread_ts": TS, "event_ts": TS,
        "subtype": anything(st.sampled_from(["message_changed", "message_deleted",
                                             "bot_message", "file_share", "thread_broadcast",
                                             "channel_join", "me_message"])),
        "message": anything(INNER), "previous_message": anything(INNER), "deleted_ts": TS,
        "item": anything(st.fixed_dictionaries({}, optional={
            "type": anything(st.just("message")), "channel": anything(st.just("C0GENERAL")),
            "ts": TS})),
        "reaction": anything(TEXT), "item_user": USER, "bot_id": anything(TEXT),
        "files": anything(st.lists(anything(st.fixed_dictionaries({}, optional={
            "name": anything(TEXT), "title": anything(TEXT)})), max_size=3)),
        "user_profile": anything(st.fixed_dictionaries({}, optional={
            "display_name": anything(TEXT), "real_name": anything(TEXT)})),
        "bot_profile": anything(st.fixed_dictionaries({}, optional={"name": anything(TEXT)})),
        "username": anything(TEXT),
        "channel_type": anything(st.sampled_from(["im", "channel", "mpim", "group"])),
    })


@FAST
@given(event=SLACK_EVENT)
def test_slack_translation_takes_any_payload(event: dict[str, Any]) -> None:
    ids = user_ids_to_resolve(event, ME)
    assert all(isinstance(i, str) for i in ids)
    own = {"1760000100.000100": ConversationKey("slack", "C0GENERAL")}
    ev = translate_event(event, ME, {"U0ANN": "Ann\x00\ud800"}, own)
    if ev is not None:
        assert_clean(ev)


async def _slack_scenario(events: list[dict[str, Any]]) -> None:
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append  # type: ignore[method-assign]
    bolt = logging.getLogger("slack_bolt")
    bolt.addHandler(handler)
    try:
        async with FakeSlack() as fake:
            core, adapter, env = await slack_env(fake)
            async with core, adapter:
                await fake.wait_connected()
                ids = [await fake.send_event(ev) for ev in events]
                for eid in ids:  # bolt acknowledges only after the listener returned
                    await fake.wait_acked(eid, timeout=10)
                await asyncio.wait_for(core.flush(), 10)
                await fake.wait_for(lambda: not fake._pending, timeout=10)
            assert core.errors == 0
            for m in env.store.messages:
                assert_clean(m)
    finally:
        bolt.removeHandler(handler)
    assert not errors, [r.getMessage() for r in errors]


@LIVE
@given(events=st.lists(SLACK_EVENT, min_size=1, max_size=10))
def test_every_slack_envelope_is_acknowledged(events: list[dict[str, Any]]) -> None:
    """The real slack-bolt app over Socket Mode: whatever the events hold, each envelope is
    acknowledged (a payload nobody can read is dropped with a log line, not redelivered)."""
    asyncio.run(_slack_scenario(events))


# -- Discord --------------------------------------------------------------------------------
DISCORD_ACTION = st.one_of(
    st.tuples(st.just("say"), st.sampled_from(["general", "thread", "dm"]),
              st.sampled_from(["ann", "bob", "cy", "otherbot"]), TEXT,
              st.fixed_dictionaries({}, optional={
                  "type": st.sampled_from([0, 19, 7, 20, 46, 999]),
                  "username": TEXT, "global_name": TEXT, "nick": TEXT,
                  "attachments": st.lists(TEXT, max_size=2),
                  "mention_bot": st.booleans(), "mention_name": TEXT})),
    st.tuples(st.just("edit"), TEXT),
    st.tuples(st.just("delete")),
    st.tuples(st.just("react"), TEXT, st.booleans()),
)


async def _discord_scenario(actions: list[tuple[Any, ...]]) -> None:
    async with FakeDiscord(heartbeat_ms=200) as fake:
        env = discord_env(fake)
        escaped: list[str] = []

        async def on_error(event: str, *args: Any, **kwargs: Any) -> None:
            escaped.append(event)  # discord.py's hook for an exception out of a handler

        env.adapter.client.on_error = on_error  # type: ignore[method-assign]
        channels = {"general": fake.general, "thread": fake.thread, "dm": fake.dm}
        last: dict[str, Any] | None = None
        async with env.core, env.adapter:
            for action in actions:
                if action[0] == "say":
                    _, where, who, content, extra = action
                    cid = channels[where]
                    msg = fake._message_payload(cid, who, content)
                    msg["type"] = extra.get("type", msg["type"])
                    msg["author"] = dict(msg["author"], **{
                        k: extra[k] for k in ("username", "global_name") if k in extra})
                    if "nick" in extra and "member" in msg:
                        msg["member"] = dict(msg["member"], nick=extra["nick"])
                    msg["attachments"] = [
                        {"id": str(i + 1), "filename": name, "size": 1, "url": "https://x/",
                         "proxy_url": "https://x/"} for i, name in
                        enumerate(extra.get("attachments", []))]
                    if extra.get("mention_bot"):
                        msg["content"] = f"<@{fake.bot_id}> " + msg["content"]
                        msg["mentions"] = [fake.bot_user]
                    if "mention_name" in extra:
                        other = dict(fake.people["cy"], global_name=extra["mention_name"])
                        msg["mentions"] = [*msg["mentions"], other]
                        msg["content"] += f" <@{other['id']}>"
                    fake.messages.setdefault(cid, []).append(msg)
                    await fake.dispatch("MESSAGE_CREATE", msg)
                    last = msg
                elif last is not None and action[0] == "edit":
                    await fake.edit(last, action[1])
                elif last is not None and action[0] == "delete":
                    await fake.delete(last)
                elif last is not None and action[0] == "react":
                    await fake.react("bob", last, action[1], added=action[2])
            # One last message in each channel; once the core has them all, it had the rest.
            for cid in channels.values():
                await fake.user_says("ann", "end of test", channel=cid)
            await until(lambda: sum(m.text == "end of test" for m in env.store.messages) == 3,
                        timeout=10)
            await asyncio.wait_for(env.core.flush(), 10)
        assert not escaped
        assert env.core.errors == 0
        for m in env.store.messages:
            assert_clean(m)
        for e in env.store.edits:
            assert_clean(e)


@LIVE
@given(actions=st.lists(DISCORD_ACTION, min_size=1, max_size=8))
def test_discord_handlers_take_any_message(actions: list[tuple[Any, ...]]) -> None:
    """The real discord.py client on FakeDiscord's gateway: messages, edits, deletions and
    reactions with any text, names and file names in any channel kind; nothing escapes the
    adapter's handlers and the core gets clean text."""
    asyncio.run(_discord_scenario(actions))


# -- JSONL ----------------------------------------------------------------------------------
RECORD = st.fixed_dictionaries({"role": anything(st.sampled_from(["user", "assistant",
                                                                  "system"]))},
                               optional={"name": anything(TEXT), "content": anything(TEXT)})
CONVERSATION = st.one_of(
    st.lists(RECORD, max_size=4),
    st.fixed_dictionaries({"messages": anything(st.lists(RECORD, max_size=4))},
                          optional={"id": anything(TEXT), "tags": anything(st.lists(TEXT))}))
LINE = st.one_of(
    CONVERSATION.map(lambda c: json.dumps(c).encode()),
    CONVERSATION.map(lambda c: json.dumps(c, ensure_ascii=False).encode("utf-8",
                                                                         "surrogatepass")),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 3000).map(lambda n: b'{"messages": ' + b"[" * n + b"]" * n + b"}"),
    st.binary(max_size=40),
    TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
).map(lambda b: b.replace(b"\n", b" "))


@FAST
@given(lines=st.lists(LINE, min_size=1, max_size=6))
def test_jsonl_reader_reports_every_bad_line_by_number(lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        loaded = read_file(path)
        good = {ex.line for ex in loaded.examples}
        assert all(err.startswith(f"{path}:") for err in loaded.errors)
        bad = {int(err.removeprefix(f"{path}:").split(":", 1)[0]) for err in loaded.errors}
        expected = set()
        for n, raw in enumerate(lines, start=1):
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError:
                expected.add(n)
                continue
            if text.strip():
                expected.add(n)
        assert not good & bad
        assert good | bad == expected
        assert [n for n, _, _ in iter_jsonl(path)] == sorted(expected)
        for ex in loaded.examples:
            for rec in ex.records:
                assert all(is_clean(v) for v in rec.values() if isinstance(v, str)), rec
            assert all(t.content is None or is_clean(t.content) for t in ex.turns)
            assert is_clean(ex.id) and all(is_clean(t) for t in ex.tags)


def test_a_message_is_clean_whatever_it_is_given() -> None:
    """The boundary itself: bot.message types clean every text field when made."""
    m = Message(ConversationKey("s\x00", "c\ud800"), "\udcffeve", "\udcffeve\x1b",
                "a\r\nb\rc\x00\ud83d\ude00\ud800\x85", message_id="1\x00",
                attachments=("f\x00.txt",), reply_to="\ud800")
    assert_clean(m)
    assert m.text == "a\nb\nc😀\ufffd" and m.author_id == "\ufffdeve"
