"""JSONL <-> conversations for training and evaluation: reading, checks, stats, splits.

One conversation a line, in the widely used form: a bare list of `{"role", "name", "content"}`
items, or an object with `"messages"` (that list) and optional `"id"` and `"tags"`. An assistant
item appears only where the assistant spoke; every other user turn is a silence point. Lines
are parsed by `bot.transcript` (the same reader `chimein replay` uses) and turned into
`bot.message.Turn`s by `bot.render.from_records`, so training, evaluation and serving agree on
what a conversation is. Every problem is reported as `FILE:LINE: what`, the line is skipped,
and nothing here raises on bad content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.message import Turn
from bot.render import RESPONSE, SILENCE, from_records, strip_markers, with_silences
from bot.transcript import Conversation, iter_jsonl

log = logging.getLogger(__name__)

STARTER_DIR = Path(__file__).resolve().parent / "starter"  # the bundled starter data set
LANGUAGES = ("en", "zh", "mixed")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")


@dataclass(frozen=True)
class Example:
    """One conversation from a file, with where it came from (for messages and hashes)."""

    source: str
    line: int
    id: str
    tags: tuple[str, ...]
    records: list[dict[str, Any]]

    @property
    def turns(self) -> list[Turn]:
        """Strictly alternating turns, silences inserted (what the renderer trains on)."""
        return with_silences(from_records(self.records))

    @property
    def language(self) -> str:
        return language_of(self)


@dataclass(frozen=True)
class DecisionPoint:
    """A user turn and what the gold data did after it."""

    index: int  # position of the user turn in `Example.turns`
    speaker: str
    text: str
    speak: bool  # the gold data has an assistant answer right after this turn
    answer: str | None


@dataclass
class Loaded:
    """The good conversations of some files and every problem found, in file/line order."""

    examples: list[Example] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "FILE:LINE: problem" (line skipped)
    warnings: list[str] = field(default_factory=list)  # "FILE:LINE: note" (line kept)


def conversation_id(records: Sequence[dict[str, Any]]) -> str:
    """A stable id for a conversation without one: a hash of its canonical JSON."""
    blob = json.dumps(list(records), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "sha-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _check(conv: Conversation) -> list[str]:
    """Things that are not fatal but change what is trained on."""
    notes = []
    recs = conv.records
    first_body = next((r for r in recs if r["role"] != "system"), None)
    if first_body is not None and first_body["role"] == "assistant":
        notes.append("starts with an assistant message, which answers nobody: it is dropped")
    for i in range(1, len(recs)):
        if recs[i]["role"] == "assistant" and recs[i - 1]["role"] == "assistant":
            notes.append(f"messages {i - 1} and {i}: consecutive assistant messages are merged")
    for i, r in enumerate(recs):
        content = r.get("content")
        if r["role"] == "assistant" and content is not None:
            text = str(content).strip()
            if text.lower().startswith(RESPONSE):
                text = text[len(RESPONSE):].strip()
            if text and not strip_markers(text):
                continue  # an explicit silence marker is allowed
            if strip_markers(text) != text:
                notes.append(f"message {i}: assistant text contains a marker or control "
                             "characters; they are removed")
        elif r["role"] == "user":
            if not str(content).strip():
                notes.append(f"message {i}: empty user message")
            elif SILENCE in str(content):
                notes.append(f"message {i}: a user message contains {SILENCE!r}")
    return notes


def read_file(path: str | Path) -> Loaded:
    """Read one JSONL file. A file that cannot be opened is reported, not raised."""
    out = Loaded()
    p = Path(path)
    if not p.exists():
        out.errors.append(f"{p}: no such file")
        return out
    if p.is_dir():
        out.errors.append(f"{p}: is a folder, not a JSONL file")
        return out
    try:
        for n, conv, err in iter_jsonl(p):
            if err is not None or conv is None:
                out.errors.append(f"{p}:{n}: {err}")
                continue
            out.warnings += [f"{p}:{n}: {note}" for note in (*conv.notes, *_check(conv))]
            cid = conv.id or conversation_id(conv.records)
            out.examples.append(Example(str(p), n, cid, conv.tags, conv.records))
    except OSError as e:
        out.errors.append(f"{p}: cannot read ({e.strerror or e})")
    return out


def read_files(paths: Iterable[str | Path]) -> Loaded:
    """Read several files; duplicate ids across them are reported (both kept)."""
    out = Loaded()
    seen: dict[str, str] = {}
    for path in paths:
        one = read_file(path)
        out.errors += one.errors
        out.warnings += one.warnings
        for ex in one.examples:
            where = f"{ex.source}:{ex.line}"
            if ex.id in seen:
                out.warnings.append(f"{where}: id {ex.id!r} already used at {seen[ex.id]}")
            else:
                seen[ex.id] = where
            out.examples.append(ex)
    return out


def write_jsonl(path: str | Path, examples: Iterable[Example]) -> int:
    """Write examples as `{"id", "tags", "messages"}` lines (UTF-8, one per line)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for ex in examples:
            obj = {"id": ex.id, "tags": list(ex.tags), "messages": ex.records}
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(p)
    return n


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- what a conversation holds ---------------------------------------------------------------
def decision_points(turns: Sequence[Turn]) -> list[DecisionPoint]:
    """Every user turn of an alternating conversation and the gold decision after it."""
    points = []
    for i, t in enumerate(turns):
        if t.role != "user":
            continue
        nxt = turns[i + 1] if i + 1 < len(turns) else None
        speak = nxt is not None and nxt.role == "assistant" and nxt.content is not None
        points.append(DecisionPoint(i, t.name or "", t.content or "", speak,
                                    nxt.content if speak and nxt is not None else None))
    return points


def detect_language(texts: Iterable[str]) -> str:
    """'zh', 'en' or 'mixed' from the user and assistant text (CJK vs Latin words)."""
    cjk = latin = 0
    for t in texts:
        cjk += len(_CJK.findall(t))
        latin += len(_LATIN_WORD.findall(t))
    if cjk == 0:
        return "en"
    # A Chinese chat with a few English terms (PR, deploy, CI) is still Chinese: up to one
    # Latin word per five characters.
    if latin <= cjk * 0.2:
        return "zh"
    if cjk <= 2:
        return "en"
    return "mixed"


def language_of(ex: Example) -> str:
    """The language tag when the data has one, else detected from the text."""
    for t in ex.tags:
        if t in LANGUAGES:
            return t
    return detect_language(str(r.get("content") or "") for r in ex.records)


@dataclass
class Stats:
    conversations: int = 0
    user_turns: int = 0
    speak_points: int = 0
    silence_points: int = 0
    addressed_turns: int = 0
    speakers: Counter[int] = field(default_factory=Counter)  # speakers per conversation
    languages: Counter[str] = field(default_factory=Counter)
    tags: Counter[str] = field(default_factory=Counter)
    tokens: int | None = None
    loss_tokens: int | None = None  # assistant tokens (the only ones that carry loss)
    max_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "conversations": self.conversations, "user_turns": self.user_turns,
            "speak_points": self.speak_points, "silence_points": self.silence_points,
            "addressed_turns": self.addressed_turns,
            "speakers": {str(k): v for k, v in sorted(self.speakers.items())},
            "languages": dict(sorted(self.languages.items())),
            "tags": dict(sorted(self.tags.items())),
            "tokens": self.tokens, "loss_tokens": self.loss_tokens,
            "max_tokens": self.max_tokens,
        }


def stats(examples: Sequence[Example], *, renderer: Any = None,
          wake_words: Sequence[str] = ("assistant", "助手")) -> Stats:
    """Counts over examples; tokens too when a `bot.render.Renderer` is given."""
    from bot.policy import Addressing

    addressing = Addressing(wake_words)
    s = Stats()
    if renderer is not None:
        s.tokens = s.loss_tokens = s.max_tokens = 0
    for ex in examples:
        turns = ex.turns
        points = decision_points(turns)
        s.conversations += 1
        s.user_turns += len(points)
        s.speak_points += sum(p.speak for p in points)
        s.silence_points += sum(not p.speak for p in points)
        s.addressed_turns += sum(addressing.is_addressed(p.text) for p in points)
        s.speakers[len({p.speaker for p in points})] += 1
        s.languages[ex.language] += 1
        s.tags.update(ex.tags)
        if renderer is not None:
            enc = renderer.encode(turns)
            s.tokens = (s.tokens or 0) + len(enc.ids)
            s.loss_tokens = (s.loss_tokens or 0) + sum(enc.mask)
            s.max_tokens = max(s.max_tokens or 0, len(enc.ids))
    return s


def format_stats(s: Stats) -> str:
    lines = [
        f"conversations   {s.conversations}",
        f"user turns      {s.user_turns}",
        f"speak points    {s.speak_points}"
        + (f" ({s.speak_points / s.user_turns:.1%} of user turns)" if s.user_turns else ""),
        f"silence points  {s.silence_points}",
        f"addressed turns {s.addressed_turns} (by the wake-word rule)",
        "languages       " + (", ".join(f"{k} {v}" for k, v in sorted(s.languages.items()))
                              or "-"),
        "speakers        " + (", ".join(f"{k}: {v}" for k, v in sorted(s.speakers.items()))
                              or "-"),
    ]
    if s.tokens is not None:
        mean = s.tokens / s.conversations if s.conversations else 0
        lines.append(f"tokens          {s.tokens} (mean {mean:.0f}, max {s.max_tokens} a "
                     f"conversation; {s.loss_tokens} carry loss)")
    else:
        lines.append("tokens          not counted: tokens depend on the model; pass --tokenizer "
                     "MODEL (or set model.path)")
    if s.tags:
        lines.append("tags            " + ", ".join(f"{k} {v}" for k, v in
                                                    sorted(s.tags.items(), key=lambda kv: (-kv[1], kv[0]))))
    return "\n".join(lines)


# -- splits ----------------------------------------------------------------------------------
def split(examples: Sequence[Example], valid_fraction: float = 0.1, seed: int = 0
          ) -> tuple[list[Example], list[Example]]:
    """Deterministic train/valid split, stratified by language.

    Within each language the examples are ordered by a seeded hash of their id (so the split
    does not depend on file order) and the first round(fraction * n) go to validation, at
    least one where a language has two or more conversations.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError("valid_fraction must be in [0, 1)")
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.language, []).append(ex)

    def key(ex: Example) -> tuple[str, str]:
        # the id (and the content, for repeated ids) decides: never the file or line order
        return (hashlib.sha256(f"{seed}:{ex.id}".encode()).hexdigest(),
                conversation_id(ex.records))

    valid_ids: set[int] = set()
    for _lang, group in sorted(groups.items()):
        ordered = sorted(group, key=key)
        k = round(valid_fraction * len(ordered))
        if valid_fraction > 0 and k == 0 and len(ordered) >= 2:
            k = 1
        valid_ids.update(id(ex) for ex in ordered[:k])
    train = [ex for ex in examples if id(ex) not in valid_ids]
    valid = [ex for ex in examples if id(ex) in valid_ids]
    return train, valid
