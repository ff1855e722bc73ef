"""The OpenVINO engine vs raw stateful OpenVINO: the same IR, the same tokens, one process.

Run for one IR (`--ir PATH`); `decision_latency.py --vs-raw` runs it once per weight format in
a fresh process (peak RSS is per process) and adds the CPU. Prints JSON.

First ten conversations are filled to the first history length through the engine (its
chunked prefill, then a decision): RSS with 10 cached conversations, before anything else ran.
Then one conversation grows through the lengths asked (`--history 1024 4096 8192`); at each:
- decision: the engine's `decide` (rendering, prefix check, one forward over the new tokens,
  the marker's probability) vs a bare `infer` of the very same suffix ids on the same
  InferRequest, so both run on a state the model computed itself. The raw run's tokens are then
  masked out (the engine's own crop), so the next run sees the same context; the order
  alternates, `--decisions` times each; medians.
- decode: ms per generated token, the engine's `respond` (the interval between its streamed
  texts: one forward, sampling, detokenizing) vs raw single-token `infer` + argmax on the same
  request after the same speaking decision; two rounds, the order alternating.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

NAMES = ["Ann", "Bob", "Cy", "Dee"]
TEXTS = ["did the deploy finish? CI has been slow all morning", "not yet, CI is slow today",
         "I'll look after lunch, ping me when it's green", "the flaky test again, 今天第三次了",
         "who owns the staging cluster? the certs expire on friday",
         "assistant, what is the HTTP status for too many requests?"]


def rss_mb() -> dict[str, float]:
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"current_mb": round(current / 2**20, 1), "peak_mb": round(peak_kb / 1024, 1)}


def message(i: int) -> Any:
    from bot.message import user

    return user(NAMES[i % len(NAMES)], f"{TEXTS[i % len(TEXTS)]} ({i})")


class Raw:
    """Raw stateful OpenVINO: `infer` called on an InferRequest directly, nothing else."""

    def __init__(self, names: set[str]):
        import numpy as np

        self.np = np
        self.names = names

    def infer(self, request: Any, ids: list[int], slots: int, position: int, keep: int) -> Any:
        np = self.np
        inputs = {"input_ids": np.asarray([ids], dtype=np.int64),
                  "attention_mask": np.ones((1, slots + len(ids)), dtype=np.int64)}
        if "position_ids" in self.names:
            inputs["position_ids"] = np.arange(position, position + len(ids),
                                               dtype=np.int64)[None]
        if "beam_idx" in self.names:
            inputs["beam_idx"] = np.zeros(1, dtype=np.int32)
        if "logits_to_keep" in self.names:
            inputs["logits_to_keep"] = np.asarray([keep], dtype=np.int64)
        request.infer(inputs, share_inputs=True)
        return np.array(request.get_tensor("logits").data[0, -keep:])


def raw_then_forget(raw: Raw, conv: Any, ids: list[int], keep: int) -> tuple[float, Any]:
    """Time a raw infer of `ids` on the conversation's request; then drop those tokens again
    (masked out, as the engine drops a short tail)."""
    t0 = time.perf_counter()
    logits = raw.infer(conv.request, ids, conv.slots, conv.n, keep)
    ms = (time.perf_counter() - t0) * 1000
    conv.adopt(len(ids))
    conv.crop(conv.n - len(ids))
    return ms, logits


def grow(engine: Any, session: Any, target: int, i: int, chunk: int) -> int:
    """Add messages until the conversation holds about `target` tokens, then fill the cache
    (in the core's chunks) with one silent decision. Returns the next message index."""
    from bot.render import with_silences

    while True:
        batch = [message(i + k) for k in range(20)]
        probe = engine.renderer.decision_input(with_silences(session.turns + batch)[:-1])
        if len(probe.ids) > target:
            break
        engine.observe(session, batch)
        i += 20
    while len(engine.renderer.decision_input(
            with_silences(session.turns + [message(i)])[:-1]).ids) < target:
        engine.observe(session, [message(i)])
        i += 1
    while engine.prefill(session, [message(i)], chunk):
        pass
    engine.decide(session, [message(i)], threshold=0.0)
    return i + 1


def decisions(engine: Any, raw: Raw, session: Any, n: int, i: int) -> tuple[dict[str, Any], int]:
    from bot.render import with_silences

    eng_ms, raw_ms, fed = [], [], []
    for k in range(n):
        msg = message(i)
        i += 1
        d = engine.renderer.decision_input(with_silences(session.turns + [msg])[:-1])
        past = len(session.ids)
        if d.ids[:past] != session.ids:
            raise RuntimeError("the benchmark's conversation is not a prefix of itself")
        suffix, keep = d.ids[past:], len(d.ids) - d.marker_start + 1
        for engine_turn in ((k % 2 == 0), (k % 2 == 1)):
            if engine_turn:
                t0 = time.perf_counter()
                decision = engine.decide(session, [msg], threshold=0.0)
                eng_ms.append((time.perf_counter() - t0) * 1000)
                fed.append(decision.fed_tokens)
            else:  # the same suffix, on top of whatever the engine's state holds now
                raw_ms.append(raw_then_forget(raw, session.cache, suffix, keep)[0])
        if session.ids != d.ids:
            raise RuntimeError("the engine fed other tokens than the raw run")
    e, r = statistics.median(eng_ms), statistics.median(raw_ms)
    return {"engine_ms": round(e, 1), "raw_ms": round(r, 1), "ratio": round(e / r, 3),
            "fed_tokens": statistics.mean(fed), "engine_all_ms": [round(x) for x in eng_ms],
            "raw_all_ms": [round(x) for x in raw_ms]}, i


def raw_decode(raw: Raw, session: Any, tokens: int) -> list[float]:
    """`tokens` raw single-token steps (infer + argmax) on the conversation's request; then
    those tokens are masked out again, as the engine drops a short tail."""
    np, conv = raw.np, session.cache
    answer_from, tok, steps = conv.answer_from, session.ids[-1], []
    for _ in range(tokens):
        t = time.perf_counter()
        tok = int(np.argmax(raw.infer(conv.request, [tok], conv.slots, conv.n, 1)[-1]))
        steps.append((time.perf_counter() - t) * 1000)
        conv.adopt(1)
    conv.crop(conv.n - tokens)
    conv.answer_from = answer_from  # what the engine's answer left cached stays its own
    return steps


def decode(engine: Any, raw: Raw, session: Any, tokens: int, rounds: int,
           i: int) -> tuple[dict[str, Any], int]:
    """Per round a speaking decision, then raw steps and the engine's answer, in alternating
    order (whichever goes second decodes over the other's tokens too)."""
    eng_steps: list[float] = []
    raw_steps: list[float] = []
    generated, total = [], []
    for k in range(rounds):
        engine.decide(session, [message(i)], threshold=0.0, force=True)
        i += 1
        for engine_turn in ((k % 2 == 1), (k % 2 == 0)):
            if not engine_turn:
                raw_steps += raw_decode(raw, session, tokens)
                continue
            stamps: list[float] = []
            t0 = time.perf_counter()
            engine.respond(session, on_text=lambda _text, at=stamps: at.append(
                time.perf_counter()))
            total.append((time.perf_counter() - t0) * 1000)
            if len(stamps) < 3:
                raise RuntimeError(f"the engine generated {len(stamps)} tokens: too few to time")
            eng_steps += [(b - a) * 1000 for a, b in itertools.pairwise(stamps)]
            generated.append(len(stamps))
    e, r = statistics.median(eng_steps), statistics.median(raw_steps)
    return {"engine_ms_per_token": round(e, 1), "raw_ms_per_token": round(r, 1),
            "ratio": round(e / r, 3), "tokens": generated,
            "engine_respond_ms": [round(x, 1) for x in total]}, i


def run(ir: str, history: list[int], n_decisions: int, decode_tokens: int, conversations: int,
        chunk: int) -> dict[str, Any]:
    from bot.config import GenerationSettings, ModelSettings
    from bot.engine.openvino_backend import OpenVINOEngine
    from bot.message import ConversationKey
    from bot.sessions import Session

    result: dict[str, Any] = {"ir": ir, "rss_before_model": rss_mb()}
    t0 = time.perf_counter()
    engine = OpenVINOEngine.from_settings(
        ModelSettings(path=ir, backend="openvino", max_context_tokens=max(history) + 4096),
        GenerationSettings(max_new_tokens=decode_tokens + 1, temperature=0.0))
    result["load_s"] = round(time.perf_counter() - t0, 1)
    m = engine.model
    result.update(rss_after_load=rss_mb(), kv_precision=m.kv_precision,
                  fp32_weights=m.fp32_weights, state_bytes_per_token=m.bytes_per_token,
                  logits_sliced=m.sliced)
    raw = Raw(m.names)
    first = min(history)
    everyone = [Session(ConversationKey("bench", f"c{c}")) for c in range(conversations)]
    i = 0
    t0 = time.perf_counter()
    for s in everyone:
        i = grow(engine, s, first, i, chunk)
    result["cached_conversations"] = {
        "conversations": len(everyone), "history_tokens_each": len(everyone[0].ids),
        "fill_s": round(time.perf_counter() - t0, 1),
        "state_mb": round(sum(s.kv_bytes() for s in everyone) / 2**20, 1), "rss": rss_mb()}
    session, points = everyone[0], []
    for target in sorted(history):
        t0 = time.perf_counter()
        if target != first:
            i = grow(engine, session, target, i, chunk)
        point: dict[str, Any] = {"history_tokens": len(session.ids),
                                 "prefill_s": round(time.perf_counter() - t0, 1)}
        point["decision"], i = decisions(engine, raw, session, n_decisions, i)
        point["decode"], i = decode(engine, raw, session, decode_tokens, 2, i)
        point["rss"] = rss_mb()
        points.append(point)
        print(json.dumps(point), file=sys.stderr, flush=True)
    result["points"] = points
    result["rss_end"] = rss_mb()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ir", required=True, help="an OpenVINO IR folder (with its tokenizer)")
    p.add_argument("--history", type=int, nargs="+", default=[1024, 4096, 8192])
    p.add_argument("--decisions", type=int, default=6)
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--conversations", type=int, default=10)
    p.add_argument("--chunk", type=int, default=256, help="prefill chunk (the core's)")
    args = p.parse_args(argv)
    print(json.dumps(run(args.ir, args.history, args.decisions, args.decode_tokens,
                         args.conversations, args.chunk), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
