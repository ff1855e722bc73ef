"""Speak/silence metrics on held-out conversations, against baselines.

Every user turn is replayed with the gold history through a real engine's `decide` (the same
call the bot makes, so `p_silence` is exactly what the engine computes): the engine feeds only
the new tokens on top of the conversation's KV cache; after each decision the history is set to
what the gold data did (the gold answer, or the silence), as `chimein replay --history gold`
does. The model's own decision is scored (no forced answer on an address), so missing an
address shows up; the "as deployed" row adds the address rule the bot applies on top.

Baselines in the same table: "always silent", "answer only when addressed" (the wake-word rule
of `bot.policy.Addressing`), and the base model prompted with a system prompt and a reminder on
the newest message instead of fine-tuned.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bot.message import ConversationKey, Turn
from bot.render import RESPONSE, SILENCE
from bot.sessions import Session
from training.data import Example, decision_points

log = logging.getLogger(__name__)

BASELINE_SYSTEM = (
    "You are {name}, an assistant reading a group chat. Each user message is written "
    "'Name: text'. After every message you write exactly one reply: {silence} to stay quiet, "
    "or {response} followed by a short answer. Answer when someone addresses you (as "
    "{wake}). Otherwise stay quiet, unless the group is stuck on a fact you "
    "know or repeats a wrong fact that matters; then give it in one short sentence. Most "
    "messages need {silence}.")
BASELINE_REMINDER = ("\n[reminder: reply {silence} unless you are addressed or have a short, "
                     "useful fact]")

ROW_NAMES = {
    "model": "fine-tuned (own decision)",
    "deployed": "fine-tuned + address rule (as deployed)",
    "always_silent": "baseline: always silent",
    "answer_when_addressed": "baseline: answer only when addressed",
    "prompted_base": "baseline: base model + prompt and reminder",
}


@dataclass(frozen=True)
class Point:
    """One user turn: the gold decision, the prediction and the model's numbers."""

    conversation: int
    turn: int
    addressed: bool
    gold: bool  # the gold data speaks after this turn
    p_silence: float | None  # None for rule baselines
    pred: bool
    latency_ms: float = 0.0


@dataclass
class Row:
    """Metrics of one system over the same decision points."""

    name: str
    user_turns: int = 0
    gold_speak_points: int = 0
    silent_points: int = 0
    addressed_turns: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    missed_addresses: int = 0
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    balanced_accuracy: float | None = None
    false_interjection_rate: float | None = None
    missed_address_rate: float | None = None
    latency_ms: dict[str, float] | None = None
    best_threshold: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def score(points: Sequence[Point], name: str = "model") -> Row:
    """Counts and rates over decision points (no model involved: easy to check by hand)."""
    r = Row(name)
    for p in points:
        r.user_turns += 1
        r.gold_speak_points += p.gold
        r.silent_points += not p.gold
        r.addressed_turns += p.addressed
        if p.gold and p.pred:
            r.tp += 1
        elif p.pred:
            r.fp += 1
        elif p.gold:
            r.fn += 1
        else:
            r.tn += 1
        if p.addressed and not p.pred:
            r.missed_addresses += 1
    r.precision = _div(r.tp, r.tp + r.fp)
    r.recall = _div(r.tp, r.gold_speak_points)
    if r.precision is not None and r.recall is not None and r.precision + r.recall > 0:
        r.f1 = 2 * r.precision * r.recall / (r.precision + r.recall)
    elif r.gold_speak_points:
        r.f1 = 0.0
    specificity = _div(r.tn, r.silent_points)
    parts = [x for x in (r.recall, specificity) if x is not None]
    r.balanced_accuracy = sum(parts) / len(parts) if parts else None
    r.false_interjection_rate = _div(r.fp, r.silent_points)
    r.missed_address_rate = _div(r.missed_addresses, r.addressed_turns)
    lat = [p.latency_ms for p in points if p.p_silence is not None]
    if lat:
        s = sorted(lat)
        r.latency_ms = {"mean": statistics.fmean(s), "p50": _quantile(s, 0.5),
                        "p95": _quantile(s, 0.95), "max": s[-1]}
    if any(p.p_silence is not None for p in points):
        r.best_threshold = best_threshold(points)
    return r


def _div(a: int, b: int) -> float | None:
    return a / b if b else None


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    k = (len(sorted_values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def pr_curve(points: Sequence[Point]) -> list[tuple[float, float | None, float | None, float]]:
    """(threshold, precision, recall, f1) for every distinct cut (speak iff p_silence < t),
    from the quietest (t = 0: never speak) to the chattiest (every point speaks)."""
    scored = sorted((p.p_silence, p.gold) for p in points if p.p_silence is not None)
    positives = sum(g for _p, g in scored)
    out: list[tuple[float, float | None, float | None, float]] = []
    tp = fp = 0
    i = 0
    t = 0.0
    while True:
        prec, rec = _div(tp, tp + fp), _div(tp, positives)
        f1 = 2 * prec * rec / (prec + rec) if prec and rec else 0.0
        out.append((t, prec, rec, f1))
        if i >= len(scored):
            return out
        value = scored[i][0]
        while i < len(scored) and scored[i][0] == value:  # ties move together
            tp += scored[i][1]
            fp += not scored[i][1]
            i += 1
        # the next cut lies between this value and the next one (just above the last value)
        t = (value + scored[i][0]) / 2 if i < len(scored) else value + 1e-9


def best_threshold(points: Sequence[Point]) -> dict[str, float]:
    """The policy.threshold that maximises F1 (the quietest one on ties)."""
    best = max(pr_curve(points), key=lambda c: (c[3], -c[0]))
    t, prec, rec, f1 = best
    return {"threshold": t, "f1": f1, "precision": prec or 0.0,
            "recall": rec or 0.0}


# -- replay ---------------------------------------------------------------------------------
def replay(engine: Any, examples: Sequence[Example], *, threshold: float,
           addressed: Callable[[str], bool],
           rewrite: Callable[[Turn], Turn] | None = None,
           progress: Callable[[int], None] | None = None) -> list[Point]:
    """Decide every user turn with the gold history through `engine.decide`.

    `rewrite` changes only the newest user turn as the model sees it for this decision (the
    baseline's reminder); the history keeps the original turn, so the next decision's cached
    prefix is cropped at the reminder and only the changed suffix is fed again.
    """
    points: list[Point] = []
    for ci, ex in enumerate(examples):
        turns = ex.turns
        session = Session(ConversationKey("eval", str(ci)))
        if turns and turns[0].role == "system":
            engine.observe(session, [turns[0]])
        for ui, dp in enumerate(decision_points(turns)):
            t = turns[dp.index]
            answer = turns[dp.index + 1] if dp.speak else None
            gold = dp.speak
            shown = rewrite(t) if rewrite is not None else t
            t0 = time.perf_counter()
            d = engine.decide(session, [shown], threshold=threshold, force=False)
            latency = d.latency_ms or (time.perf_counter() - t0) * 1000
            # The history continues as the gold data does, whatever was predicted.
            session.pending = None
            if shown is not t and len(session.turns) >= 2:
                session.turns[-2] = t
            if answer is not None:
                session.turns[-1] = answer
            points.append(Point(ci, ui, addressed(t.content or ""), gold, d.p_silence, d.speak,
                                latency))
        if progress is not None:
            progress(1)
    return points


def rule_points(points: Sequence[Point], rule: Callable[[bool], bool]) -> list[Point]:
    """The same decision points decided by a rule that looks only at whether a turn is
    addressed (no model numbers)."""
    return [replace(p, p_silence=None, pred=rule(p.addressed), latency_ms=0.0) for p in points]


@dataclass
class Report:
    model: str
    threshold: float
    data: list[str]
    rows: dict[str, Row]
    points: list[Point] = field(default_factory=list)
    base_points: list[Point] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def main(self) -> Row:
        return self.rows["model"]

    def as_json(self) -> dict[str, Any]:
        """One object: the fine-tuned model's metrics at the top, the other rows beside."""
        out: dict[str, Any] = {"model": self.model, "threshold": self.threshold,
                               "data": self.data}
        main = self.main.as_dict()
        main.pop("name")
        out.update(main)
        out["deployed"] = _strip(self.rows["deployed"].as_dict())
        out["baselines"] = {k: (_strip(self.rows[k].as_dict()) if k in self.rows else None)
                            for k in ("always_silent", "answer_when_addressed",
                                      "prompted_base")}
        out["seconds"] = round(self.seconds, 2)
        return out


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    d = dict(d)
    d.pop("name", None)
    return d


def evaluate(engine: Any, examples: Sequence[Example], *, threshold: float,
             wake_words: Sequence[str] = ("assistant", "助手"), model_name: str = "model",
             base_engine: Any = None, base_context: Any = None, data: Sequence[str] = (),
             progress: bool = False) -> Report:
    """The full table: the model, the model as deployed, and the baselines.

    `base_engine` (optional) is the base model with the baseline system prompt; run inside
    `base_context` (e.g. a PeftModel's `disable_adapter()`), so one copy of the weights serves
    both the fine-tuned model and its base.
    """
    from bot.policy import Addressing

    t0 = time.perf_counter()
    addressing = Addressing(wake_words)

    def is_addr(text: str) -> bool:
        return addressing.is_addressed(text)

    with _bar(len(examples) * (2 if base_engine is not None else 1), progress) as tick:
        points = replay(engine, examples, threshold=threshold, addressed=is_addr,
                        progress=tick)
        rows = {"model": score(points, "model")}
        deployed = [replace(p, pred=p.pred or p.addressed) for p in points]
        rows["deployed"] = score(deployed, "deployed")
        rows["deployed"].best_threshold = None  # the address rule makes the sweep meaningless
        rows["always_silent"] = score(rule_points(points, lambda a: False), "always_silent")
        rows["answer_when_addressed"] = score(rule_points(points, lambda a: a),
                                              "answer_when_addressed")
        base_points: list[Point] = []
        if base_engine is not None:
            reminder = BASELINE_REMINDER.format(silence=SILENCE)

            def remind(t: Turn) -> Turn:
                return Turn("user", (t.content or "") + reminder, t.name)

            with base_context if base_context is not None else contextlib.nullcontext():
                base_points = replay(base_engine, examples, threshold=threshold,
                                     addressed=is_addr, rewrite=remind, progress=tick)
            rows["prompted_base"] = score(base_points, "prompted_base")
    return Report(model_name, threshold, list(data), rows, points, base_points,
                  time.perf_counter() - t0)


@contextlib.contextmanager
def _bar(total: int, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc="eval", unit="conv", leave=False)
    try:
        yield bar.update
    finally:
        bar.close()


def baseline_system_prompt(name: str = "assistant",
                           wake_words: Sequence[str] = ("assistant", "助手")) -> str:
    """The prompted-base baseline's instructions (markers spelled by bot.render)."""
    words = list(dict.fromkeys([name, *wake_words]))
    wake = " or ".join(f"'{w}'" for w in words)
    return BASELINE_SYSTEM.format(name=name, wake=wake, silence=SILENCE, response=RESPONSE)


# -- output -----------------------------------------------------------------------------------
def _f(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x * 100:.1f}%" if pct else f"{x:.3f}"


def format_table(report: Report, extra: dict[str, Row] | None = None,
                 model_label: str | None = None) -> str:
    """A plain-text table: one row per system, the same columns for all."""
    rows = dict(report.rows)
    if extra:
        rows.update(extra)
    labels = dict(ROW_NAMES)
    if model_label:
        labels["model"] = model_label
    head = ["system", "TP", "FP", "FN", "TN", "prec", "recall", "F1", "bal.acc",
            "interject", "missed-addr"]
    lines = []
    main = report.main
    lines.append(f"model {report.model} on {', '.join(report.data) or 'the data'}: "
                 f"{main.user_turns} user turns, {main.gold_speak_points} gold speak points, "
                 f"{main.addressed_turns} addressed; threshold {report.threshold:g}")
    table = [head]
    for key, r in rows.items():
        table.append([labels.get(key, key), str(r.tp), str(r.fp), str(r.fn), str(r.tn),
                      _f(r.precision), _f(r.recall), _f(r.f1), _f(r.balanced_accuracy),
                      _f(r.false_interjection_rate, True), _f(r.missed_address_rate, True)])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for j, row in enumerate(table):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    bt = main.best_threshold
    if bt:
        lines.append(f"best threshold for F1: {bt['threshold']:.4g} (F1 {bt['f1']:.3f}, "
                     f"precision {bt['precision']:.3f}, recall {bt['recall']:.3f})")
    if main.latency_ms:
        lat = main.latency_ms
        lines.append(f"decision latency: mean {lat['mean']:.1f} ms, p50 {lat['p50']:.1f} ms, "
                     f"p95 {lat['p95']:.1f} ms, max {lat['max']:.1f} ms")
    return "\n".join(lines)


def plot_pr(report: Report, out: str | Path) -> Path:
    """Precision-recall curve of the model (and the prompted base), operating points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for pts, label in ((report.points, f"{report.model}"),
                       (report.base_points, "base + prompt")):
        if not pts:
            continue
        curve = [(r, p) for _t, p, r, _f1 in pr_curve(pts) if p is not None and r is not None]
        if curve:
            ax.plot([c[0] for c in curve], [c[1] for c in curve], marker=".", label=label)
    main = report.main
    if main.recall is not None and main.precision is not None:
        ax.scatter([main.recall], [main.precision], color="red", zorder=3,
                   label=f"threshold {report.threshold:g}")
    bt = main.best_threshold
    if bt:
        ax.scatter([bt["recall"]], [bt["precision"]], color="green", marker="*", s=120,
                   zorder=3, label=f"best F1 at {bt['threshold']:.3g}")
    for key, marker in (("answer_when_addressed", "s"),):
        r = report.rows.get(key)
        if r and r.recall is not None and r.precision is not None:
            ax.scatter([r.recall], [r.precision], marker=marker, color="gray", zorder=3,
                       label=ROW_NAMES[key])
    ax.set_xlabel("recall (gold speak points answered)")
    ax.set_ylabel("precision (speaks that were right)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("speak/silence precision-recall")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- loading engines ----------------------------------------------------------------------------
def load_engines(settings: Any, model: str, *, adapter: str = "", base: str | None = None,
                 with_base: bool = True) -> tuple[Any, Any, Any, str]:
    """(engine, base_engine or None, base_context or None, version) for `chimein eval`.

    A LoRA version reuses its own base weights for the baseline (adapter disabled); a full
    model loads its base (or, for a from-scratch model, its saved initial weights) separately.
    """
    import dataclasses

    from bot.engine.transformers_backend import TransformersEngine, load_model
    from training.registry import describe_model

    ref = describe_model(model)
    path, adp = ref.path, adapter or ref.adapter
    ms = dataclasses.replace(settings.model, backend="transformers", path=path, adapter=adp,
                             registry_dir="")
    lm, tok, device = load_model(ms)
    common = {"generation": settings.generation, "max_context_tokens": ms.max_context_tokens,
                  "trim_to": ms.trim_to, "device": device}
    engine = TransformersEngine(lm, tok, system_prompt=settings.bot.system_prompt,
                                version=ref.version, **common)
    if not with_base:
        return engine, None, None, ref.version
    base_name = base if base is not None else ref.base
    prompt = baseline_system_prompt(settings.bot.name, settings.bot.wake_words)
    if adp and (base is None or base == path):
        base_engine = TransformersEngine(lm, tok, system_prompt=prompt, version="base",
                                         **common)
        return engine, base_engine, lm.disable_adapter(), ref.version
    if not base_name:
        log.info("no base model known for %s: the prompted-base baseline is skipped", model)
        return engine, None, None, ref.version
    bms = dataclasses.replace(ms, path=base_name, adapter="")
    blm, btok, _ = load_model(bms)
    base_engine = TransformersEngine(blm, btok, system_prompt=prompt, version="base", **common)
    return engine, base_engine, None, ref.version
