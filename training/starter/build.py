"""Merge the starter dataset's parts into train.jsonl / valid.jsonl and count every category.

    python -m training.starter.build          (or: python training/starter/build.py)

Reads `parts/*.jsonl` in file-name order, checks every line (a bad line is reported with its
file and line number and left out), drops repeated ids (the first one wins), splits about 10%
into validation stratified by language (a seeded hash of the id decides, so the split does not
depend on file order and is the same on every run), and rewrites README.md with the counts.
Running it twice on the same parts gives byte-identical files.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from training.data import (
    LANGUAGES,
    STARTER_DIR,
    Example,
    decision_points,
    read_file,
    split,
    write_jsonl,
)

VALID_FRACTION = 0.1
SEED = 0
BEHAVIOURS = ("addressed", "follow-up", "chime-in", "hard-negative", "never-speaks", "refusal")


def _speakers(ex: Example) -> int:
    return len({r.get("name") for r in ex.records if r["role"] == "user"})


def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def describe(train: Sequence[Example], valid: Sequence[Example]) -> dict[str, dict[str, Any]]:
    """Counts per split and category, from the tags and from the conversations themselves."""
    from bot.policy import Addressing

    addressing = Addressing(("assistant", "助手"))
    out: dict[str, dict[str, Any]] = {}
    for name, exs in (("train", train), ("valid", valid), ("all", list(train) + list(valid))):
        langs: Counter[str] = Counter()
        behaviours: Counter[str] = Counter()
        domains: Counter[str] = Counter()
        turns: Counter[int] = Counter()  # user turns per conversation
        user_turns = speak = addressed = never = 0
        for ex in exs:
            langs[ex.language] += 1
            for t in ex.tags:
                if t in LANGUAGES:
                    continue
                (behaviours if t in BEHAVIOURS else domains)[t] += 1
            points = decision_points(ex.turns)
            turns[len(points)] += 1
            user_turns += len(points)
            speak += sum(p.speak for p in points)
            addressed += sum(addressing.is_addressed(p.text) for p in points)
            never += not any(p.speak for p in points)
        out[name] = {"conversations": len(exs), "languages": langs, "behaviours": behaviours,
                     "domains": domains, "user_turns": user_turns, "speak": speak,
                     "addressed": addressed, "never_speaks": never,
                     "speakers": Counter(_speakers(ex) for ex in exs),
                     "turns": turns}
    return out


def readme(stats: dict[str, dict[str, Any]], sources: Sequence[tuple[str, int]],
           problems: Sequence[str]) -> str:
    s_all = stats["all"]
    s_tr = stats["train"]
    s_va = stats["valid"]
    n = s_all["conversations"] or 1
    lines = [
        "# Starter dataset",
        "",
        "Hand-written group-chat conversations in the JSONL conversation format (one",
        "conversation a line: `{\"id\", \"tags\", \"messages\": [{\"role\", \"name\", \"content\"}]}`,",
        "an assistant message only where the assistant speaks; every other user turn is a",
        "silence point). `train.jsonl` and `valid.jsonl` are generated from `parts/*.jsonl` by",
        "`python -m training.starter.build`, which also rewrites this file: do not edit them by",
        "hand. The split is about 10% validation, stratified by language, decided by a seeded",
        "hash of each conversation id.",
        "",
        "Check a file with `chimein data check training/starter/train.jsonl`.",
        "",
        "## Totals",
        "",
    ]
    rows = []
    for key, label in (("conversations", "conversations"), ("user_turns", "user turns"),
                       ("speak", "speak points (assistant answers)"),
                       ("addressed", "addressed turns (wake-word rule)"),
                       ("never_speaks", "conversations where the assistant never speaks")):
        rows.append([label, s_tr[key], s_va[key], s_all[key]])
    silent = [s["user_turns"] - s["speak"] for s in (s_tr, s_va, s_all)]
    rows.insert(3, ["silence points", *silent])
    lines += _table(["", "train", "valid", "all"], rows)
    lines += ["", "## Languages", ""]
    lines += _table(["language", "train", "valid", "all", "share"],
                    [[lang, s_tr["languages"][lang], s_va["languages"][lang],
                      s_all["languages"][lang], f"{s_all['languages'][lang] / n:.1%}"]
                     for lang in LANGUAGES])
    lines += ["", "## Behaviours (tags)", ""]
    lines += _table(["behaviour", "train", "valid", "all"],
                    [[b, s_tr["behaviours"][b], s_va["behaviours"][b], s_all["behaviours"][b]]
                     for b in BEHAVIOURS])
    lines += ["", "## Domains (tags)", ""]
    doms = sorted(s_all["domains"], key=lambda d: (-s_all["domains"][d], d))
    lines += _table(["domain", "train", "valid", "all"],
                    [[d, s_tr["domains"][d], s_va["domains"][d], s_all["domains"][d]]
                     for d in doms])
    lines += ["", "## Shape", ""]
    lines += _table(["speakers", "conversations"],
                    [[k, v] for k, v in sorted(s_all["speakers"].items())])
    lines += [""]
    turns = s_all["turns"]
    lines += _table(["user turns", "conversations"],
                    [[f"{lo}-{hi}", sum(v for k, v in turns.items() if lo <= k <= hi)]
                     for lo, hi in ((1, 5), (6, 8), (9, 12), (13, 16), (17, 999))])
    lines += ["", "## Sources", ""]
    lines += _table(["part", "conversations"], [[src, k] for src, k in sources])
    if problems:
        lines += ["", "## Left out by the build", ""]
        lines += [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def build(parts_dir: Path = STARTER_DIR / "parts", out_dir: Path = STARTER_DIR) -> tuple[int, int, list[str]]:
    """Merge, split and write; returns (train, valid, problems)."""
    problems: list[str] = []
    examples: list[Example] = []
    seen: dict[str, str] = {}
    sources = []
    for part in sorted(parts_dir.glob("*.jsonl")):
        loaded = read_file(part)
        rel = part.relative_to(out_dir) if part.is_relative_to(out_dir) else part
        problems += [e.replace(str(part), str(rel)) for e in loaded.errors]
        kept = 0
        for ex in loaded.examples:
            where = f"{rel}:{ex.line}"
            if ex.id in seen:
                problems.append(f"{where}: id {ex.id!r} repeats {seen[ex.id]}: left out")
                continue
            seen[ex.id] = where
            examples.append(ex)
            kept += 1
        sources.append((str(rel), kept))
    train, valid = split(examples, VALID_FRACTION, SEED)
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "valid.jsonl", valid)
    text = readme(describe(train, valid), sources, problems)
    (out_dir / "README.md").write_text(text, encoding="utf-8")
    return len(train), len(valid), problems


def main() -> int:
    n_train, n_valid, problems = build()
    for p in problems:
        print(f"left out {p}", file=sys.stderr)
    print(f"wrote {n_train} train and {n_valid} valid conversations to {STARTER_DIR} "
          f"({len(problems)} problem(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
