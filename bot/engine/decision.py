"""The one decide/respond skeleton every backend runs under.

`DecisionEngine` implements the Engine protocol once: keep the user turns, fit the context
(bot.engine.context), let the backend score the `(silence)` marker, add the silence turns to
the history, compare with the threshold, remember the pending answer, and after generation
strip the markers and fall back to `fallback_answer` when nothing is left. A backend supplies
only the two things that differ:

- `score(session, d, turns) -> Scored`: the probability of the whole marker that ends `d` (the
  rendered decision input), feeding what its cache lacks; `turns` is the history as it will
  be after the decision (ending in the silence turn), for backends that do not render.
- `generate(session, d, turns, on_text) -> str`: the raw answer after a speaking decision
  (the engine strips markers); the backend leaves its cache at the assistant header.

Like httpx's MockTransport is a handler, the scripted test engine is a score function and an
answer function (bot.engine.fake).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bot.config import BotSettings
from bot.engine.base import Decision
from bot.engine.context import fit_context, render_decision
from bot.message import Turn, assistant
from bot.render import DecisionInput, Renderer, strip_markers, with_silences
from bot.sessions import Session
from bot.stream import visible

DEFAULT_FALLBACK: str = BotSettings.fallback_answer  # the one default, config's


@dataclass(frozen=True)
class Scored:
    """What a backend's `score` returns."""

    p_silence: float
    fed_tokens: int  # tokens run through the model for it
    recomputed: bool = False  # the cached prefix did not match and was rebuilt


class Backend(Protocol):
    """What a model backend supplies to the decision skeleton."""

    def score(self, session: Session, d: DecisionInput | None,
              turns: Sequence[Turn]) -> Scored: ...

    def generate(self, session: Session, d: DecisionInput | None, turns: Sequence[Turn],
                 on_text: Callable[[str], None] | None) -> str: ...

    def prefill(self, session: Session, ids: list[int], budget: int) -> bool:
        """Feed at most `budget` of the `ids` the session's cache lacks; True while more than
        one chunk remains. Backends without a local cache return False."""
        ...

    def close(self) -> None: ...


def decode(logits: Any, *, sample: Callable[[Any], int], step: Callable[[int], Any],
           tokenizer: Any, end_of_turn: Sequence[int], max_new_tokens: int,
           on_text: Callable[[str], None] | None) -> str:
    """The answer loop of the in-process backends, over their own arrays (torch or numpy):
    `logits` predict the first token; `sample` picks one; `step(token)` feeds it and returns
    the next logits. No end of turn is allowed before the answer has content; `on_text` gets
    the decoded text after every token. Returns the raw text (markers not yet stripped)."""
    eot = list(end_of_turn)
    generated: list[int] = []
    text = ""
    for n in range(max_new_tokens):
        if not strip_markers(text):
            logits[eot] = -math.inf
        tok = sample(logits)
        if tok in eot:
            break
        generated.append(tok)
        text = tokenizer.decode(generated, skip_special_tokens=True)
        if on_text is not None:
            on_text(text)
        if n + 1 < max_new_tokens:
            logits = step(tok)
    return text


class DecisionEngine:
    """The Engine protocol over a backend. `renderer` is None only for backends that do not
    render (the scripted test engine): then no context is fitted and `d` is None."""

    max_concurrency = 1  # an in-process model; a server backend's engine sets more

    def __init__(self, backend: Backend, renderer: Renderer | None, *, version: str,
                 max_context_tokens: int = 2048, max_new_tokens: int = 200,
                 trim_to: float = 0.45, fallback_answer: str = ""):
        self.backend = backend
        self.renderer = renderer
        self.version = version
        self.max_context = max_context_tokens
        self.max_new_tokens = max_new_tokens
        self.trim_to = trim_to
        self.fallback_answer = fallback_answer or DEFAULT_FALLBACK

    def observe(self, session: Session, new_turns: Sequence[Turn]) -> None:
        session.pending = session.warming = None
        session.turns = with_silences(session.turns + list(new_turns))

    def decide(self, session: Session, new_turns: Sequence[Turn], *, threshold: float,
               force: bool = False) -> Decision:
        t0 = time.perf_counter()
        new = [t for t in new_turns if t.role == "user"]
        if not new:
            raise ValueError("decide() needs at least one new user turn")
        session.warming = None
        d: DecisionInput | None = None
        if self.renderer is not None:
            d, new = fit_context(self.renderer, session, new, max_context=self.max_context,
                                 max_new_tokens=self.max_new_tokens, trim_to=self.trim_to)
        turns = with_silences(session.turns + new)  # ends with the silence turn
        scored = self.backend.score(session, d, turns)
        if d is not None:
            session.ids = list(d.ids)
        session.turns = turns
        speak = force or scored.p_silence < threshold
        session.pending = (d, turns) if speak else None
        return Decision(p_silence=scored.p_silence, speak=speak, forced=force,
                        fed_tokens=scored.fed_tokens, recomputed=scored.recomputed,
                        latency_ms=(time.perf_counter() - t0) * 1000)

    def prefill(self, session: Session, new_turns: Sequence[Turn], budget: int) -> bool:
        """Part of a cold decision, done ahead: feed up to `budget` tokens of the history a
        decision on `new_turns` needs and the cache lacks (after an overflow, an eviction, in
        a new thread). True while more remains: the caller lets other conversations run, then
        calls again; decide() then feeds at most one chunk more."""
        new = [t for t in new_turns if t.role == "user"]
        if self.renderer is None or not new:
            return False
        if session.warming is None and session.cache is not None and session.ids:
            # A warm cache the new turns clearly fit on (an over-estimate: a token per two
            # UTF-8 bytes, plus the template): decide() feeds only them. No rendering here,
            # this runs before every decision.
            approx = len(session.ids) + 64 + sum(
                len((t.content or "").encode()) // 2 + 8 for t in new)
            if approx <= self.max_context - self.max_new_tokens:
                return False
        target = session.warming  # rendered once per rebuild, not once per chunk
        if target is None:
            d, _ = fit_context(self.renderer, session, new, max_context=self.max_context,
                               max_new_tokens=self.max_new_tokens, trim_to=self.trim_to)
            # up to the row before the marker: decide() needs that row's logits
            target = d.ids[: d.marker_start - 1]
        more = self.backend.prefill(session, target, budget)
        session.warming = target if more else None  # (a dropped cache clears it meanwhile)
        return more

    def respond(self, session: Session, on_text: Callable[[str], None] | None = None) -> str:
        pending: tuple[DecisionInput | None, list[Turn]] | None = session.pending
        if pending is None:
            raise RuntimeError("respond() called without a speaking decision")
        session.pending = None
        d, turns = pending
        # what a reader may see of the partial answer: never a marker, nor the start of one
        emit = None if on_text is None else (lambda text: on_text(visible(text)))
        answer = strip_markers(self.backend.generate(session, d, turns, emit))
        answer = answer or self.fallback_answer
        session.turns = session.turns[:-1] + [assistant(answer)]
        return answer

    def score_silence(self, turns: Sequence[Turn]) -> float:
        """p_silence for a whole conversation ending in user turns, with no cache (a check)."""
        d = render_decision(self.renderer, (), turns) if self.renderer is not None else None
        return self.backend.score(Session(key=None), d,  # type: ignore[arg-type]
                                  with_silences(list(turns))).p_silence

    def close(self) -> None:
        self.backend.close()
