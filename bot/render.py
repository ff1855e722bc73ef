"""Turns <-> the model's chat template: token ids and a loss mask.

The one renderer for training and inference. A channel is an alternating chat: each user
message is one user turn written `Name: text`, followed by one assistant turn that is either
`(silence)` or `(response) text`. This module is the only place that spells those markers.

Assistant spans are found by rendering growing prefixes of the conversation and diffing the
text (never by searching for marker token ids, which breaks where tokenization depends on
context), then mapping the character spans onto the tokens of the whole conversation through
the fast tokenizer's offsets. Templates that re-render earlier turns (so a prefix is not kept)
are detected: the renderer falls back to folding the system text into the first user turn, and
raises TemplateError if that still does not keep prefixes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bot.errors import ChimeinError
from bot.message import Turn, clean_text

log = logging.getLogger(__name__)

SILENCE = "(silence)"
RESPONSE = "(response)"
RESPONSE_PREFIX = RESPONSE + " "
ASSISTANT_NAME = "assistant"

# ChatML, used when a tokenizer has no chat template of its own (base models, tiny test models).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_MARKER_RE = re.compile(r"[ \t]?\(\s*(silence|response)\s*\)", re.IGNORECASE)
_NAME_BAD = re.compile(r"[\r\n:]+")
_PARTIAL_TAIL = re.compile(r"[ \t]?\(\s*(?:si(?:l(?:e(?:n(?:c(?:e)?)?)?)?)?|"
                           r"re(?:s(?:p(?:o(?:n(?:s(?:e)?)?)?)?)?)?)\s*$", re.IGNORECASE)
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")


class TemplateError(ChimeinError, ValueError):
    """The chat template cannot be used for incremental rendering or masking."""


def assistant_text(turn: Turn) -> str:
    """The exact text of an assistant turn as the model sees it."""
    return SILENCE if turn.content is None else RESPONSE_PREFIX + turn.content


def user_text(turn: Turn) -> str:
    name = _NAME_BAD.sub(" ", turn.name or "someone").strip() or "someone"
    return f"{name}: {turn.content or ''}"


def strip_markers(text: str) -> str:
    """Remove every marker a model may emit, and characters no chat should receive (control
    characters other than newline/tab, a bare carriage return (made a newline), U+FFFD from
    bytes cut mid-character): the result is what may be posted."""
    text = clean_text(text)
    while True:  # to a fixed point: removing one marker may join the pieces of another
        before = text
        text = _MARKER_RE.sub("", text)
        text = _PARTIAL_TAIL.sub("", text)  # a marker cut off by max_new_tokens
        text = _BAD_CHARS.sub("", text)
        if text == before:
            return text.strip()


def with_silences(turns: Iterable[Turn]) -> list[Turn]:
    """Insert a silent assistant turn after each user turn that has none.

    Consecutive assistant turns are merged (a bot that posted twice), an assistant turn with no
    user turn before it (a greeting) is dropped: the shape is always strictly alternating.
    """
    out: list[Turn] = []
    for t in turns:
        if t.role == "system":
            if out:
                raise ValueError("a system turn may only come first")
            out.append(t)
        elif t.role == "user":
            if out and out[-1].role == "user":
                out.append(Turn("assistant", None, ASSISTANT_NAME))
            out.append(t)
        elif t.role == "assistant":
            if not out or out[-1].role == "system":
                log.debug("dropping an assistant turn that answers no user turn")
                continue
            if out[-1].role == "assistant":
                prev = out[-1]
                if t.content is None:
                    continue
                merged = t.content if prev.content is None else prev.content + "\n" + t.content
                out[-1] = Turn("assistant", merged, ASSISTANT_NAME)
            else:
                out.append(Turn("assistant", t.content, ASSISTANT_NAME))
        else:
            raise ValueError(f"unknown role {t.role!r}")
    if out and out[-1].role == "user":
        out.append(Turn("assistant", None, ASSISTANT_NAME))
    return out


@dataclass(frozen=True)
class Span:
    """An assistant turn in a rendered conversation: token range [start, end)."""

    start: int
    end: int
    silent: bool
    char_start: int
    char_end: int


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    mask: list[int]  # 1 where the token is part of an assistant turn (carries loss)
    spans: list[Span]
    text: str


@dataclass(frozen=True)
class DecisionInput:
    """Token ids to have in the cache for a decision, ending with the `(silence)` marker."""

    ids: list[int]  # history + new user turn(s) + assistant header + marker
    marker_start: int  # index of the first marker token (= length of the header prefix)
    response_ids: list[int]  # the forced `(response)` tokens that replace the marker to speak


class Renderer:
    """Renders conversations with one tokenizer's chat template.

    `tokenizer` must be a fast (Rust) tokenizer: offsets are needed to map text spans to tokens.
    """

    def __init__(self, tokenizer: Any, system_prompt: str = ""):
        if not getattr(tokenizer, "is_fast", False):
            raise TemplateError("chimein needs a fast tokenizer (tokenizer.json); "
                                f"{type(tokenizer).__name__} is a slow one")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        if not getattr(tokenizer, "chat_template", None):
            log.warning("tokenizer has no chat template: using ChatML")
            tokenizer.chat_template = CHATML_TEMPLATE
        self.fold_system = False
        self._probe()
        self.end_of_turn_ids = self._find_end_of_turn()

    # -- chat building -----------------------------------------------------------------
    def _chat(self, turns: Sequence[Turn]) -> list[dict[str, str]]:
        chat: list[dict[str, str]] = []
        system = self.system_prompt
        body = list(turns)
        if body and body[0].role == "system":
            system = "\n\n".join(x for x in (system, body[0].content or "") if x)
            body = body[1:]
        for t in body:
            if t.role == "user":
                chat.append({"role": "user", "content": user_text(t)})
            elif t.role == "assistant":
                chat.append({"role": "assistant", "content": assistant_text(t)})
            else:
                raise ValueError("a system turn may only come first")
        if system:
            if self.fold_system:
                if chat and chat[0]["role"] == "user":
                    chat[0] = {"role": "user", "content": system + "\n\n" + chat[0]["content"]}
            else:
                chat.insert(0, {"role": "system", "content": system})
        return chat

    def _template(self, chat: list[dict[str, str]], gen: bool) -> str:
        text = self.tokenizer.apply_chat_template(chat, tokenize=False,
                                                  add_generation_prompt=gen)
        return str(text)

    def _probe(self) -> None:
        """Check once that the template keeps prefixes, with and without a system turn."""
        sample = with_silences([Turn("user", "hi", "Ann"), Turn("user", "hello", "Bob"),
                                Turn("assistant", "hey", ASSISTANT_NAME),
                                Turn("user", "ok", "Ann")])
        probe_system = [Turn("system", "Be brief.")] + sample
        try:
            self._spans_text(probe_system)
            return
        except Exception as e:  # noqa: BLE001 - any template failure means: try folding
            first_error = e
        self.fold_system = True
        try:
            self._spans_text(probe_system)
            log.info("chat template does not take a system turn as a prefix-stable turn (%s): "
                     "folding system text into the first user turn", first_error)
        except Exception as e:
            raise TemplateError(
                f"this chat template does not keep earlier turns unchanged when a turn is "
                f"added, so the silence decision and the loss mask cannot be computed "
                f"incrementally ({e}). Use a template that keeps prefixes (e.g. ChatML) or "
                f"set one on the tokenizer.") from e

    def _spans_text(self, turns: Sequence[Turn]) -> tuple[str, list[tuple[int, int, bool]]]:
        """Full text and the character spans of each assistant turn, by growing prefixes."""
        chat = self._chat(turns)
        full = self._template(chat, gen=False)
        roles = [t for t in turns if t.role != "system"]
        offset = 1 if chat and chat[0]["role"] == "system" else 0
        spans = []
        for i, t in enumerate(roles):
            if t.role != "assistant":
                continue
            k = i + offset
            before = self._template(chat[:k], gen=True)
            upto = self._template(chat[: k + 1], gen=False)
            if not upto.startswith(before):
                raise TemplateError(f"turn {i}: the rendering with a generation prompt is not a "
                                    f"prefix of the rendering with the assistant turn")
            if not full.startswith(upto):
                raise TemplateError(f"turn {i}: adding later turns changed how earlier turns "
                                    f"render (prefix not preserved)")
            content = chat[k]["content"]
            rel = upto.find(content, len(before))
            if rel < 0:
                raise TemplateError(f"turn {i}: the template altered the assistant text")
            spans.append((len(before), len(upto), t.content is None))
        return full, spans

    def _tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def _find_end_of_turn(self) -> list[int]:
        enc = self.encode([Turn("user", "hi", "Ann"), Turn("assistant", "ok", ASSISTANT_NAME)])
        span = enc.spans[-1]
        special = set(self.tokenizer.all_special_ids)
        eot = [i for i in enc.ids[span.start:span.end] if i in special]
        ids = []
        if eot:
            ids.append(eot[0])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        if not ids:
            raise TemplateError("cannot find an end-of-turn token in the chat template")
        return ids

    # -- public API ----------------------------------------------------------------------
    def text(self, turns: Sequence[Turn], add_generation_prompt: bool = False) -> str:
        return self._template(self._chat(turns), gen=add_generation_prompt)

    def encode(self, turns: Sequence[Turn]) -> Encoded:
        """Ids and loss mask for a whole conversation (silences already inserted)."""
        full, char_spans = self._spans_text(turns)
        ids, offsets = self._tokenize(full)
        mask = [0] * len(ids)
        spans = []
        for cs, ce, silent in char_spans:
            toks = [j for j, (s, e) in enumerate(offsets) if e > cs and s < ce and e > s]
            if not toks:
                continue
            for j in toks:
                mask[j] = 1
            spans.append(Span(toks[0], toks[-1] + 1, silent, cs, ce))
        return Encoded(ids, mask, spans, full)

    def decision_input(self, turns: Sequence[Turn]) -> DecisionInput:
        """`turns` ends with the new user turn(s); the marker follows them.

        The ids come from tokenizing the whole conversation with the silence turn in place,
        exactly as training tokenizes it.
        """
        base = list(turns)
        if base and base[-1].role == "assistant":
            raise ValueError("decision_input wants a conversation that ends with a user turn")
        chat = self._chat(base + [Turn("assistant", None, ASSISTANT_NAME)])
        prefix = self._template(chat[:-1], gen=True)
        full = self._template(chat, gen=False)
        m_lo = full.find(SILENCE, len(prefix))
        if not full.startswith(prefix) or m_lo < 0 or full[len(prefix):m_lo].strip():
            raise TemplateError("the assistant turn does not follow the generation prompt")
        ids, offsets = self._tokenize(full)
        m_hi = m_lo + len(SILENCE)
        marker = [j for j, (s, e) in enumerate(offsets) if e > m_lo and s < m_hi and e > s]
        start, end = marker[0], marker[-1] + 1

        chat_r = chat[:-1] + [{"role": "assistant", "content": RESPONSE_PREFIX + "x"}]
        full_r = self._template(chat_r, gen=False)
        ids_r, offs_r = self._tokenize(full_r)
        r_lo = full_r.find(RESPONSE, len(prefix))
        if r_lo != m_lo:
            raise TemplateError("the template places (silence) and (response) differently")
        r_hi = m_lo + len(RESPONSE)
        resp = [j for j, (s, e) in enumerate(offs_r) if e > m_lo and s < r_hi and e > s]
        if ids_r[: resp[0]] != ids[:start]:
            raise TemplateError("the assistant header tokenizes differently before "
                                "(silence) and (response)")
        forced = [ids_r[j] for j in resp if offs_r[j][1] <= r_hi]
        return DecisionInput(ids[:end], start, forced)

    def generation_prompt_ids(self, turns: Sequence[Turn]) -> list[int]:
        """Ids of the conversation followed by the assistant header (for baselines)."""
        return self._tokenize(self.text(turns, add_generation_prompt=True))[0]


def from_records(records: Sequence[dict[str, Any]]) -> list[Turn]:
    """The JSONL conversation format (`{"role","name","content"}` items) -> Turns."""
    turns = []
    for r in records:
        role = r.get("role")
        content = r.get("content")
        if role == "assistant":
            text = None if content is None else str(content).strip()
            if text is not None and text.lower().startswith(RESPONSE):
                text = text[len(RESPONSE):].strip()
            if text is not None and strip_markers(text) == "":
                text = None  # "(silence)" written out, or an empty turn
            turns.append(Turn("assistant", text, ASSISTANT_NAME))
        elif role == "user":
            turns.append(Turn("user", str(content or ""), str(r.get("name") or "someone")))
        elif role == "system":
            turns.append(Turn("system", str(content or "")))
        else:
            raise ValueError(f"unknown role {role!r}")
    return turns


def to_records(turns: Sequence[Turn], include_silence: bool = False) -> list[dict[str, Any]]:
    """Turns -> the JSONL conversation format (silences omitted unless asked for)."""
    out: list[dict[str, Any]] = []
    for t in turns:
        if t.silent and not include_silence:
            continue
        rec: dict[str, Any] = {"role": t.role, "content": t.content}
        if t.name:
            rec["name"] = t.name
        out.append(rec)
    return out
