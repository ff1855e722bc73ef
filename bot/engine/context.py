"""What every backend feeds for a decision: the history, the new turns, and overflow handling.

One function for all backends, so the transformers, OpenVINO and OpenAI-compatible engines
render a decision the same way, and the same way training does:

- A burst of user messages decided at once (the core coalesces them) gets a `(silence)` turn
  after each message but the last, exactly as `with_silences` puts it into the history and
  into training data. Feeding them back to back would be a shape the model never saw (and
  templates that demand strict alternation refuse it).
- Context overflow: when history + new turns + room for an answer (`max_new_tokens`) do not
  fit in `max_context`, the oldest (user, assistant) pairs are dropped in ONE chunk, so that
  what is left fills `trim_to` of the room. The next messages then fit again for a while:
  the cache is rebuilt once per chunk, not on every message.
- A single message too long for the room on its own is cut (halving its text until it fits);
  the cut turn is what joins the history, so the next decision does not overflow on it again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bot.message import Turn
from bot.render import DecisionInput, Renderer, with_silences
from bot.sessions import Session

log = logging.getLogger(__name__)


def render_decision(renderer: Renderer, history: Sequence[Turn],
                    new_turns: Sequence[Turn]) -> DecisionInput:
    """Decision ids for `history` (already alternating) + the new user turns, with a silence
    turn between new turns, ending in the assistant header + the `(silence)` marker."""
    return renderer.decision_input(with_silences(list(history) + list(new_turns))[:-1])


def fit_context(renderer: Renderer, session: Session, new_turns: Sequence[Turn], *,
                max_context: int, max_new_tokens: int, trim_to: float
                ) -> tuple[DecisionInput, list[Turn]]:
    """The decision input for `new_turns` on top of `session.turns`, trimming the history once
    when it overflows. Returns the input and the new turns as fed (the last one may be cut).
    On a trim, `session.turns` loses the dropped turns and the session's cache is dropped."""
    new = list(new_turns)
    history = with_silences(session.turns)
    d = render_decision(renderer, history, new)
    room = max(1, max_context - max_new_tokens)
    if len(d.ids) <= room:
        return d, new
    target = max(1, int(room * trim_to))
    system = history[:1] if history and history[0].role == "system" else []
    body = history[len(system):]
    lo, hi = 0, len(body) // 2  # how many (user, assistant) pairs to drop
    best: DecisionInput | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        cand = render_decision(renderer, system + body[2 * mid:], new)
        if len(cand.ids) <= target:
            best, hi = cand, mid - 1
        else:
            lo = mid + 1
    if best is None:  # the new turns alone overflow: keep the newest one, cut to fit
        best, last = _cut(renderer, system, new[-1], target)
        new = [last]
        session.turns = list(system)
    else:
        session.turns = system + body[2 * lo:]
    session.drop_cache()
    session.trims += 1
    log.info("context overflow in %s: kept %d history turns, %d tokens (room %d)", session.key,
             len(session.turns), len(best.ids), room)
    return best, new


def _cut(renderer: Renderer, system: list[Turn], last: Turn,
         target: int) -> tuple[DecisionInput, Turn]:
    text = last.content or ""
    while True:
        text = text[: max(1, len(text) // 2)]
        turn = Turn("user", text + " [cut]", last.name)
        cand = renderer.decision_input(system + [turn])
        if len(cand.ids) <= target or len(text) <= 1:
            return cand, turn
