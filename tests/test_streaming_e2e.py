"""Answers shown as they are written, end to end: the real core with a slow word-by-word
scripted engine, the real slack-sdk / discord.py clients, and the fake servers on loopback.

For every answer: the first text shows before generation ends; what a reader could ever see
(every text the fake server held, at every moment) is a prefix of the final answer with no
marker and no start of one; the final messages are exactly what a whole post of the same
answer makes (the same split past the platform's limit); a platform call failing mid-stream
still leaves the final answer exactly once; Slack's native stream is used in threads, and
post + edit where Slack refuses it (remembered)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters import discord as discord_adapter
from adapters import slack as slack_adapter
from adapters.console import ConsoleAdapter
from adapters.discord import DiscordAdapter
from adapters.slack import MAX_POST_CHARS, SlackAdapter, slack_escape
from bot.config import GenerationSettings, Settings
from bot.core import Core
from bot.engine.fake import ScriptedEngine
from bot.message import ConversationKey, Message, Reply
from bot.policy import Policy
from bot.render import strip_markers
from bot.stream import visible
from tests.fakes import RecordingStore
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_slack import TEAM, FakeSlack

pytestmark = pytest.mark.timeout(60)

ANN, BOB = "U0ANN", "U0BOB"
GENERAL = "C0GENERAL"
GEN = GenerationSettings(stream_interval_ms=50)
MARKER = re.compile(r"\(\s*(silence|response)\s*\)", re.IGNORECASE)
# Marker fragments a model may write: held back while they could still become a marker.
ANSWER = ("(response) Sure (sil here is how I would go about it: first (silence) read the "
          "error in the Q&A doc, then the <!channel> status (s page, then ask (res me again "
          "with what you saw, and we take it from there (sil")
FINAL = strip_markers(ANSWER)


def long_answer(paragraphs: Sequence[int], word: str = "lorem-ipsum-dolor-sit-amet ") -> str:
    """Paragraphs of about the given lengths, of long words (few steps for the engine)."""
    return "\n\n".join((word * (n // len(word) + 1)).strip() for n in paragraphs)


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def assert_safe(shown: Sequence[tuple[float, str, str]], final: str, parts: list[str],
                escaped: bool = False) -> None:
    """Every text a reader could have seen: no marker, no held-back marker start, and a
    prefix of the final answer from where one of its parts starts."""
    starts, at = [], 0
    for part in parts:
        at = final.index(part, at)
        starts.append(at)
    assert shown
    for _, _, text in shown:
        text = unescape(text) if escaped else text
        if not text:
            continue  # a deleted message
        assert not MARKER.search(text), text
        assert visible(text) == text, text  # no "(s" or "(res" tail was ever up
        assert any(final.startswith(text, s) for s in starts), text


def engine(answer: str = ANSWER, word_delay: float = 0.02) -> ScriptedEngine:
    return ScriptedEngine(script=lambda turns: 0.95, answer=lambda turns: answer,
                          word_delay=word_delay)


def core_for(eng: ScriptedEngine, store: RecordingStore, settings: Settings) -> Core:
    return Core(eng, Policy(settings.policy, settings.bot.wake_words), bot=settings.bot,
                store=store, generation=GEN)


# -- Slack ------------------------------------------------------------------------------------
@dataclass
class SlackEnv:
    fake: FakeSlack
    core: Core
    adapter: SlackAdapter
    store: RecordingStore

    async def ask(self, text: str, channel: str = GENERAL, *,
                  thread_ts: str | None = None) -> tuple[str, float, float]:
        """A person asks; returns (their ts, when, when the core was done)."""
        t0 = time.monotonic()
        ts = await self.fake.user_says(channel, ANN, text, thread_ts=thread_ts)
        await self.fake.wait_for(lambda: not self.fake._pending)
        await asyncio.wait_for(self.core.flush(), 20)
        return ts, t0, time.monotonic()

    def methods(self, name: str) -> int:
        return sum(1 for m, _ in self.fake.calls if m == name)


@pytest.fixture
async def slack() -> AsyncIterator[SlackEnv]:
    async with slack_env(engine()) as env:
        yield env


@dataclasses.dataclass
class _SlackEnvCM:
    eng: ScriptedEngine

    async def __aenter__(self) -> SlackEnv:
        self.fake = FakeSlack()
        await self.fake.start()
        settings = Settings()
        self.store = RecordingStore()
        self.core = core_for(self.eng, self.store, settings)
        ss = dataclasses.replace(settings.slack, enabled=True, api_base_url=self.fake.base_url)
        self.adapter = SlackAdapter(self.core, ss, settings.bot, bot_token=self.fake.bot_token,
                                    app_token=self.fake.app_token, ping_interval=5.0)
        self.core.add_adapter(self.adapter)
        await self.adapter.start()
        await self.fake.wait_connected()
        return SlackEnv(self.fake, self.core, self.adapter, self.store)

    async def __aexit__(self, *exc: object) -> None:
        await self.core.close()
        await self.adapter.close()
        await self.fake.close()


def slack_env(eng: ScriptedEngine) -> _SlackEnvCM:
    return _SlackEnvCM(eng)


def slack_parts(text: str) -> list[str]:
    return slack_adapter._split(text)


async def test_slack_thread_answer_streams_natively_and_ends_as_the_whole_post(
        slack: SlackEnv) -> None:
    ts, t0, t_end = await slack.ask("assistant, how do I debug this?")
    [msg] = slack.fake.live()
    assert msg["stream"] and not msg["streaming"] and msg["thread_ts"] == ts
    assert msg["recipient_user_id"] == ANN and msg["recipient_team_id"] == TEAM
    assert unescape(msg["text"]) == FINAL and "<!channel>" not in msg["text"]  # no ping
    shown = [s for s in slack.fake.shown if s[1] == msg["ts"]]
    assert_safe(shown, FINAL, [FINAL], escaped=True)
    # visible early, and growing: generation takes about 0.6 s (30 words, 20 ms each)
    assert shown[0][0] - t0 < 0.5 * (t_end - t0) and len({s[2] for s in shown}) >= 2
    assert slack.methods("chat.startStream") == 1 and slack.methods("chat.stopStream") == 1
    assert slack.methods("chat.appendStream") >= 1 and slack.methods("chat.postMessage") == 0
    assert slack.store.bot_turns == [(slack.store.bot_turns[0][0], FINAL, msg["ts"])]
    assert slack.store.edits == []  # the stream's own changes never reached the core
    # The same question answered whole: the same message.
    slack.core.generation = dataclasses.replace(GEN, stream=False)
    ts2, _, _ = await slack.ask("assistant, how do I debug this?")
    whole = slack.fake.live()[-1]
    assert whole["thread_ts"] == ts2 and not whole.get("stream")
    assert whole["text"] == msg["text"] == slack_escape(FINAL)


async def test_the_fake_takes_the_stream_as_the_sdks_chat_stream_helper_sends_it() -> None:
    """slack_sdk's own helper (AsyncChatStream: buffered `markdown_text` chunks) against the
    fake: the fake reads the calls as the adapter's raw ones."""
    async with FakeSlack() as fake:
        client = AsyncWebClient(token=fake.bot_token, base_url=fake.base_url)
        streamer = await client.chat_stream(channel=GENERAL, thread_ts="1760000001.000002",
                                            recipient_user_id=ANN, recipient_team_id=TEAM,
                                            buffer_size=8)
        await streamer.append(markdown_text="hello ")  # buffered
        await streamer.append(markdown_text="there, ")  # flushed: chat.startStream
        await streamer.append(markdown_text="world")
        await streamer.stop()
        [msg] = fake.live()
        assert msg["text"] == "hello there, world" and not msg["streaming"]
        assert [m for m, _ in fake.calls] == ["chat.startStream", "chat.stopStream"]
        with pytest.raises(SlackApiError, match="message_not_in_streaming_state"):
            await client.chat_appendStream(channel=GENERAL, ts=msg["ts"], markdown_text="!")


async def test_slack_stream_past_the_limit_continues_in_the_next_message() -> None:
    # a paragraph break a little past the middle of the first message: the split falls
    # there, before the end of what was streamed, so that message is cut back to it
    answer = long_answer([2300, 3000, 3000, 600])
    async with slack_env(engine(answer, word_delay=0.004)) as slack:
        ts, t0, t_end = await slack.ask("assistant, tell me everything")
        parts = slack_parts(answer)
        assert len(parts) == 3
        live = slack.fake.live()
        assert [unescape(p["text"]) for p in live] == parts  # exactly the whole post's parts
        assert all(len(p["text"]) <= MAX_POST_CHARS and p["thread_ts"] == ts for p in live)
        assert all(p["stream"] and not p["streaming"] for p in live)
        assert_safe(slack.fake.shown, answer, parts, escaped=True)
        assert slack.fake.shown[0][0] - t0 < 0.5 * (t_end - t0)
        assert slack.store.bot_turns[0][1:] == (answer, live[0]["ts"])


async def test_slack_stream_cut_back_to_its_part_when_the_split_falls_before_its_end(
        slack: SlackEnv) -> None:
    """The stream driven by hand: shown past where the split later falls."""
    ts, _, _ = await slack.ask("nice weather")  # not addressed: silence, but seen
    key = ConversationKey("slack", GENERAL)
    answer = long_answer([2500, 2500])
    s = slack.adapter.open_stream(Reply(key, "", ts, True))
    assert s.native
    await s.update(answer[:3500])  # one message, still open
    await s.update(answer[:4500])  # outgrown: cut back at the paragraph break
    first = slack.fake.live()[0]
    assert not first["streaming"] and unescape(first["text"]) == slack_parts(answer)[0]
    assert slack.methods("chat.update") == 1
    assert await s.finish(answer) == first["ts"]
    assert [unescape(p["text"]) for p in slack.fake.live()] == slack_parts(answer)


async def test_slack_stream_that_expires_mid_answer_is_rewritten_once(
        slack: SlackEnv) -> None:
    async def expire_after_first_text() -> None:
        await slack.fake.wait_for(lambda: bool(slack.fake.posts), timeout=10)
        slack.fake.posts[0]["streaming"] = False  # Slack ends a stream after ~5 minutes

    expiry = asyncio.create_task(expire_after_first_text())
    await slack.ask("assistant, quick question")
    await expiry
    [msg] = slack.fake.live()
    assert unescape(msg["text"]) == FINAL  # rewritten with chat.update, once
    assert slack.methods("chat.update") == 1 and slack.methods("chat.postMessage") == 0
    assert slack.store.bot_turns[0][1:] == (FINAL, msg["ts"])
    assert_safe(slack.fake.shown, FINAL, [FINAL], escaped=True)


async def test_slack_stream_that_cannot_be_rewritten_is_posted_anew(slack: SlackEnv) -> None:
    slack.fake.fail_nth("chat.appendStream", 2, "internal_error")
    slack.fake.fail_nth("chat.stopStream", 1, "internal_error")
    slack.fake.fail_nth("chat.update", 1, "internal_error")
    await slack.ask("assistant, quick question")
    [msg] = slack.fake.live()
    assert unescape(msg["text"]) == FINAL and msg.get("markdown_text") == msg["text"]
    assert [bool(p.get("deleted")) for p in slack.fake.posts] == [True, False]
    assert slack.store.bot_turns[0][1:] == (FINAL, msg["ts"])
    assert slack.store.deletions == []  # the bot's own clean-up is no news to the core


@pytest.mark.parametrize("error", ["method_not_supported", "channel_type_not_supported"])
async def test_slack_refused_stream_falls_back_to_post_and_edit_and_remembers(
        slack: SlackEnv, error: str) -> None:
    slack.fake.refuse_streaming = error
    ts, t0, t_end = await slack.ask("assistant, how do I debug this?")
    [msg] = slack.fake.live()
    assert not msg.get("stream") and msg["thread_ts"] == ts and "text" in msg
    assert unescape(msg["text"]) == FINAL and slack.methods("chat.update") >= 1
    shown = [s for s in slack.fake.shown if s[1] == msg["ts"]]
    assert_safe(shown, FINAL, [FINAL], escaped=True)
    assert shown[0][0] - t0 < 0.5 * (t_end - t0)
    await slack.ask("assistant, and again?")
    assert slack.methods("chat.startStream") == 1  # refused once, not asked again here
    assert [unescape(p["text"]) for p in slack.fake.live()] == [FINAL, FINAL]
    assert slack.store.edits == []  # its own message_changed events were not news
    # a workspace-wide refusal holds in every channel; a channel's only in that channel
    assert slack.adapter._native.allowed("C0OTHER") == (error == "channel_type_not_supported")


async def test_slack_post_and_edit_failing_mid_answer_posts_the_answer_once(
        slack: SlackEnv) -> None:
    slack.fake.fail_nth("chat.update", 2, "cant_update_message")  # the relay stops here
    slack.fake.fail_nth("chat.update", 3, "cant_update_message")  # and finish cannot edit
    await slack.ask("assistant, a DM question", channel="D0ANNDM")
    live = slack.fake.live()
    assert [unescape(p["text"]) for p in live] == [FINAL]
    assert [bool(p.get("deleted")) for p in slack.fake.posts] == [True, False]
    assert slack.store.bot_turns[0][1:] == (FINAL, live[0]["ts"])
    assert slack.store.deletions == [] and slack.store.edits == []


class Boom(ScriptedEngine):
    """Writes half an answer, then fails."""

    def respond(self, session: Any, on_text: Any = None) -> str:
        session.pending = None
        if on_text is not None:
            on_text("half an ans")  # what DecisionEngine.respond would show
            time.sleep(0.3)  # long enough for the partial text to show
        raise RuntimeError("model exploded")


async def test_slack_engine_failure_replaces_the_partial_answer_by_the_apology() -> None:
    async with slack_env(Boom()) as slack:
        await slack.ask("assistant, go")
        assert any(s[2] == "half an ans" for s in slack.fake.shown)  # it was shown
        [msg] = slack.fake.live()
        assert msg["text"].startswith("Sorry, something went wrong")
        assert slack.core.errors == 1


# -- Discord ----------------------------------------------------------------------------------
@dataclass
class DiscordEnv:
    fake: FakeDiscord
    core: Core
    adapter: DiscordAdapter
    store: RecordingStore

    async def ask(self, text: str) -> tuple[dict[str, Any], float, float]:
        t0 = time.monotonic()
        before = self.adapter.handled
        said = await self.fake.user_says("ann", text)

        async def _handled() -> None:
            while self.adapter.handled <= before:
                await asyncio.sleep(0.005)
        await asyncio.wait_for(_handled(), 5)
        await asyncio.wait_for(self.core.flush(), 20)
        return said, t0, time.monotonic()


@dataclasses.dataclass
class _DiscordEnvCM:
    eng: ScriptedEngine

    async def __aenter__(self) -> DiscordEnv:
        self.fake = FakeDiscord(heartbeat_ms=200)
        await self.fake.start()
        settings = Settings()
        self.store = RecordingStore()
        self.core = core_for(self.eng, self.store, settings)
        ds = dataclasses.replace(settings.discord, enabled=True,
                                 api_base_url=self.fake.api_base_url,
                                 gateway_url=self.fake.gateway_url)
        self.adapter = DiscordAdapter(self.core, ds, settings.bot, token=self.fake.token,
                                      guild_ready_timeout=0.05)
        self.core.add_adapter(self.adapter)
        await self.adapter.start()
        return DiscordEnv(self.fake, self.core, self.adapter, self.store)

    async def __aexit__(self, *exc: object) -> None:
        await self.core.close()
        await self.adapter.close()
        await self.fake.close()


def discord_parts(text: str) -> list[str]:
    return discord_adapter._split(text)


async def test_discord_answer_is_posted_then_edited_and_ends_as_the_whole_post() -> None:
    async with _DiscordEnvCM(engine()) as dc:
        said, t0, t_end = await dc.ask("assistant, how do I debug this?")
        [msg] = dc.fake.live()
        assert msg["content"] == FINAL
        assert msg["message_reference"]["message_id"] == int(said["id"])  # a reply
        assert msg["allowed_mentions"] == {"parse": [], "replied_user": True}
        shown = [s for s in dc.fake.shown if s[1] == msg["id"]]
        assert_safe(shown, FINAL, [FINAL])
        assert shown[0][0] - t0 < 0.5 * (t_end - t0) and len(shown) >= 2
        assert dc.store.bot_turns[0][1:] == (FINAL, msg["id"])
        assert dc.store.edits == []
        dc.core.generation = dataclasses.replace(GEN, stream=False)
        await dc.ask("assistant, how do I debug this?")
        assert dc.fake.live()[-1]["content"] == FINAL  # the same, posted whole


async def test_discord_answer_past_2000_characters_continues_in_a_new_message() -> None:
    answer = long_answer([1200, 1500, 1800])
    async with _DiscordEnvCM(engine(answer, word_delay=0.004)) as dc:
        said, _, _ = await dc.ask("assistant, tell me everything")
        live = dc.fake.live()
        assert [p["content"] for p in live] == discord_parts(answer) and len(live) == 3
        assert live[0]["message_reference"]["message_id"] == int(said["id"])
        assert all("message_reference" not in p for p in live[1:])
        assert_safe(dc.fake.shown, answer, discord_parts(answer))


async def test_discord_edit_failing_mid_answer_leaves_exactly_one_final_answer() -> None:
    async with _DiscordEnvCM(engine()) as dc:
        route = "PATCH /channels/{id}/messages/{id}"
        dc.fake.fail_nth(route, 2)  # the relay stops updating
        dc.fake.fail_nth(route, 3, status=404)  # finish cannot edit either: posted anew
        said, _, _ = await dc.ask("assistant, quick question")
        [msg] = dc.fake.live()
        assert msg["content"] == FINAL
        assert msg["message_reference"]["message_id"] == int(said["id"])
        assert [bool(p.get("deleted")) for p in dc.fake.posts] == [True, False]
        assert dc.store.bot_turns[0][1:] == (FINAL, msg["id"])
        assert dc.store.deletions == []  # its own clean-up was no news to the core


async def test_discord_engine_failure_replaces_the_partial_answer_by_the_apology() -> None:
    async with _DiscordEnvCM(Boom()) as dc:
        await dc.ask("assistant, go")
        assert any(s[2] == "half an ans" for s in dc.fake.shown)
        [msg] = dc.fake.live()
        assert msg["content"].startswith("Sorry, something went wrong")


# -- the console ------------------------------------------------------------------------------
class _Writes(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[float, str]] = []

    def write(self, s: str) -> int:
        self.writes.append((time.monotonic(), s))
        return super().write(s)


async def test_console_prints_the_answer_as_it_comes() -> None:
    out = _Writes()
    adapter = ConsoleAdapter(out)
    key = ConversationKey("console", "main")
    async with core_for(engine(), RecordingStore(), Settings()) as core:
        core.add_adapter(adapter)
        t0 = time.monotonic()
        await core.handle(Message(key, "ann", "ann", "assistant, go", message_id="c1"))
        await core.flush()
        t_end = time.monotonic()
    assert out.getvalue() == f"assistant: {FINAL}\n"  # one line, the final answer
    pieces = [w for w in out.writes if w[1]]
    assert len(pieces) >= 3 and pieces[1][0] - t0 < 0.5 * (t_end - t0)
    so_far = ""
    for _, piece in pieces[1:]:
        so_far += piece
        assert not MARKER.search(so_far) and FINAL.startswith(so_far.rstrip("\n"))
    assert [r.text for r in adapter.sent] == [FINAL]
