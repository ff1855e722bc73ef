"""Concurrency where the backend has it, and no channel stalled behind another's recompute.

- The OpenAI-compatible engine declares max_concurrency: the core decides and answers
  different conversations at once (requests overlap at the fake server), each conversation's
  own messages still in order; 429/5xx are retried with backoff, other errors are not.
- An in-process model keeps one inference thread; a cold cache is rebuilt in chunks, and
  another conversation's decision runs between two chunks. Chunked or not, p_silence is
  the same.
Timings are the benchmark's job (benchmarks/concurrency.py): these tests assert behaviour.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from bot.config import GenerationSettings, OpenAISettings, PolicySettings, RuntimeSettings
from bot.core import Core, DecisionRecord
from bot.engine.base import EngineError
from bot.engine.openai_backend import OpenAIEngine
from bot.engine.transformers_backend import TransformersEngine
from bot.message import ConversationKey, Message, user
from bot.policy import Policy
from bot.render import with_silences
from bot.sessions import Session
from tests.conftest import QueueAdapter, chimein_run, sigterm
from tests.fakes.fake_openai import FakeCompletions
from tests.fakes.fake_slack import FakeSlack

GEN = GenerationSettings(max_new_tokens=8, temperature=0.0)


def openai_engine(tok: Any, fake: FakeCompletions, **api: Any) -> OpenAIEngine:
    eng = OpenAIEngine(tok, OpenAISettings(base_url=fake.base_url, model="fake",
                                           timeout_seconds=10, **api), generation=GEN)
    eng.server.retry_base = 0.01  # fast retries in tests
    return eng


def core_for(engine: Any, **runtime: Any) -> tuple[Core, QueueAdapter, list[DecisionRecord]]:
    core = Core(engine, Policy(PolicySettings(), ["assistant"]),
                runtime=RuntimeSettings(**runtime))
    adapter = QueueAdapter()
    core.add_adapter(adapter)
    records: list[DecisionRecord] = []
    core.listeners.append(records.append)
    return core, adapter, records


async def test_openai_engine_decides_different_conversations_at_once(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    with FakeCompletions(delay=0.3) as fake:
        core, _, records = core_for(openai_engine(tiny_tokenizer, fake, max_concurrency=10))
        async with core:
            for i in range(10):
                await core.handle(Message(ConversationKey("test", f"c{i}"), "ann", "Ann",
                                          f"hello {i}", message_id=f"m{i}"))
            await core.flush()
    assert len(records) == 10 and all(r.text is None for r in records)  # all silent
    assert fake.max_in_flight >= 5  # overlapping: not one request after another


async def test_openai_concurrency_keeps_each_conversations_order(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    with FakeCompletions(delay=0.2, answer="sure") as fake:
        core, adapter, _ = core_for(openai_engine(tiny_tokenizer, fake, max_concurrency=4))
        a, b = ConversationKey("test", "a"), ConversationKey("test", "b")
        async with core:
            await core.handle(Message(a, "ann", "Ann", "assistant, first?", message_id="a1"))
            await core.handle(Message(b, "bob", "Bob", "assistant, other?", message_id="b1"))
            await asyncio.sleep(0.05)  # a1 and b1 in flight; a2 and a3 wait for a1
            await core.handle(Message(a, "ann", "Ann", "assistant, second?", message_id="a2"))
            await core.handle(Message(a, "cy", "Cy", "assistant, third?", message_id="a3"))
            await core.flush()
    assert [r.in_reply_to for r in adapter.sent if r.key == a] == ["a1", "a2", "a3"]
    assert [r.in_reply_to for r in adapter.sent if r.key == b] == ["b1"]
    assert fake.max_in_flight >= 2


def test_openai_retries_429_and_5xx_with_backoff_but_not_400(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    s = Session(ConversationKey("test", "r"))
    with FakeCompletions(delay=0.0, errors=[503, 429], retry_after="0") as fake:
        eng = openai_engine(tiny_tokenizer, fake, max_retries=3)
        d = eng.decide(s, [user("Ann", "hi")], threshold=0.5)
        assert d.p_silence > 0.9 and len(fake.requests) == 3  # two refusals, then the answer
    with FakeCompletions(delay=0.0, errors=[500] * 5) as fake:
        eng = openai_engine(tiny_tokenizer, fake, max_retries=2)
        with pytest.raises(EngineError, match="answered 500 3 times"):
            eng.decide(Session(s.key), [user("Ann", "hi")], threshold=0.5)
        assert len(fake.requests) == 3
    with FakeCompletions(delay=0.0, errors=[400]) as fake:
        eng = openai_engine(tiny_tokenizer, fake, max_retries=3)
        with pytest.raises(EngineError, match="answered 400"):
            eng.decide(Session(s.key), [user("Ann", "hi")], threshold=0.5)
        assert len(fake.requests) == 1  # a client error is not retried


def _long_history(n: int) -> list[Any]:
    return [user(f"P{i % 5}", f"message number {i} about the deploy and the build")
            for i in range(n)]


def test_chunked_rebuild_gives_the_same_p_silence(tiny_lm, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    eng = TransformersEngine(tiny_lm, tiny_tokenizer, generation=GEN, max_context_tokens=8192)
    history = with_silences(_long_history(40))
    new = [user("Ann", "so is the build green now?")]
    whole = Session(ConversationKey("test", "w"), turns=list(history))
    d_whole = eng.decide(whole, new, threshold=0.5)
    chunked = Session(ConversationKey("test", "c"), turns=list(history))
    chunks = 0
    while eng.prefill(chunked, new, 64):
        chunks += 1
    d_chunked = eng.decide(chunked, new, threshold=0.5)
    assert chunks >= 5  # hundreds of tokens, 64 at a time
    assert d_chunked.fed_tokens <= 64 + 40 < d_whole.fed_tokens
    assert math.isclose(d_chunked.p_silence, d_whole.p_silence, rel_tol=1e-4)
    assert chunked.ids == whole.ids


async def test_another_conversation_decides_between_rebuild_chunks(tiny_lm, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    eng = TransformersEngine(tiny_lm, tiny_tokenizer, generation=GEN, max_context_tokens=8192)
    order: list[str] = []
    prefill, decide = eng.prefill, eng.decide

    def spy_prefill(session: Session, new_turns: Any, budget: int) -> bool:
        more = prefill(session, new_turns, budget)
        order.append(f"prefill:{session.key.channel}:{int(more)}")
        return more

    def spy_decide(session: Session, new_turns: Any, **kw: Any) -> Any:
        order.append(f"decide:{session.key.channel}")
        return decide(session, new_turns, **kw)

    eng.prefill, eng.decide = spy_prefill, spy_decide  # type: ignore[method-assign]
    core, _, _ = core_for(eng, recompute_chunk_tokens=32)
    cold, warm = ConversationKey("test", "cold"), ConversationKey("test", "warm")
    core.sessions.get(cold).turns = with_silences(_long_history(30))  # no cache yet
    async with core:
        await core.handle(Message(cold, "ann", "Ann", "and now?", message_id="c1"))
        await asyncio.sleep(0)  # cold has the model and starts rebuilding
        await core.handle(Message(warm, "bob", "Bob", "hi", message_id="w1"))
        await core.flush()
    first_warm = order.index("decide:warm")
    assert "prefill:cold:1" in order[:first_warm]  # the rebuild had begun...
    assert order.index("decide:cold") > first_warm  # ...and warm did not wait for its end


@pytest.mark.slow
async def test_chimein_run_with_the_openai_backend_answers_ten_channels_at_once(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    """The real command line, `backend = "openai"`, against the fake Slack and a fake
    completions server that takes 300 ms a request: ten people asking in ten channels at once
    are all answered, in their own channels, with the requests in flight together (the
    default max_concurrency), not one after another."""
    with FakeCompletions(delay=0.3, answer="429 is Too Many Requests") as fake:
        async with FakeSlack() as slack:
            cfg = tmp_path / "config.toml"
            cfg.write_text(
                f'[model]\npath = "{tiny_model_dir}"\nbackend = "openai"\n'
                f'[openai]\nbase_url = "{fake.base_url}"\nmodel = "fake"\n'
                f'[generation]\nmax_new_tokens = 8\n'
                f'[store]\npath = "{tmp_path / "store.sqlite3"}"\n'
                f'[slack]\nenabled = true\napi_base_url = "{slack.base_url}"\n',
                encoding="utf-8")
            secrets = {"SLACK_BOT_TOKEN": slack.bot_token, "SLACK_APP_TOKEN": slack.app_token}
            async with chimein_run(cfg, secrets) as proc:
                await slack.wait_connected(timeout=90)
                asked = {}
                for i in range(10):
                    channel = f"C0CHAN{i}"
                    asked[channel] = await slack.user_says(channel, f"U0P{i}",
                                                           f"assistant, what is 429? ({i})")
                posts = await slack.wait_posts(10, timeout=60)
                log = await sigterm(proc)
    assert proc.returncode == 0, log
    answers = {p["channel"]: p for p in posts}
    assert sorted(answers) == sorted(asked)  # one answer in each channel
    for channel, p in answers.items():
        assert p["text"] == "429 is Too Many Requests"
        assert p.get("thread_ts") in (None, asked[channel])  # under its question, if threaded
    assert fake.max_in_flight >= 5, fake.max_in_flight  # served together, not in turn
