"""The Engine protocol every backend implements, and what a decision returns.

Engines are synchronous and run on the core's single inference worker thread, off the event
loop. The engine owns each session's token ids and KV state.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bot.errors import ChimeinError
from bot.message import Turn
from bot.sessions import Session


def hub_offline() -> bool:
    """HF_HUB_OFFLINE=1: models and tokenizers load from local files only (a self-hosted bot,
    tests, CI); the one place that reads it."""
    return os.environ.get("HF_HUB_OFFLINE") == "1"


class EngineError(ChimeinError, RuntimeError):
    """A model could not be loaded or run; the message says what to change."""


@dataclass(frozen=True)
class Decision:
    """The outcome of one silence decision.

    `p_silence` is the model's probability of the whole `(silence)` marker after the new turns.
    `speak` is True when the message was addressed (forced) or `p_silence < threshold`.
    """

    p_silence: float
    speak: bool
    forced: bool = False
    fed_tokens: int = 0  # tokens run through the model for this decision
    recomputed: bool = False  # the cached prefix did not match: the history was recomputed
    latency_ms: float = 0.0


@runtime_checkable
class Engine(Protocol):
    """What the core needs from a model backend."""

    version: str  # the model version decisions are recorded with
    # How many conversations it can serve at once: 1 for a model in this process (one
    # inference thread), more for a server (the core then decides different conversations
    # concurrently, each conversation's messages still in order).
    max_concurrency: int

    def decide(self, session: Session, new_turns: Sequence[Turn], *, threshold: float,
               force: bool = False) -> Decision:
        """Add `new_turns` (user turns) to the session and decide whether to speak.

        After a silent decision the session holds the silence turn. After a speaking decision
        the caller must call `respond(session)` next.
        """
        ...

    def respond(self, session: Session, on_text: Callable[[str], None] | None = None) -> str:
        """Generate the answer after a speaking decision; the text never holds a marker and is
        never empty. `on_text` receives the growing text while streaming."""
        ...

    def prefill(self, session: Session, new_turns: Sequence[Turn], budget: int) -> bool:
        """Before a decision on a cold cache: feed up to `budget` tokens of the history it
        needs; True while more remains (the core lets other conversations run in between)."""
        ...

    def observe(self, session: Session, new_turns: Sequence[Turn]) -> None:
        """Add turns to the history without running the model (listen-only, other bots,
        messages the assistant posted outside a decision)."""
        ...

    def close(self) -> None:
        ...
