"""A scripted engine for fast tests of everything around the model (core, adapters, store).

It is the real decision skeleton (bot.engine.decision) over a backend made of two functions,
the way httpx's MockTransport is a handler: `script(turns)` gives p_silence (default 0.9:
silent) and `answer(turns)` the answer, where `turns` is the history as the model would see
it (silence turns included, ending in the silence turn of the decision). Tests of the real
model use TransformersEngine on a tiny local model.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence

from bot.engine.base import Decision
from bot.engine.decision import DecisionEngine, Scored
from bot.message import Turn
from bot.render import DecisionInput
from bot.sessions import Session


def _default_answer(turns: Sequence[Turn]) -> str:
    last = [t for t in turns if t.role == "user"][-1]
    return f"echo: {last.content}"


class ScriptedBackend:
    """score = `script(turns)`, generate = `answer(turns)`; `delay` seconds per decision."""

    def __init__(self, script: Callable[[Sequence[Turn]], float],
                 answer: Callable[[Sequence[Turn]], str], delay: float,
                 calls: list[tuple[str, int]], word_delay: float = 0.0):
        self.script, self.answer, self.delay, self.calls = script, answer, delay, calls
        self.word_delay = word_delay  # > 0: the answer is written a word at a time

    def score(self, session: Session, d: DecisionInput | None,
              turns: Sequence[Turn]) -> Scored:
        if self.delay:
            time.sleep(self.delay)
        return Scored(float(self.script(turns)), 0)

    def prefill(self, session: Session, ids: list[int], budget: int) -> bool:
        return False  # no local cache to fill

    def generate(self, session: Session, d: DecisionInput | None, turns: Sequence[Turn],
                 on_text: Callable[[str], None] | None) -> str:
        self.calls.append(("respond", len(turns)))
        text = self.answer(turns)
        if on_text and self.word_delay > 0:
            words = re.findall(r"\S+\s*", text)
            for i in range(1, len(words) + 1):
                time.sleep(self.word_delay)
                on_text("".join(words[:i]))
        elif on_text:
            on_text(text)
        return text

    def close(self) -> None:
        pass


class ScriptedEngine(DecisionEngine):
    """The skeleton over ScriptedBackend; `calls` records ("decide"|"respond"|"observe",
    n_turns) for tests."""

    def __init__(self, script: Callable[[Sequence[Turn]], float] | None = None,
                 answer: Callable[[Sequence[Turn]], str] | None = None, *,
                 version: str = "scripted", delay: float = 0.0, word_delay: float = 0.0):
        self.calls: list[tuple[str, int]] = []
        super().__init__(ScriptedBackend(script or (lambda turns: 0.9),
                                         answer or _default_answer, delay, self.calls,
                                         word_delay),
                         None, version=version, fallback_answer="…")

    def observe(self, session: Session, new_turns: Sequence[Turn]) -> None:
        self.calls.append(("observe", len(new_turns)))
        super().observe(session, new_turns)

    def decide(self, session: Session, new_turns: Sequence[Turn], *, threshold: float,
               force: bool = False) -> Decision:
        self.calls.append(("decide", len(new_turns)))
        return super().decide(session, new_turns, threshold=threshold, force=force)
