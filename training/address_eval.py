"""How well the address rule (bot.policy) reads a labelled message set, per category.

`chimein eval --addresses [FILE ...]`: each line of a file is
`{"text", "label": "direct"|"not"|"ambiguous", "category", "lang"}` (the public set is
tests/data/address/messages.jsonl; its SOURCE.md says what the fields mean). No model runs:
this measures the rule alone, the part that forces an answer. Bad lines are reported with
their line numbers and skipped.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.policy import Addressing

PUBLIC_SET = Path(__file__).resolve().parents[1] / "tests" / "data" / "address" / "messages.jsonl"
LABELS = ("direct", "not", "ambiguous")


@dataclass(frozen=True)
class Labelled:
    text: str
    label: str
    category: str
    lang: str
    line: int


def read_set(path: Path) -> tuple[list[Labelled], list[str]]:
    """The labelled messages of `path`, and one error string per bad line."""
    rows: list[Labelled] = []
    errors: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError) as e:
                errors.append(f"{path}:{n}: not JSON ({str(e)[:80]})")
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) \
                    or obj.get("label") not in LABELS:
                errors.append(f"{path}:{n}: needs a string 'text' and a 'label' out of "
                              f"{', '.join(LABELS)}")
                continue
            rows.append(Labelled(obj["text"], obj["label"], str(obj.get("category", "-")),
                                 str(obj.get("lang", "-")), n))
    return rows, errors


def _pr(pairs: Iterable[tuple[str, str | None]]) -> tuple[int, float | None, float | None]:
    """(n, precision, recall) of calling a message "direct"."""
    tp = fp = fn = n = 0
    for label, got in pairs:
        n += 1
        tp += label == "direct" and got == "direct"
        fp += label != "direct" and got == "direct"
        fn += label == "direct" and got != "direct"
    return (n, tp / (tp + fp) if tp + fp else None, tp / (tp + fn) if tp + fn else None)


def evaluate(rows: Sequence[Labelled], wake_words: Iterable[str]) -> dict[str, Any]:
    """Per category and per language: what the rule said, and precision/recall of "direct"."""
    rule = Addressing(wake_words)
    got = [(r, rule.classify(r.text)) for r in rows]
    cats: dict[str, Counter[str]] = defaultdict(Counter)
    for r, g in got:
        cats[r.category][f"label:{r.label}"] += 1
        cats[r.category][str(g)] += 1
    out: dict[str, Any] = {"categories": {}, "languages": {}}
    for cat in sorted(cats):
        pairs = [(r.label, g) for r, g in got if r.category == cat]
        n, p, rec = _pr(pairs)
        c = cats[cat]
        out["categories"][cat] = {
            "n": n, "labels": {k: c[f"label:{k}"] for k in LABELS if c[f"label:{k}"]},
            "direct": c["direct"], "ambiguous": c["ambiguous"], "none": c["None"],
            "precision": p, "recall": rec}
    for lang in sorted({r.lang for r in rows}):
        n, p, rec = _pr((r.label, g) for r, g in got if r.lang == lang)
        out["languages"][lang] = {"n": n, "precision": p, "recall": rec}
    n, p, rec = _pr((r.label, g) for r, g in got)
    nots = [g for r, g in got if r.label == "not"]
    out["all"] = {"n": n, "precision": p, "recall": rec,
                  "not_taken_as_direct": sum(g == "direct" for g in nots) / max(len(nots), 1),
                  "missed_direct": [r.text for r, g in got
                                    if r.label == "direct" and g != "direct"],
                  "false_direct": [r.text for r, g in got if r.label == "not" and g == "direct"]}
    return out


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def table(result: dict[str, Any]) -> str:
    """The per-category table printed by `chimein eval --addresses` (and in the README)."""
    lines = ["| category | n | labelled | rule: direct / ambiguous / none | precision | recall |",
             "|---|---|---|---|---|---|"]
    for cat, r in result["categories"].items():
        labels = ", ".join(f"{k} {v}" for k, v in r["labels"].items())
        lines.append(f"| {cat} | {r['n']} | {labels} | {r['direct']} / {r['ambiguous']} / "
                     f"{r['none']} | {_f(r['precision'])} | {_f(r['recall'])} |")
    for lang, r in result["languages"].items():
        lines.append(f"| lang={lang} | {r['n']} | | | {_f(r['precision'])} | "
                     f"{_f(r['recall'])} |")
    a = result["all"]
    lines.append(f"| **all** | {a['n']} | | | {_f(a['precision'])} | {_f(a['recall'])} |")
    lines.append("")
    lines.append(f"`not` taken as a direct address: {a['not_taken_as_direct']:.1%}; "
                 f"direct addresses missed: {len(a['missed_direct'])}")
    return "\n".join(lines)
