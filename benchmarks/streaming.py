"""Answers as they are written: time to the first visible text vs time to the whole answer.

Prints JSON. Run by hand; compare within one run, never absolute times across machines.

    python benchmarks/streaming.py                      # models/tiny-demo (`make demo`), both
    python benchmarks/streaming.py --model DIR          # any local transformers model folder
    python benchmarks/streaming.py --backend transformers

Each answer goes through the real core to an adapter that records when the platform would
first show text (its stream's first `update`) and when the whole answer is posted (`finish`),
both from the moment the message arrived. The answer is forced (the message addresses the
bot), generation is greedy with `--tokens` new tokens at most, `stream_interval_ms` as set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.cpuinfo import cpu


class _Timed:
    """An adapter that shows streams and notes when text first appears and when it is done."""

    platform = "b"

    def __init__(self) -> None:
        self.t0 = 0.0
        self.first: float | None = None
        self.done: float | None = None
        self.updates = 0
        self.final = ""

    async def send(self, reply: Any) -> str:
        self.done = time.perf_counter()
        self.final = reply.text
        return "whole"

    def typing(self, key: Any) -> Any:
        return contextlib.nullcontext()

    def open_stream(self, reply: Any) -> Any:
        outer = self

        class S:
            async def update(self, text: str) -> None:
                outer.updates += 1
                if outer.first is None and text:
                    outer.first = time.perf_counter()

            async def finish(self, text: str) -> str:
                outer.done = time.perf_counter()
                outer.final = text
                return "streamed"

            async def abort(self, text: str | None) -> None:
                outer.done = time.perf_counter()

        return S()


async def _measure(engine: Any, interval_ms: int, rounds: int) -> dict[str, Any]:
    from bot.config import BotSettings, GenerationSettings, PolicySettings
    from bot.core import Core
    from bot.message import ConversationKey, Message
    from bot.policy import Policy

    firsts, wholes, updates, chars = [], [], [], []
    fallbacks = 0
    for i in range(rounds):
        adapter = _Timed()
        core = Core(engine, Policy(PolicySettings(), ["assistant"]),
                    generation=GenerationSettings(stream_interval_ms=interval_ms))
        core.add_adapter(adapter)
        async with core:
            adapter.t0 = time.perf_counter()
            await core.handle(Message(ConversationKey("b", f"c{i}"), "ann", "Ann",
                                      "assistant, tell me about the deploy and the build?"))
            await core.flush()
        assert adapter.done is not None
        wholes.append((adapter.done - adapter.t0) * 1000)
        firsts.append(((adapter.first or adapter.done) - adapter.t0) * 1000)
        updates.append(adapter.updates)
        chars.append(len(adapter.final))
        fallbacks += adapter.final == BotSettings.fallback_answer
    first, whole = statistics.median(firsts), statistics.median(wholes)
    return {"first_visible_ms": round(first, 1), "whole_answer_ms": round(whole, 1),
            "first_over_whole": round(first / whole, 3),
            "updates_per_answer": statistics.median(updates),
            "answer_chars": statistics.median(chars),
            "fallbacks": fallbacks}  # answers where the model wrote nothing showable


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="local model folder (default: build one)")
    p.add_argument("--backend", choices=("both", "transformers", "openvino"), default="both")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--tokens", type=int, default=100, help="max_new_tokens")
    p.add_argument("--interval-ms", type=int, default=200, help="stream_interval_ms")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from bot.config import GenerationSettings, ModelSettings
    from bot.engine.openvino_backend import OpenVINOEngine
    from bot.engine.transformers_backend import TransformersEngine

    gen = GenerationSettings(max_new_tokens=args.tokens, temperature=0.0)
    result: dict[str, Any] = {"cpu": cpu(), "max_new_tokens": args.tokens,
                              "stream_interval_ms": args.interval_ms}
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if path is None and (ROOT / "models" / "tiny-demo" / "config.json").exists():
            path = str(ROOT / "models" / "tiny-demo")  # trained: it writes real text
        if path is None:  # random weights may write nothing showable: see "fallbacks"
            from training.tiny import save_tiny

            corpus = [f"user{i % 7}: message {i} about deploys, builds and lunch 今天" for i in
                      range(2000)]
            path = str(save_tiny(Path(tmp) / "m", corpus, vocab_size=2000, hidden=args.hidden,
                                 layers=args.layers, heads=4))
            result["model"] = f"built here: {args.layers} layers, hidden {args.hidden}"
        else:
            result["model"] = path
        engines: dict[str, Any] = {}
        if args.backend in ("both", "transformers"):
            engines["transformers"] = TransformersEngine.from_settings(
                ModelSettings(path=path), gen)
        if args.backend in ("both", "openvino"):
            engines["openvino"] = OpenVINOEngine.from_settings(
                ModelSettings(path=path, backend="openvino"), gen)
        for name, eng in engines.items():
            result[name] = asyncio.run(_measure(eng, args.interval_ms, args.rounds))
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
