"""Several people address the bot at once, while the model is busy with another channel: the
real slack-bolt and discord.py clients against the fake servers on 127.0.0.1, the real core,
a real store file and the command handler. Every address gets exactly one answer, in its own
place (Slack: the thread under it; Discord: a reply to it); unaddressed chatter after the last
address is one decision; commands in a burst are each answered; past the caps the bot says
once that it is catching up."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from adapters.discord import DiscordAdapter
from adapters.slack import SlackAdapter
from bot import config as config_mod
from bot.commands import CommandHandler
from bot.core import Core, DecisionRecord
from bot.engine.fake import ScriptedEngine
from bot.message import Turn
from bot.policy import Policy
from bot.store import Store
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_slack import FakeSlack
from tests.test_discord_e2e import until

pytestmark = pytest.mark.timeout(60)

ANN, BOB, CY = "U0ANN", "U0BOB", "U0CY"
GENERAL, RANDOM = "C0GENERAL", "C0RANDOM"


def _answer(turns: Sequence[Turn]) -> str:
    """Names the message it answers and the answers it saw before: an answer made with a
    history that holds the earlier answers says so."""
    last = [t for t in turns if t.role == "user"][-1]
    seen = sum(1 for t in turns if t.role == "assistant" and t.content)
    return f"re {last.content} (after {seen})"


class World:
    def __init__(self, tmp_path: Path, **policy: Any):
        self.settings = config_mod.parse({
            "store": {"path": str(tmp_path / "s.sqlite3"), "default_logging": True},
            "policy": policy})
        self.engine = ScriptedEngine(script=lambda turns: 0.99, answer=_answer, delay=0.4)
        self.records: list[DecisionRecord] = []

    async def core(self) -> Core:
        s = self.settings
        self.store = await Store.open(s.store.path, default_logging=True)
        policy = Policy(s.policy, s.bot.wake_words)
        core = Core(self.engine, policy, bot=s.bot, store=self.store,
                    commands=CommandHandler(s, self.store, policy))
        core.listeners.append(self.records.append)
        return core

    def decisions(self, channel: str) -> list[DecisionRecord]:
        return [r for r in self.records if r.key.channel == channel]


async def _slack(tmp_path: Path, **policy: Any) -> tuple[World, FakeSlack, Core, SlackAdapter]:
    w = World(tmp_path, **policy)
    fake = FakeSlack()
    await fake.__aenter__()
    core = await w.core()
    ss = dataclasses.replace(w.settings.slack, enabled=True, api_base_url=fake.base_url)
    adapter = SlackAdapter(core, ss, w.settings.bot, bot_token=fake.bot_token,
                           app_token=fake.app_token, signing_secret=fake.signing_secret,
                           ping_interval=5.0)
    core.add_adapter(adapter)
    return w, fake, core, adapter


async def test_slack_three_people_at_once_each_get_their_own_threaded_answer(
        tmp_path: Path) -> None:
    w, fake, core, adapter = await _slack(tmp_path)
    try:
        async with core, adapter:
            await fake.wait_connected()
            await fake.user_says(RANDOM, CY, "ok assistant, what's up in random?")
            await asyncio.sleep(0.1)  # the model is now busy with #random for 0.4 s
            asks = [await fake.user_says(GENERAL, ANN, "assistant, what is 1+1?"),
                    await fake.user_says(GENERAL, BOB, "busy day huh"),
                    await fake.user_says(GENERAL, BOB, "<@U0BOT> and what is 2+2?"),
                    await fake.user_says(GENERAL, CY, "what is 3+3, assistant?"),
                    await fake.user_says(GENERAL, ANN, "lunch anyone?"),
                    await fake.user_says(GENERAL, BOB, "sure, 12:30")]
            await fake.wait_posts(4)
            await fake.wait_for(lambda: not fake._pending)
            await asyncio.wait_for(core.flush(), 10)
            posts = [p for p in fake.posts if p["channel"] == GENERAL]
            # one answer per address, each in the thread under its own message, in order,
            # each made with the answers before it in its history
            assert [(p["thread_ts"], p["text"]) for p in posts] == [
                (asks[0], "re assistant, what is 1+1? (after 0)"),
                (asks[2], "re @assistant and what is 2+2? (after 1)"),
                (asks[3], "re what is 3+3, assistant? (after 2)")]
            general = w.decisions(GENERAL)
            assert [(r.address, [m.text for m in r.messages]) for r in general] == [
                ("direct", ["assistant, what is 1+1?"]),
                ("direct", ["busy day huh", "@assistant and what is 2+2?"]),
                ("direct", ["what is 3+3, assistant?"]),
                (None, ["lunch anyone?", "sure, 12:30"])]  # the chatter: one decision
            assert adapter.duplicates == 1  # the app_mention twin of bob's message
            # the store's decision rows say how each was addressed (#random's first)
            rows = await w.store._read(
                "SELECT address, speak FROM decisions ORDER BY id")
            assert rows == [("direct", 1), ("direct", 1), ("direct", 1), ("direct", 1),
                            (None, 0)]
    finally:
        await w.store.close()
        await fake.__aexit__(None, None, None)


async def test_slack_commands_in_a_burst_each_get_an_answer(tmp_path: Path) -> None:
    w, fake, core, adapter = await _slack(tmp_path)
    try:
        async with core, adapter:
            await fake.wait_connected()
            await fake.user_says(RANDOM, CY, "assistant, busy?")
            await asyncio.sleep(0.1)
            asks = [await fake.user_says(GENERAL, ANN, "assistant optin"),
                    await fake.user_says(GENERAL, BOB, "<@U0BOT> status"),
                    await fake.user_says(GENERAL, CY, "assistant, what's new?"),
                    await fake.user_says(GENERAL, BOB, "assistant optin")]
            await fake.wait_posts(5)
            await fake.wait_for(lambda: not fake._pending)
            await asyncio.wait_for(core.flush(), 10)
            posts = [p for p in fake.posts if p["channel"] == GENERAL]
            assert [p["thread_ts"] for p in posts] == asks
            assert "opted in" in posts[0]["text"].lower()
            assert posts[2]["text"] == "re assistant, what's new? (after 0)"
            assert "opted in" in posts[3]["text"].lower()
            assert [r.reason for r in w.decisions(GENERAL)] == [
                "command", "command", "addressed", "command"]
    finally:
        await w.store.close()
        await fake.__aexit__(None, None, None)


async def test_slack_past_the_caps_it_says_once_who_should_ask_again(tmp_path: Path) -> None:
    w, fake, core, adapter = await _slack(tmp_path, max_answers_per_batch=2,
                                          max_answers_per_user=1)
    try:
        async with core, adapter:
            await fake.wait_connected()
            await fake.user_says(RANDOM, CY, "assistant, busy?")
            await asyncio.sleep(0.1)
            asks = [await fake.user_says(GENERAL, ANN, "assistant, q1?"),
                    await fake.user_says(GENERAL, ANN, "assistant, q2?"),  # Ann's second
                    await fake.user_says(GENERAL, BOB, "assistant, q3?"),
                    await fake.user_says(GENERAL, CY, "assistant, q4?")]  # past the batch cap
            await fake.wait_posts(4)
            await fake.wait_for(lambda: not fake._pending)
            await asyncio.wait_for(core.flush(), 10)
            posts = [p for p in fake.posts if p["channel"] == GENERAL]
            assert [p["text"][:8] for p in posts[:2]] == ["re assis", "re assis"]
            assert [p.get("thread_ts") for p in posts[:2]] == [asks[0], asks[2]]
            assert len(posts) == 3  # the two answers and ONE notice naming both
            assert "catching up" in posts[2]["text"] and "Ann and Cy" in posts[2]["text"]
            assert "thread_ts" not in posts[2]  # in the channel, where both will see it
    finally:
        await w.store.close()
        await fake.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def _discord(tmp_path: Path) -> AsyncIterator[tuple[World, FakeDiscord, DiscordAdapter]]:
    """The world on the real discord.py client against FakeDiscord, #random kept busy first."""
    w = World(tmp_path)
    async with FakeDiscord(heartbeat_ms=200) as fake:
        core = await w.core()
        ds = dataclasses.replace(w.settings.discord, enabled=True,
                                 api_base_url=fake.api_base_url, gateway_url=fake.gateway_url)
        adapter = DiscordAdapter(core, ds, w.settings.bot, token=fake.token,
                                 guild_ready_timeout=0.05)
        core.add_adapter(adapter)
        try:
            async with core, adapter:
                await fake.user_says("cy", "assistant, anything new?", channel=fake.random)
                await until(lambda: adapter.handled >= 1)
                await asyncio.sleep(0.1)  # the model is busy with #random
                yield w, fake, adapter
        finally:
            await w.store.close()


async def test_discord_three_people_at_once_each_get_a_reply_to_their_message(
        tmp_path: Path) -> None:
    async with _discord(tmp_path) as (w, fake, adapter):
        said = [await fake.user_says("ann", "assistant, what is 1+1?"),
                await fake.user_says("bob", "busy day"),
                await fake.user_says("bob", f"<@{fake.bot_id}> what is 2+2?",
                                     mentions=["bot"]),
                await fake.user_says("cy", "what is 3+3, assistant?"),
                await fake.user_says("ann", "lunch?"),
                await fake.user_says("bob", "yes")]
        await until(lambda: adapter.handled >= 7)
        await asyncio.wait_for(adapter.core.flush(), 10)
        await until(lambda: len(fake.posts) >= 4)
        posts = [p for p in fake.posts if p["channel_id"] == fake.general]
        assert [p["message_reference"]["message_id"] for p in posts] == [
            int(said[0]["id"]), int(said[2]["id"]), int(said[3]["id"])]
        assert [p["content"][-9:] for p in posts] == ["(after 0)", "(after 1)", "(after 2)"]
        general = w.decisions(str(fake.general))
        assert [r.address for r in general] == ["direct", "direct", "direct", None]
        assert [m.text for m in general[-1].messages] == ["lunch?", "yes"]


async def test_discord_commands_in_a_burst_each_get_a_reply(tmp_path: Path) -> None:
    async with _discord(tmp_path) as (w, fake, adapter):
        said = [await fake.user_says("ann", "assistant optin"),
                await fake.user_says("bob", "assistant status"),
                await fake.user_says("cy", "assistant, what's new?"),
                await fake.user_says("bob", "assistant optin")]
        await until(lambda: adapter.handled >= 5)
        await asyncio.wait_for(adapter.core.flush(), 10)
        await until(lambda: len(fake.posts) >= 5)
        posts = [p for p in fake.posts if p["channel_id"] == fake.general]
        assert [p["message_reference"]["message_id"] for p in posts] == [
            int(s["id"]) for s in said]
        assert "opted in" in posts[0]["content"].lower()
        assert posts[2]["content"] == "re assistant, what's new? (after 0)"
        assert [r.reason for r in w.decisions(str(fake.general))] == [
            "command", "command", "addressed", "command"]
