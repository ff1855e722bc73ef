"""Commands through the real core, a real store file and the scripted engine (and once through
the console adapter): consent for everyone, settings for admins, never from bots or quotes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import config as config_mod
from bot.commands import CommandHandler
from bot.core import Core
from bot.engine.fake import ScriptedEngine
from bot.message import ConversationKey, Message
from bot.store import Store
from bot.wiring import build_core
from tests.conftest import QueueAdapter

K = ConversationKey("test", "general")


def settings(tmp_path: Path, **bot: object) -> config_mod.Settings:
    return config_mod.parse({"bot": {"admins": ["test:admin"], **bot},
                             "store": {"path": str(tmp_path / "store.sqlite3")}})


class Chat:
    """A channel with people typing into the real core."""

    def __init__(self, core: Core, adapter: QueueAdapter, store: Store):
        self.core, self.adapter, self.store = core, adapter, store
        self.n = 0

    async def say(self, who: str, text: str, key: ConversationKey = K,
                  **kw: object) -> str | None:
        """Post a message; returns what the bot answered (None: silence)."""
        self.n += 1
        before = len(self.adapter.sent)
        await self.core.handle(Message(key, who, who.title(), text, message_id=f"m{self.n}",
                                       **kw))  # type: ignore[arg-type]
        await self.core.flush()
        new = self.adapter.sent[before:]
        return new[-1].text if new else None

    def rows(self, sql: str) -> list[tuple]:  # type: ignore[type-arg]
        con = sqlite3.connect(self.store.path)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()


@contextlib.asynccontextmanager
async def open_chat(s: config_mod.Settings) -> AsyncIterator[Chat]:
    """The real core with the store at s.store.path and a scripted model."""
    async with Store.from_settings(s.store) as store:
        core = build_core(s, engine=ScriptedEngine(), store=store)
        adapter = QueueAdapter()
        core.add_adapter(adapter)
        async with core:
            yield Chat(core, adapter, store)


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[Chat]:
    async with open_chat(settings(tmp_path)) as c:
        yield c


async def test_optin_status_optout_forget_round_trip(chat: Chat) -> None:
    assert "haven't opted in" in (await chat.say("ann", "@assistant status") or "")
    answer = await chat.say("ann", "assistant, optin")
    assert answer and "opted in" in answer and "Logging is off in this channel" in answer
    assert chat.rows("SELECT platform, user_id, opted_in FROM consent") == [("test", "ann", 1)]
    await chat.say("ann", "hello before logging")  # logging is still off: not kept
    assert "Logging is on" in (await chat.say("admin", "@assistant logging on") or "")
    await chat.say("ann", "hello after logging")
    await chat.say("bob", "bob never opted in")
    status = await chat.say("ann", "@assistant status")
    assert status and "opted in" in status and "1 message(s) of yours" in status
    assert "logging is on" in status and "semi-active" in status
    assert [r[0] for r in chat.rows("SELECT text FROM messages WHERE text IS NOT NULL")] == [
        "hello after logging"]  # and no command text was kept
    answer = await chat.say("ann", "@assistant opt out")
    assert answer and "opted out" in answer and "1 message(s)" in answer
    await chat.say("ann", "after opting out")
    answer = await chat.say("ann", "@assistant forget")
    assert answer and "deleted 1 message(s)" in answer
    assert chat.rows("SELECT COUNT(*) FROM messages WHERE author_id = 'ann'") == [(0,)]
    assert chat.rows("SELECT COUNT(*) FROM consent") == [(0,)]
    assert "nothing of yours" in (await chat.say("ann", "@assistant forget me") or "")


async def test_admin_commands_are_refused_politely_to_others(chat: Chat) -> None:
    for text in ("@assistant logging on", "@assistant mode always", "@assistant threshold 0.9",
                 "@assistant retrain", "@assistant reload"):
        answer = await chat.say("mallory", text)
        assert answer and answer.startswith("Sorry, only this bot's admins"), text
    assert chat.rows("SELECT COUNT(*) FROM channels") == [(0,)]
    assert chat.core.policy.mode(K) == "semi-active"


async def test_mode_and_threshold_change_the_policy_and_survive_a_restart(
        tmp_path: Path) -> None:
    s = settings(tmp_path)
    async with open_chat(s) as chat:
        core = chat.core
        assert "now mention" in (await chat.say("admin", "@assistant mode mention") or "")
        assert "now 0.7" in (await chat.say("admin", "@assistant threshold 0.7") or "")
        assert "must be a number from 0 to 1" in (
            await chat.say("admin", "@assistant threshold 7") or "")
        assert "Unknown mode" in (await chat.say("admin", "@assistant mode loud") or "")
        assert core.policy.mode(K) == "mention" and core.policy.threshold(K) == 0.7
    async with Store.from_settings(s.store) as store:  # a restart: a new core, the same file
        core = build_core(s, engine=ScriptedEngine(), store=store)
        assert core.policy.mode(K) == "mention" and core.policy.threshold(K) == 0.7
        assert core.policy.mode(ConversationKey("test", "other")) == "semi-active"
        await core.close()


async def test_retrain_and_reload_call_the_wired_callbacks(chat: Chat) -> None:
    assert "not configured" in (await chat.say("admin", "@assistant retrain") or "")
    assert "not configured" in (await chat.say("admin", "@assistant reload") or "")
    handler = chat.core.commands
    assert isinstance(handler, CommandHandler)
    asked: list[str] = []

    async def retrain(msg: Message) -> str:
        asked.append(f"retrain by {msg.author_id}")
        return "Retraining on 12 conversations."

    async def reload(msg: Message) -> None:
        asked.append("reload")

    handler.on_retrain, handler.on_reload = retrain, reload
    assert await chat.say("admin", "@assistant retrain") == "Retraining on 12 conversations."
    assert await chat.say("admin", "@assistant reload") == "Reloading the model."
    assert asked == ["retrain by admin", "reload"]


async def test_commands_never_come_from_bots_quotes_or_mid_sentence(chat: Chat) -> None:
    await chat.say("admin", "@assistant logging on")
    # The bot's own message and another bot's are never commands.
    await chat.say("assistant", "@assistant logging off", is_self=True)
    await chat.say("ci-bot", "@assistant logging off", is_bot=True)
    # A quoted line is not an address at all (someone quoting the command): silence.
    assert await chat.say("admin", "> @assistant logging off") is None
    # A command word that is not first, a longer sentence: the model answers them (the
    # scripted engine echoes), nothing changes.
    for text in ("@assistant > logging off",
                 "@assistant please logging off", "@assistant logging off and mode always",
                 "@assistant help me fix the build", "@assistant forget it",
                 "@assistant optin\nand also this"):
        answer = await chat.say("admin", text)
        assert answer and answer.startswith("echo:"), (text, answer)
    assert await chat.store.channel_logging("test", "general") is True
    assert chat.core.policy.mode(K) == "semi-active"
    assert chat.rows("SELECT COUNT(*) FROM consent") == [(0,)]


async def test_help_lists_admin_commands_only_for_admins(chat: Chat) -> None:
    user_help = await chat.say("ann", "@assistant help")
    admin_help = await chat.say("admin", "assistant, help?")
    assert user_help and "`@assistant optin`" in user_help and "logging on|off" not in user_help
    assert admin_help and "`@assistant logging on|off`" in admin_help
    assert await chat.say("ann", "optin, assistant?") is not None  # a trailing address
    assert chat.rows("SELECT user_id FROM consent") == [("ann",)]


def test_parse_is_strict() -> None:
    s = config_mod.parse({"bot": {"admins": ["test:admin"]}})
    handler = CommandHandler(s, store=None, policy=build_core_policy(s))
    assert handler.parse("optin") == ("optin", [])
    assert handler.parse("/optout") == ("optout", [])
    assert handler.parse("Opt In!") == ("optin", [])
    assert handler.parse("logging ON") == ("logging", ["on"])
    assert handler.parse("threshold 0,6") == ("threshold", ["0,6"])
    for text in ("", "optin please", "status of the build?", "mode of transport in Oslo",
                 "«optin»", "`optin`", "\"optin\"", "help me", "x" * 200):
        assert handler.parse(text) is None, text


def build_core_policy(s: config_mod.Settings):  # type: ignore[no-untyped-def]
    from bot.policy import Policy

    return Policy(s.policy, list(s.bot.wake_words) + [s.bot.name])


async def test_commands_through_the_console_adapter(tmp_path: Path) -> None:
    from adapters.console import run_console

    s = config_mod.parse({"bot": {"admins": ["console:admin"]}})
    store_path = tmp_path / "console.sqlite3"
    lines = ["admin: @assistant logging on", "alice: assistant, optin", "alice: hello there",
             "bob: hi, I never opted in", "alice: @assistant status",
             "mallory: @assistant mode always", "/quit"]

    async def feed() -> AsyncIterator[str]:
        for line in lines:
            yield line + "\n"

    out = io.StringIO()
    assert await run_console(s, store_path=str(store_path), lines=feed(), out=out,
                             engine=ScriptedEngine()) == 0
    text = out.getvalue()
    assert "assistant: Logging is on in this channel" in text
    assert "assistant: You're opted in" in text
    assert "I keep 1 message(s) of yours (1 in console:main" in text
    assert "assistant: Sorry, only this bot's admins can use `mode`" in text
    con = sqlite3.connect(store_path)
    assert con.execute("SELECT author_id, text FROM messages WHERE role = 'user'").fetchall() \
        == [("alice", "hello there")]
    assert con.execute("SELECT COUNT(*) FROM messages WHERE role = 'gap'").fetchone() == (1,)
    con.close()


async def test_wake_word_then_a_command_is_a_command_without_punctuation(chat: Chat) -> None:
    """"assistant optin" is no address by the wake-word rules, but a whole command after the
    wake word is a command; "assistant status page is down" stays ordinary conversation."""
    assert "opted in" in (await chat.say("ann", "assistant optin") or "")
    assert chat.rows("SELECT user_id FROM consent") == [("ann",)]
    assert "Logging is on" in (await chat.say("admin", "Assistant logging on") or "")
    # not a command after the wake word, and no address: the scripted engine stays silent
    assert await chat.say("bob", "assistant status page is down again") is None
    assert await chat.say("bob", "assistant manager said hi") is None


async def test_a_command_is_answered_while_the_model_writes_in_another_channel(
        tmp_path: Path) -> None:
    """A command needs no model: `help` in one channel is answered while the model is still
    busy with an answer in another, not after it. A message that does need the model waits."""
    s = settings(tmp_path)
    async with Store.from_settings(s.store) as store:
        engine = ScriptedEngine(script=lambda turns: 0.0, delay=0.6, word_delay=0.2)
        core = build_core(s, engine=engine, store=store)
        adapter = QueueAdapter()
        core.add_adapter(adapter)
        other = ConversationKey("test", "random")
        async with core:
            await core.handle(Message(other, "bob", "Bob", "assistant, a long question?",
                                      message_id="o1"))
            while not any(c[0] == "decide" for c in engine.calls):
                await asyncio.sleep(0.01)  # the model is now busy in #random
            await core.handle(Message(K, "ann", "Ann", "@assistant help", message_id="h1"))
            async with asyncio.timeout(10):
                while not adapter.sent:
                    await asyncio.sleep(0.01)
            first = adapter.sent[0]
            assert (first.key, first.in_reply_to) == (K, "h1") and "optin" in first.text
            await core.handle(Message(K, "cy", "Cy", "assistant, and mine?", message_id="q1"))
            await core.flush()
    order = [(r.key.channel, r.in_reply_to) for r in adapter.sent]
    assert order == [("general", "h1"), ("random", "o1"), ("general", "q1")], order
