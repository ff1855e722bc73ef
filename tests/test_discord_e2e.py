"""The real discord.py client against FakeDiscord on 127.0.0.1 (REST + a zlib-stream gateway),
driving the real core with the scripted engine."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import discord
import pytest

from adapters.common import AdapterError, utf16_len
from adapters.discord import INTENT_HELP, MAX_POST_UNITS, DiscordAdapter
from bot.config import Settings
from bot.core import Core, DecisionRecord
from bot.engine.fake import ScriptedEngine
from bot.message import ConversationKey, Deletion, Edit, Reaction
from bot.policy import Policy
from tests.fakes import RecordingCommands, RecordingStore, chime_on_429, marked_echo
from tests.fakes.fake_discord import FakeDiscord

pytestmark = pytest.mark.timeout(60)
DEFAULT_BASE = "https://discord.com/api/v10"


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    async def _poll() -> None:
        while not pred():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(_poll(), timeout)


@dataclass
class Env:
    fake: FakeDiscord
    core: Core
    adapter: DiscordAdapter
    engine: ScriptedEngine
    store: RecordingStore
    records: list[DecisionRecord]

    async def settle(self, handled: int) -> None:
        """Until the adapter handed `handled` events to the core and the core is done."""
        await until(lambda: self.adapter.handled >= handled)
        await asyncio.wait_for(self.core.flush(), 5)

    def key(self, channel: int, thread: int | None = None) -> ConversationKey:
        return ConversationKey("discord", str(channel), str(thread) if thread else None)


def make_env(fake: FakeDiscord, *, commands: Any = None, **discord_kw: Any) -> Env:
    settings = Settings()
    engine = ScriptedEngine(script=chime_on_429, answer=marked_echo)
    store = RecordingStore()
    core = Core(engine, Policy(settings.policy, settings.bot.wake_words), bot=settings.bot,
                store=store, commands=commands)
    records: list[DecisionRecord] = []
    core.listeners.append(records.append)
    conf = {"api_base_url": fake.api_base_url, "gateway_url": fake.gateway_url, **discord_kw}
    ds = dataclasses.replace(settings.discord, enabled=True, **conf)
    adapter = DiscordAdapter(core, ds, settings.bot, token=fake.token, guild_ready_timeout=0.05)
    core.add_adapter(adapter)
    return Env(fake, core, adapter, engine, store, records)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with FakeDiscord(heartbeat_ms=200) as fake:
        e = make_env(fake)
        async with e.core, e.adapter:
            yield e
    assert discord.http.Route.BASE == DEFAULT_BASE  # the library's globals were put back


async def test_address_gets_a_reply_to_the_message_without_markers(env: Env) -> None:
    said = await env.fake.user_says("ann", "assistant, what is 2+2?")
    posts = await env.fake.wait_posts(1)
    p = posts[0]
    assert p["channel_id"] == env.fake.general and p["content"] == "echo: assistant, what is 2+2?"
    assert p["message_reference"]["message_id"] == int(said["id"])
    assert p["allowed_mentions"] == {"parse": [], "replied_user": True}  # pings only Ann
    await env.settle(1)
    assert len(env.fake.posts) == 1  # its own echoed message was not answered
    assert env.store.bot_turns[0][2] == env.fake.messages[env.fake.general][-1]["id"]
    # The real protocol was spoken: zlib-stream transport, heartbeats acknowledged.
    assert env.fake.compressed_connections == 1
    await until(lambda: env.fake.heartbeats >= 2)
    assert env.fake.typing == [env.fake.general]  # typing shown while answering


async def test_mentions_of_the_bot_and_its_role_address_it(env: Env) -> None:
    f = env.fake
    # One at a time: the core would take a burst as one batch and answer it once.
    await f.user_says("ann", f"<@{f.bot_id}> status?", mentions=["bot"])
    await env.settle(1)
    await f.user_says("bob", f"<@&{f.bot_role}> are you there?", mention_roles=[f.bot_role])
    await env.settle(2)
    await f.user_says("ann", f"<@&{f.mods_role}> deploy?", mention_roles=[f.mods_role])
    await env.settle(3)
    assert [p["content"] for p in f.posts] == ["echo: @assistant status?",
                                               "echo: @assistant are you there?"]
    assert env.records[-1].messages[0].text == "@mods deploy?" and not env.records[-1].addressed


async def test_silence_posts_nothing_and_a_chime_in_replies_quietly(env: Env) -> None:
    await env.fake.user_says("ann", "anyone know why the deploy failed?")
    await env.settle(1)
    assert env.fake.posts == [] and env.records[-1].reason == "model"
    said = await env.fake.user_says("bob", "we got a 429 from the API")
    posts = await env.fake.wait_posts(1)
    assert posts[0]["content"] == "echo: we got a 429 from the API"
    assert posts[0]["message_reference"]["message_id"] == int(said["id"])
    # No ping for a remark (Discord's default for an absent replied_user is false).
    assert posts[0]["allowed_mentions"] == {"parse": []}


async def test_other_bots_are_not_answered(env: Env) -> None:
    await env.fake.user_says("otherbot", "assistant, build 429 finished")
    await env.settle(1)
    assert env.fake.posts == []
    assert env.records == []  # context only: no decision was even asked for


async def test_thread_is_its_own_conversation_with_its_starter_as_context(env: Env) -> None:
    f = env.fake
    said = await f.user_says("bob", "assistant, does it cover 429?", channel=f.thread)
    posts = await f.wait_posts(1)
    assert posts[0]["channel_id"] == f.thread
    assert posts[0]["message_reference"]["message_id"] == int(said["id"])
    await env.settle(1)
    session = env.core.sessions.peek(env.key(f.general, f.thread))
    assert session is not None
    assert [(t.role, t.name, t.content) for t in session.turns[:3]] == [
        ("user", "Ann", "release checklist thread"), ("assistant", "assistant", None),
        ("user", "Bobby Tables", "assistant, does it cover 429?")]
    assert env.core.sessions.peek(env.key(f.general)) is None  # the channel is separate


async def test_dm_is_answered_without_address(env: Env) -> None:
    await env.fake.user_says("ann", "how many seconds in a day?", channel=env.fake.dm)
    posts = await env.fake.wait_posts(1)
    assert posts[0]["channel_id"] == env.fake.dm
    await env.settle(1)
    assert env.records[-1].messages[0].is_dm and env.records[-1].mode == "always"


@pytest.mark.parametrize("how", ["server-close", "op7-reconnect"])
async def test_disconnect_mid_conversation_resumes_without_duplicates(env: Env,
                                                                      how: str) -> None:
    f = env.fake
    await f.user_says("ann", "assistant, first?")
    await f.wait_posts(1)
    await env.settle(1)
    f.replay_extra = 50  # the resumed session also replays what the client already had
    if how == "server-close":
        await f.drop(4000)
    else:
        await f.request_reconnect()
    # Said while the bot is away: the gateway keeps it for the RESUME.
    await f.user_says("bob", "assistant, second?")
    await f.wait_posts(2, timeout=10)
    await until(lambda: f.resumes == 1)
    await env.settle(2)
    await f.user_says("ann", "assistant, third?")
    await f.wait_posts(3)
    await env.settle(3)
    assert [p["content"] for p in f.posts] == [
        "echo: assistant, first?", "echo: assistant, second?", "echo: assistant, third?"]
    assert f.identifies == 1 and f.connections == 2
    assert env.adapter.duplicates >= 1 and env.adapter.reconnects == 1


async def test_huge_message_and_odd_unicode(env: Env) -> None:
    env.core.runtime = dataclasses.replace(env.core.runtime, max_message_chars=100_000)
    huge = "assistant, " + ("wörd 😀 " * 4300).strip()
    assert len(huge) > 30_000
    said = await env.fake.user_says("ann", huge)
    await env.settle(1)
    posts = env.fake.posts
    assert len(posts) > 10 and all(utf16_len(p["content"]) <= MAX_POST_UNITS for p in posts)
    assert posts[0]["message_reference"]["message_id"] == int(said["id"])
    assert all("message_reference" not in p for p in posts[1:])
    assert " ".join(p["content"] for p in posts) == "echo: " + huge
    odd = "assistant, مرحبا\u200b 👩\u200d💻 e\u0301 \u202edlrow\x00 @everyone"
    await env.fake.user_says("bob", odd)
    await env.settle(2)
    assert env.fake.posts[-1]["content"] == "echo: " + odd.replace("\x00", "")
    assert env.fake.posts[-1]["allowed_mentions"]["parse"] == []  # @everyone pings nobody


async def test_edits_deletions_and_reactions_reach_the_core(env: Env) -> None:
    f = env.fake
    said = await f.user_says("ann", "assistant, what is 429?")
    await f.wait_posts(1)
    await env.settle(1)
    bot_msg = f.messages[f.general][-1]
    await f.edit(said, "assistant, what is 503?")
    await f.react("bob", bot_msg, "👍")
    await f.react("bob", said, "👀")  # on Ann's message: not feedback
    await f.react("bob", bot_msg, "👍", added=False)
    await f.delete(said)
    key = env.key(f.general)
    await until(lambda: len(env.store.deletions) == 1)
    assert env.store.edits == [Edit(key, said["id"], said["author"]["id"],
                                    "assistant, what is 503?", ts=env.store.edits[0].ts)]
    assert [(r.key, r.message_id, r.emoji, r.added) for r in env.store.reactions] == [
        (key, bot_msg["id"], "👍", True), (key, bot_msg["id"], "👍", False)]
    assert env.store.deletions == [Deletion(key, said["id"], ts=env.store.deletions[0].ts)]
    assert all(isinstance(r, Reaction) for r in env.store.reactions)


async def test_rate_limit_is_honoured_by_the_library(env: Env) -> None:
    env.fake.rate_limit["POST /channels/{id}/messages"] = 1
    await env.fake.user_says("ann", "assistant, ping?")
    await env.fake.wait_posts(1)
    calls = [c for c in env.fake.rest_calls if c.startswith("POST /channels/") and
             c.endswith("/messages")]
    assert len(calls) == 2 and len(env.fake.posts) == 1  # one 429, then the retry


async def test_refused_message_content_intent_names_the_portal_switch() -> None:
    async with FakeDiscord(refuse_intents=True) as fake:
        e = make_env(fake)
        async with e.core:
            with pytest.raises(AdapterError) as err:
                await e.adapter.start(timeout=10)
    assert str(err.value) == INTENT_HELP and "Message Content Intent" in INTENT_HELP
    assert fake.close_codes == [4014]
    assert discord.http.Route.BASE == DEFAULT_BASE


async def test_bad_token_names_the_variable() -> None:
    async with FakeDiscord() as fake:
        e = make_env(fake)
        e.adapter._token = "wrong"
        async with e.core:
            with pytest.raises(AdapterError, match="DISCORD_TOKEN"):
                await e.adapter.start(timeout=10)


async def test_gateway_comes_from_the_proxied_api_when_not_set() -> None:
    async with FakeDiscord() as fake:
        e = make_env(fake, gateway_url="")
        async with e.core, e.adapter:
            assert "GET /gateway/bot" in fake.rest_calls and fake.connections == 1


async def test_slash_commands_reach_the_commands() -> None:
    async with FakeDiscord() as fake:
        commands = RecordingCommands()
        e = make_env(fake, commands=commands, slash_commands=True)
        async with e.core, e.adapter:
            names = sorted(c["name"] for c in fake.synced_commands)
            assert names == ["chimein", "forget", "help", "optin", "optout", "status"]
            await fake.slash("ann", "optin")
            await fake.slash("bob", "chimein", [{"name": "command", "type": 3,
                                                 "value": "logging on"}])
            await fake.wait_for(lambda: len(fake.callbacks) == 2)
    assert [(m.author_name, t) for m, t in commands.calls] == [("Ann", "optin"),
                                                              ("Bobby Tables", "logging on")]
    first, second = fake.callbacks
    assert first["type"] == 4 and first["data"]["content"] == "You're opted in."
    assert first["data"]["flags"] == 64  # ephemeral: only the asker sees it
    assert second["data"]["content"] == "Unknown command 'logging on'; try /help."
    assert commands.calls[0][0].key == ConversationKey("discord", str(fake.general))


async def test_slash_command_waits_its_turn_and_a_slow_one_is_deferred(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Slash commands go through the core's queue, in the conversation's order; one not
    answered in time is deferred and answered as a follow-up, still only to the asker. A
    command that fails says so."""

    class SlowCommands(RecordingCommands):
        async def handle(self, msg: Any, text: str, announce: Any = None) -> str | None:
            if text == "forget":
                raise RuntimeError("disk on fire")
            if text == "optin":
                await asyncio.sleep(0.3)
            return await super().handle(msg, text, announce)

    monkeypatch.setattr("adapters.discord.INTERACTION_DEADLINE", 0.1)
    async with FakeDiscord() as fake:
        commands = SlowCommands()
        e = make_env(fake, commands=commands, slash_commands=True)
        async with e.core, e.adapter:
            await fake.slash("ann", "optin")
            await fake.slash("ann", "forget")  # behind optin in #general's queue
            await fake.wait_for(lambda: len(fake.followups) == 2)
    assert [c["type"] for c in fake.callbacks] == [5, 5]  # both deferred ("thinking…")
    assert all(c["data"]["flags"] == 64 for c in fake.callbacks)  # ephemeral
    assert [f["content"] for f in fake.followups] == [
        "You're opted in.", "Sorry, that command failed on my side."]
    assert all(f["flags"] == 64 for f in fake.followups)  # only the asker sees them
