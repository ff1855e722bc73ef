"""Silence-decision latency: cached one-pass decision vs recomputing the whole history.

Prints JSON. Run by hand (`make bench` or `python benchmarks/decision_latency.py`); compare the
ratio within one run, never absolute times across machines.

    python benchmarks/decision_latency.py                 # a locally built small model
    python benchmarks/decision_latency.py --model PATH    # any local model folder / hub id
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: build a small one)")
    p.add_argument("--messages", type=int, default=60, help="messages in the conversation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--backend", choices=("transformers", "openvino"), default="transformers")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from bot.config import GenerationSettings, ModelSettings
    from bot.engine.transformers_backend import TransformersEngine
    from bot.message import ConversationKey, user
    from bot.sessions import Session

    tmp = None
    path = args.model
    if path is None:
        from training.tiny import save_tiny

        tmp = tempfile.TemporaryDirectory()
        corpus = [f"user{i % 7}: message {i} about deploys, builds and lunch 今天" for i in
                  range(2000)]
        path = str(save_tiny(Path(tmp.name) / "m", corpus, vocab_size=4000,
                             hidden=args.hidden, layers=args.layers, heads=8))
    engine_cls = TransformersEngine
    if args.backend == "openvino":
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        from bot.engine.openvino_backend import OpenVINOEngine

        engine_cls = OpenVINOEngine
    eng = engine_cls.from_settings(
        ModelSettings(path=path, device="cpu", max_context_tokens=32768, backend=args.backend),
        GenerationSettings(max_new_tokens=16, temperature=0.0))
    s = Session(ConversationKey("bench", "c"))
    names = ["Ann", "Bob", "Cy", "Dee"]
    texts = ["did the deploy finish?", "not yet, CI is slow today",
             "I'll look after lunch", "the flaky test again, 今天第三次了",
             "who owns the staging cluster?", "ping me when it's green"]
    rows = []
    for i in range(args.messages):
        turn = user(names[i % 4], texts[i % len(texts)] + f" ({i})")
        t0 = time.perf_counter()
        d = eng.decide(s, [turn], threshold=0.0)
        cached_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        full = eng.score_silence(s.turns)
        full_ms = (time.perf_counter() - t0) * 1000
        rows.append({"history_tokens": len(s.ids), "fed_tokens": d.fed_tokens,
                     "cached_ms": cached_ms, "uncached_ms": full_ms,
                     "abs_diff": abs(full - d.p_silence)})
    last = rows[-10:]
    result = {
        "model": args.model or f"local llama hidden={args.hidden} layers={args.layers}",
        "backend": args.backend,
        "threads": args.threads,
        "messages": args.messages,
        "final_history_tokens": rows[-1]["history_tokens"],
        "mean_fed_tokens_last10": statistics.mean(r["fed_tokens"] for r in last),
        "cached_ms_median_last10": statistics.median(r["cached_ms"] for r in last),
        "uncached_ms_median_last10": statistics.median(r["uncached_ms"] for r in last),
        "max_abs_p_silence_diff": max(r["abs_diff"] for r in rows),
        # memory: what one conversation's cache holds (runtime.max_kv_megabytes bounds the sum)
        "kv_bytes": s.kv_bytes(),
        "kv_bytes_per_token": s.kv_bytes() / max(1, len(s.ids)),
    }
    result["speedup_last10"] = (result["uncached_ms_median_last10"]
                                / result["cached_ms_median_last10"])
    print(json.dumps(result, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
