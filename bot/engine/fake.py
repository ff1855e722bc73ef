"""A scripted engine for fast tests of everything around the model (core, adapters, store).

It follows the Engine protocol exactly (history shape included) but decides by a rule instead
of a model: `p_silence` comes from `script(turns)` (default: 0.9 = silent), and the answer from
`answer(turns)`. Tests of the real model use TransformersEngine on a tiny local model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from bot.engine.base import Decision
from bot.message import Turn
from bot.render import strip_markers, with_silences
from bot.sessions import Session


def _default_answer(turns: Sequence[Turn]) -> str:
    last = [t for t in turns if t.role == "user"][-1]
    return f"echo: {last.content}"


class ScriptedEngine:
    def __init__(self, script: Callable[[Sequence[Turn]], float] | None = None,
                 answer: Callable[[Sequence[Turn]], str] | None = None, *,
                 version: str = "scripted", delay: float = 0.0):
        self.script = script or (lambda turns: 0.9)
        self.answer = answer or _default_answer
        self.version = version
        self.delay = delay
        self.calls: list[tuple[str, int]] = []  # ("decide"|"respond"|"observe", n_turns)
        self.lock = threading.Lock()

    def observe(self, session: Session, new_turns: Sequence[Turn]) -> None:
        self.calls.append(("observe", len(new_turns)))
        session.turns = with_silences(session.turns + list(new_turns))

    def decide(self, session: Session, new_turns: Sequence[Turn], *, threshold: float,
               force: bool = False) -> Decision:
        t0 = time.perf_counter()
        if self.delay:
            time.sleep(self.delay)
        self.calls.append(("decide", len(new_turns)))
        turns = with_silences(session.turns + list(new_turns))
        p = float(self.script(turns))
        session.turns = turns
        speak = force or p < threshold
        session.pending = speak or None
        return Decision(p, speak, force, fed_tokens=len(new_turns),
                        latency_ms=(time.perf_counter() - t0) * 1000)

    def respond(self, session: Session, on_text: Callable[[str], None] | None = None) -> str:
        if not session.pending:
            raise RuntimeError("respond() called without a speaking decision")
        session.pending = None
        self.calls.append(("respond", len(session.turns)))
        text = strip_markers(self.answer(session.turns)) or "…"
        if on_text:
            on_text(text)
        session.turns = session.turns[:-1] + [Turn("assistant", text, "assistant")]
        return text

    def close(self) -> None:
        pass
