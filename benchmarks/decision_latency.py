"""Silence-decision latency: cached one-pass decision vs recomputing the whole history.

Prints JSON. Run by hand (`make bench` or `python benchmarks/decision_latency.py`); compare the
ratio within one run, never absolute times across machines.

    python benchmarks/decision_latency.py                 # a locally built small model
    python benchmarks/decision_latency.py --model PATH    # any local model folder / hub id
    python benchmarks/decision_latency.py --vs-raw        # OpenVINO engine vs raw OpenVINO

`--vs-raw` builds a model of Qwen2.5-0.5B's shape with random weights (benchmarks/qwen_shape.py,
once, in --model-dir), exports it as `chimein export --openvino` does (fp32, int8, int4), and
for each runs benchmarks/ov_vs_raw.py in a fresh process: decision and decode time of the
engine vs raw stateful OpenVINO on the same tokens at each history length, and peak RSS with
10 cached conversations. The CPU (lscpu model and speed flags) is part of the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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
    p.add_argument("--vs-raw", action="store_true",
                   help="the OpenVINO engine vs raw stateful OpenVINO on a 0.5B-shaped model")
    p.add_argument("--model-dir", default=str(Path(tempfile.gettempdir()) / "chimein-qwen-shape"),
                   help="where --vs-raw builds (and reuses) the model and its exports")
    p.add_argument("--weights", nargs="+", default=["fp32", "int8", "int4"],
                   choices=("fp32", "int8", "int4"))
    p.add_argument("--history", type=int, nargs="+", default=[1024, 4096, 8192])
    p.add_argument("--decisions", type=int, default=6, help="timed decisions per length")
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--conversations", type=int, default=10)
    args = p.parse_args(argv)
    if args.vs_raw:
        return vs_raw(args)

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


TARGETS = {"decision_vs_raw": 1.15, "decode_vs_raw": 1.3, "int8_peak_rss_mb": 1600}


def vs_raw(args: argparse.Namespace) -> int:
    from benchmarks.cpuinfo import cpu
    from benchmarks.qwen_shape import SHAPE, build_all

    if args.model:  # one given IR instead of the built model
        irs = {Path(args.model).name: Path(args.model)}
    else:
        built = build_all(Path(args.model_dir), tuple(args.weights))
        irs = {w: built[w] for w in args.weights}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    runs = {}
    for name, ir in irs.items():
        cmd = [sys.executable, str(Path(__file__).with_name("ov_vs_raw.py")), "--ir", str(ir),
               "--decisions", str(args.decisions), "--decode-tokens", str(args.decode_tokens),
               "--conversations", str(args.conversations),
               "--history", *map(str, args.history)]
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
        runs[name] = json.loads(out)
    summary = {}
    for name, r in runs.items():
        summary[name] = {
            "decision_ratio": {p["history_tokens"]: p["decision"]["ratio"] for p in r["points"]},
            "decode_ratio": {p["history_tokens"]: p["decode"]["ratio"] for p in r["points"]},
            "peak_rss_mb_10_conversations": r.get("cached_conversations", {}).get(
                "rss", {}).get("peak_mb")}
    met = {
        "decision_le_1.15x_raw": all(v <= TARGETS["decision_vs_raw"] for s in summary.values()
                                     for v in s["decision_ratio"].values()),
        "decode_le_1.3x_raw": all(v <= TARGETS["decode_vs_raw"] for s in summary.values()
                                  for v in s["decode_ratio"].values()),
    }
    if "int8" in summary and summary["int8"]["peak_rss_mb_10_conversations"] is not None:
        met["int8_peak_rss_le_1.6GB"] = (summary["int8"]["peak_rss_mb_10_conversations"]
                                         <= TARGETS["int8_peak_rss_mb"])
    print(json.dumps({"cpu": cpu(), "threads": args.threads,
                      "model": "given IR" if args.model else {"shape": SHAPE,
                                                              "weights": "random"},
                      "summary": summary, "targets": TARGETS, "met": met, "runs": runs},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
