"""Many channels at once: concurrency with a server backend, no stall behind a recompute, and
the cost per message of a long conversation for each `model.trim_to`.

Prints JSON. Run by hand; compare ratios within one run, never absolute times across machines.

    python benchmarks/concurrency.py              # all three parts
    python benchmarks/concurrency.py --part openai|stall|trim [--model DIR]

- openai: 10 conversations, one message each, through the real core and OpenAIEngine against
  a built-in fake OpenAI server that adds --delay s (0.3) to every request (no model runs
  there). Wall time vs one request, at max_concurrency 1 (serial), 10, and the default.
- stall: a local model (built here, or --model); conversation "cold" has a long history and
  no cache; "warm" sends a message every few ms. warm's decision latency while cold rebuilds,
  vs its median alone, with the rebuild in chunks (runtime.recompute_chunk_tokens) and whole.
- trim: one long conversation through the engine at a small max_context_tokens, for several
  trim_to values: overflows, tokens fed and milliseconds per message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.cpuinfo import cpu


def _model(args: argparse.Namespace, tmp: Path) -> str:
    if args.model:
        return str(args.model)
    from training.tiny import save_tiny

    corpus = [f"user{i % 7}: message {i} about deploys, builds and lunch 今天" for i in
              range(2000)]
    return str(save_tiny(tmp / "m", corpus, vocab_size=2000, hidden=args.hidden,
                         layers=args.layers, heads=4))


class _Sink:
    """An adapter that takes the answers and posts nothing."""

    platform = "b"

    async def send(self, reply: Any) -> str:
        return "posted"

    def typing(self, key: Any) -> Any:
        import contextlib
        return contextlib.nullcontext()


async def _openai(args: argparse.Namespace, tok: Any) -> dict[str, Any]:
    from bot.config import GenerationSettings, OpenAISettings, PolicySettings
    from bot.core import Core
    from bot.engine.openai_backend import OpenAIEngine
    from bot.message import ConversationKey, Message
    from bot.policy import Policy
    from tests.fakes.fake_openai import FakeCompletions

    async def run(n_conv: int, conc: int, text: str, fake: FakeCompletions) -> float:
        eng = OpenAIEngine(tok, OpenAISettings(base_url=fake.base_url, model="fake",
                                               max_concurrency=conc),
                           generation=GenerationSettings(max_new_tokens=8))
        core = Core(eng, Policy(PolicySettings(), ["assistant"]))
        core.add_adapter(_Sink())
        async with core:
            # one warm-up request so connection set-up is not counted
            await core.handle(Message(ConversationKey("b", "warmup"), "x", "X", "hi"))
            await core.flush()
            t0 = time.perf_counter()
            for i in range(n_conv):
                await core.handle(Message(ConversationKey("b", f"c{i}"), "ann", "Ann", text))
            await core.flush()
            return time.perf_counter() - t0

    out: dict[str, Any] = {"delay_s": args.delay}
    with FakeCompletions(delay=args.delay) as fake:
        for kind, text in (("silent", "hello there"), ("addressed", "assistant, hi?")):
            one = await run(1, 1, text, fake)  # silent: 1 request; addressed: decide + answer
            out[f"one_{kind}_message_s"] = round(one, 3)
            for conc in sorted({1, 10, OpenAISettings().max_concurrency}):
                fake.max_in_flight = 0
                wall = await run(10, conc, text, fake)
                out[f"10_conversations_{kind}_concurrency{conc}"] = {
                    "wall_s": round(wall, 3), "x_one_message": round(wall / one, 2),
                    "max_in_flight": fake.max_in_flight}
    return out


async def _stall(args: argparse.Namespace, path: str) -> dict[str, Any]:
    from bot.config import ModelSettings
    from bot.engine.transformers_backend import load_model
    from bot.message import user
    from bot.render import with_silences

    lm, tok, _ = load_model(ModelSettings(path=path))
    history = with_silences([user(f"P{i % 6}", f"message {i}: the deploy of build {i} is "
                                  "waiting on review, any news from the release team?")
                             for i in range(args.history_messages)])
    out: dict[str, Any] = {}
    for label, chunk in (("chunked", args.chunk), ("whole", None)):
        out[label] = await _stall_once(lm, tok, history, chunk)
    return out


async def _stall_once(lm: Any, tok: Any, history: list[Any],
                      chunk: int | None) -> dict[str, Any]:
    """chunk None: the rebuild as it was before chunking, one forward inside the decision."""
    from bot.config import GenerationSettings, PolicySettings, RuntimeSettings
    from bot.core import Core, DecisionRecord
    from bot.engine.transformers_backend import TransformersEngine
    from bot.message import ConversationKey, Message
    from bot.policy import Policy

    eng = TransformersEngine(lm, tok, generation=GenerationSettings(max_new_tokens=8),
                             max_context_tokens=32768)
    # threshold 0: the random model never speaks, so a latency is a decision, never an answer
    core = Core(eng, Policy(PolicySettings(threshold=0.0), ["assistant"]),
                runtime=RuntimeSettings(recompute_chunk_tokens=chunk or 256))
    if chunk is None:
        async def whole(*_: Any) -> None:
            return None  # no chunks ahead: decide() feeds the whole history at once

        core._prefill = whole  # type: ignore[method-assign]
    core.add_adapter(_Sink())
    decided: dict[str, float] = {}  # message id -> when its decision was recorded

    def on(r: DecisionRecord) -> None:
        for m in r.messages:
            decided[m.message_id or ""] = time.perf_counter()

    core.listeners.append(on)
    # The other channels: eight warm conversations taking turns, so that none of their
    # histories grows much while the cold one rebuilds (a decision costs more on a longer
    # history: one warm conversation alone went from 16 to 48 ms over the run, which would
    # hide the stall). Their median alone is taken before and after the rebuild.
    warm = [ConversationKey("b", f"warm{w}") for w in range(8)]
    cold = ConversationKey("b", "cold")

    async def ask(i: int) -> float:
        """One message to a warm conversation, from arrival to its decision (waiting
        included)."""
        mid = f"w{i}"
        t0 = time.perf_counter()
        await core.handle(Message(warm[i % len(warm)], "bob", "Bob", f"short one {i}",
                                  message_id=mid))
        while mid not in decided:
            await asyncio.sleep(0.001)
        return (decided[mid] - t0) * 1000

    async with core:
        for i in range(len(warm)):  # their first decision builds each cache
            await ask(i)
        before = [await ask(i) for i in range(8, 32)]
        core.sessions.get(cold).turns = list(history)
        n_tokens = len(eng.renderer.decision_input(history[:-1]).ids)
        t_start = time.perf_counter()
        await core.handle(Message(cold, "ann", "Ann", "and now?", message_id="cold"))
        during: list[float] = []
        i = 100
        while "cold" not in decided:
            await asyncio.sleep(random.uniform(0.0, 0.05))  # arrivals at any phase
            during.append(await ask(i))
            i += 1
        after = [await ask(i + k) for k in range(24)]
        await core.flush()
    alone = statistics.median(before + after)
    return {"cold_history_tokens": n_tokens,
            "cold_decision_s": round(decided["cold"] - t_start, 3),
            "warm_median_alone_ms": round(alone, 1),
            "warm_median_before_after_ms": [round(statistics.median(before), 1),
                                            round(statistics.median(after), 1)],
            "warm_max_during_rebuild_ms": round(max(during), 1),
            "warm_median_during_rebuild_ms": round(statistics.median(during), 1),
            "x_median": round(statistics.median(during) / alone, 2),
            "warm_decisions_during_rebuild": len(during)}


def _trim(args: argparse.Namespace, path: str) -> dict[str, Any]:
    from bot.config import GenerationSettings, ModelSettings
    from bot.engine.transformers_backend import TransformersEngine, load_model
    from bot.message import ConversationKey, user
    from bot.sessions import Session

    lm, tok, _ = load_model(ModelSettings(path=path))
    out: dict[str, Any] = {"max_context_tokens": args.context, "messages": args.messages}
    for trim_to in args.trim_to:
        eng = TransformersEngine(lm, tok, generation=GenerationSettings(max_new_tokens=200),
                                 max_context_tokens=args.context, trim_to=trim_to)
        s = Session(ConversationKey("b", "long"))
        fed = 0
        t0 = time.perf_counter()
        for i in range(args.messages):
            d = eng.decide(s, [user(f"P{i % 6}", f"message {i}: status of build {i}, "
                                    "is the deploy green yet?")], threshold=0.5)
            fed += d.fed_tokens
        ms = (time.perf_counter() - t0) * 1000
        out[f"trim_to={trim_to}"] = {"overflows": s.trims, "tokens_fed_per_message":
                                     round(fed / args.messages, 1),
                                     "ms_per_message": round(ms / args.messages, 2),
                                     "history_tokens_at_end": len(s.ids)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("all", "openai", "stall", "trim"), default="all")
    p.add_argument("--model", default=None, help="local model folder (default: build one)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--delay", type=float, default=0.3, help="fake server delay per request")
    p.add_argument("--history-messages", type=int, default=24,
                   help="the cold conversation's history (stall)")
    p.add_argument("--chunk", type=int, default=256,
                   help="recompute_chunk_tokens, the largest chunk (stall)")
    p.add_argument("--context", type=int, default=1024, help="max_context_tokens (trim)")
    p.add_argument("--messages", type=int, default=300, help="messages (trim)")
    p.add_argument("--trim-to", type=float, nargs="+", default=[0.3, 0.45, 0.6, 0.75])
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = _model(args, Path(tmp))
        from transformers import AutoTokenizer

        result: dict[str, Any] = {"cpu": cpu(), "model": args.model or
                                  f"built here: {args.layers} layers, hidden {args.hidden}"}
        if args.part in ("all", "openai"):
            result["openai"] = asyncio.run(_openai(args, AutoTokenizer.from_pretrained(path)))
        if args.part in ("all", "stall"):
            result["stall"] = asyncio.run(_stall(args, path))
        if args.part in ("all", "trim"):
            result["trim"] = _trim(args, path)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
