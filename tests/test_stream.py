"""Streaming never shows a marker, even for a moment: every text a reader could ever see is a
prefix of the final answer and holds no marker or marker start (a property test over random
token streams made of marker fragments and text); the relay coalesces while the platform is
slow and still lands on the final text."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import threading
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.config import GenerationSettings, PolicySettings
from bot.core import Core
from bot.engine.fake import ScriptedEngine
from bot.message import ConversationKey, Message
from bot.policy import Policy
from bot.render import strip_markers
from bot.stream import Relay, visible

MARKER = re.compile(r"\(\s*(silence|response)\s*\)", re.IGNORECASE)
PIECES = ["(", ")", "(silence)", "(response)", "(sil", "ence)", "(res", "ponse)", "si",
          "lence", " ", "  ", "\n", "\r", "Hi", " there", "(yes)", "(s", "e", "ok", "(",
          "( silence )", "(RESPONSE)", "re", "sp", "onse", "好的", "！", "\t", "((", "))"]


def _is_safe_prefix(shown: str, final: str) -> bool:
    return final.startswith(shown) and not MARKER.search(shown) and strip_markers(shown) == shown


@given(st.lists(st.sampled_from(PIECES), max_size=30))
@settings(max_examples=400, deadline=None)
def test_every_visible_text_is_a_prefix_of_the_final_answer_without_markers(
        tokens: list[str]) -> None:
    final = strip_markers("".join(tokens))
    raw = ""
    for tok in tokens:
        raw += tok
        shown = visible(raw)
        assert _is_safe_prefix(shown, final), (raw, shown, final)
    # what is held back at the very end (a lone "(") comes with the final post
    assert final.startswith(visible(raw))


def test_marker_starts_are_held_until_decided() -> None:
    assert visible("Hi (") == "Hi"
    assert visible("Hi (s") == "Hi"
    assert visible("Hi ( resp") == "Hi"
    assert visible("Hi (su") == "Hi (su"  # can no longer become a marker
    assert visible("Hi (silence) there") == "Hi there"
    assert visible("((silence)") == ""  # joins into "(" : still a possible marker
    assert visible("Hi there ") == "Hi there"


async def test_relay_coalesces_while_the_platform_is_slow_and_ends_on_the_final_text() -> None:
    shown: list[str] = []

    async def slow_show(text: str) -> None:
        await asyncio.sleep(0.05)
        shown.append(text)

    relay = Relay(slow_show, interval=0.0)
    loop = asyncio.get_running_loop()
    words = [f"w{i} " for i in range(200)]

    def generate() -> None:  # the inference thread: never waits for the platform
        raw = ""
        for w in words:
            raw += w
            relay.offer(visible(raw))

    await loop.run_in_executor(None, generate)
    await asyncio.sleep(0.2)  # a few more calls go out
    await relay.close()
    full = "".join(words).rstrip()
    assert 2 <= len(shown) < 20  # 200 offers, coalesced while each call was in flight
    assert all(full.startswith(t) for t in shown)
    assert all(b.startswith(a) for a, b in itertools.pairwise(shown))
    assert relay.shown == shown[-1]


async def test_relay_stops_showing_after_a_platform_failure() -> None:
    calls: list[str] = []

    async def failing(text: str) -> None:
        calls.append(text)
        raise RuntimeError("429 too many")

    relay = Relay(failing, interval=0.0)
    relay.offer("Hello")
    await asyncio.sleep(0.01)
    relay.offer("Hello world")
    await relay.close()
    assert calls == ["Hello"] and relay.failed is not None and relay.shown == ""
    assert threading.current_thread() is threading.main_thread()


# -- through the core ----------------------------------------------------------------------
class _Shown:
    """An adapter whose platform shows one editable message per answer (like Discord)."""

    platform = "test"

    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[Any] = []  # whole posts
        self.streams: list[dict[str, Any]] = []
        self.fail_after = fail_after

    async def send(self, reply: Any) -> str:
        self.sent.append(reply)
        return f"m{len(self.sent)}"

    def typing(self, key: Any) -> Any:
        return contextlib.nullcontext()

    def open_stream(self, reply: Any) -> Any:
        rec: dict[str, Any] = {"reply": reply, "updates": [], "final": None, "t_first": None,
                               "aborted": False}
        self.streams.append(rec)
        outer = self

        class S:
            async def update(self, text: str) -> None:
                if outer.fail_after is not None and len(rec["updates"]) >= outer.fail_after:
                    raise RuntimeError("edit refused")
                rec["updates"].append(text)
                rec["t_first"] = rec["t_first"] or time.perf_counter()

            async def finish(self, text: str) -> str:
                rec["final"] = text
                return "s1"

            async def abort(self, text: str | None) -> None:
                rec["aborted"] = True
                rec["final"] = text

        return S()


def _core(engine: Any, adapter: Any, **gen: Any) -> Core:
    core = Core(engine, Policy(PolicySettings(), ["assistant"]),
                generation=GenerationSettings(**{"stream_interval_ms": 50, **gen}))
    core.add_adapter(adapter)
    return core


ANSWER = "(response) Sure (sil here is a long answer with many words in it (silence) done"


async def test_core_streams_the_answer_and_posts_the_same_final_text_once() -> None:
    eng = ScriptedEngine(answer=lambda turns: ANSWER, word_delay=0.02)
    adapter = _Shown()
    async with _core(eng, adapter) as core:
        t0 = time.perf_counter()
        await core.handle(Message(ConversationKey("test", "c"), "ann", "Ann",
                                  "assistant, go", message_id="q1"))
        await core.flush()
        t_end = time.perf_counter()
    [s] = adapter.streams
    final = strip_markers(ANSWER)
    assert s["final"] == final and adapter.sent == []  # posted once, by the stream
    assert s["reply"].in_reply_to == "q1" and s["reply"].addressed
    assert len(s["updates"]) >= 2 and s["t_first"] < t_end - 0.1  # visible before the end
    assert t0 < s["t_first"]
    for text in s["updates"]:
        assert _is_safe_prefix(text, final), text
    # the same answer unstreamed
    plain = ScriptedEngine(answer=lambda turns: ANSWER)
    whole = _Shown()
    async with _core(plain, whole, stream=False) as core:
        await core.handle(Message(ConversationKey("test", "c"), "ann", "Ann",
                                  "assistant, go", message_id="q1"))
        await core.flush()
    assert [r.text for r in whole.sent] == [final] and whole.streams == []


async def test_a_failed_update_still_ends_in_exactly_one_final_answer() -> None:
    eng = ScriptedEngine(answer=lambda turns: "one two three four five six", word_delay=0.02)
    adapter = _Shown(fail_after=1)
    async with _core(eng, adapter) as core:
        await core.handle(Message(ConversationKey("test", "c"), "ann", "Ann", "assistant, go"))
        await core.flush()
    [s] = adapter.streams
    assert len(s["updates"]) == 1 and s["final"] == "one two three four five six"
    assert adapter.sent == []


async def test_an_engine_error_mid_answer_takes_the_partial_text_down() -> None:
    class Boom(ScriptedEngine):
        def respond(self, session: Any, on_text: Any = None) -> str:
            if on_text:
                on_text("half an ans")
            raise RuntimeError("model exploded")

    adapter = _Shown()
    async with _core(Boom(), adapter) as core:
        await core.handle(Message(ConversationKey("test", "c"), "ann", "Ann", "assistant, go"))
        await core.flush()
    [s] = adapter.streams
    assert s["aborted"] and s["final"].startswith("Sorry") and core.errors == 1
