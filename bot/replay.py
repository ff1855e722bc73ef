"""Drive a core over JSONL conversations: `chimein replay`, the demo and evaluation use it.

Each user turn of a conversation file goes through the real core and engine as a message,
one at a time; the decision it got is yielded as a row (`replay_conversations`) or printed
(`replay_file`: text, or one JSON object per turn). With `history="gold"` the file's own
assistant turns replace the bot's in the history (evaluation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, TextIO

from bot.config import Settings
from bot.core import Core, DecisionRecord
from bot.message import ConversationKey, Message, Reply, Turn
from bot.render import ASSISTANT_NAME
from bot.transcript import read_jsonl
from bot.wiring import build_core, load_engine_async


class Collector:
    """An adapter that keeps what the core posts (replay, tests): errbot's TestBackend idea."""

    def __init__(self, platform: str = "test") -> None:
        self.platform = platform
        self.sent: list[Reply] = []
        self.typing_count = 0

    async def send(self, reply: Reply) -> str | None:
        self.sent.append(reply)
        return f"r{len(self.sent)}"

    @contextlib.asynccontextmanager
    async def typing(self, key: ConversationKey) -> AsyncIterator[None]:
        self.typing_count += 1
        yield


def _gold_after(records: list[dict[str, Any]]) -> list[str | None]:
    """For each user record in order: the gold assistant text right after it (None=silence)."""
    from bot.render import from_records

    turns = from_records(records)
    gold: list[str | None] = []
    for i, t in enumerate(turns):
        if t.role == "user":
            nxt = turns[i + 1] if i + 1 < len(turns) else None
            gold.append(nxt.content if nxt is not None and nxt.role == "assistant" else None)
    return gold


async def replay_conversations(core: Core, conversations: Iterable[Any], *,
                               history: str = "live") -> AsyncIterator[dict[str, Any]]:
    """Yield one result dict per user turn, running each through the real core."""

    core.add_adapter(Collector("replay"))
    records_seen: list[DecisionRecord] = []
    core.listeners.append(records_seen.append)
    try:
        for i, conv in enumerate(conversations):
            key = ConversationKey("replay", str(i))
            gold = _gold_after(conv.records)
            users = [r for r in conv.records if r["role"] == "user"]
            system = [r for r in conv.records if r["role"] == "system"]
            if system:
                core.engine.observe(core.sessions.get(key),
                                    [Turn("system", system[0]["content"])])
            for j, rec in enumerate(users):
                before = len(records_seen)
                await core.handle(Message(key, rec["name"].lower(), rec["name"],
                                          rec["content"] or "", message_id=f"{i}-{j}"))
                await core.flush()
                if len(records_seen) == before:
                    raise RuntimeError(f"conversation {i} turn {j}: the core made no decision "
                                       "(see the log for the error)")
                r = records_seen[-1]
                d = r.decision
                yield {
                    "conversation": i, "turn": j, "name": rec["name"],
                    "addressed": r.addressed,
                    "address": r.address,
                    "decision": "response" if r.text is not None else "silence",
                    "p_silence": None if d is None else float(f"{d.p_silence:.6g}"),
                    "text": r.text,
                    "latency_ms": round(r.latency_ms, 3),
                }
                if history == "gold":
                    session = core.sessions.get(key)
                    if session.turns and session.turns[-1].role == "assistant":
                        session.turns[-1] = Turn("assistant", gold[j], ASSISTANT_NAME)
    finally:
        core.listeners.remove(records_seen.append)


async def replay_file(settings: Settings, path: str | Path, *, as_json: bool = False,
                      history: str = "live", limit: int | None = None,
                      out: TextIO | None = None, engine: Any = None) -> int:
    """`chimein replay FILE`: bad lines are reported with their line number and skipped."""

    out = out or sys.stdout
    p = Path(path)
    if not p.exists():
        print(f"error: no such file: {p}", file=sys.stderr)
        return 2
    result = read_jsonl(p)
    for err in result.errors:
        print(f"skipped {err}", file=sys.stderr)
    convs = result.conversations[:limit] if limit else result.conversations
    if not convs:
        print(f"error: {p} has no valid conversation", file=sys.stderr)
        return 2
    if engine is None:
        engine = await load_engine_async(settings)
    if history == "gold":  # evaluation: every decision is the model's own, no cooldown
        settings = dataclasses.replace(settings, policy=dataclasses.replace(
            settings.policy, cooldown_window_seconds=0.0))
    core = build_core(settings, engine=engine)
    spoke = turns = 0
    lat = 0.0
    async with core:
        current = -1
        async for row in replay_conversations(core, convs, history=history):
            turns += 1
            spoke += row["decision"] == "response"
            lat += row["latency_ms"]
            if as_json:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                continue
            if row["conversation"] != current:
                current = row["conversation"]
                c = convs[current]
                out.write(f"\n=== conversation {current} (line {c.line}"
                          f"{', id ' + c.id if c.id else ''}) ===\n")
            users = [r for r in convs[current].records if r["role"] == "user"]
            out.write(f"{row['name']}: {users[row['turn']]['content']}\n")
            p_s = "-" if row["p_silence"] is None else f"{row['p_silence']:.3f}"
            flag = " [addressed]" if row["addressed"] else \
                f" [{row['address']}]" if row["address"] else ""
            if row["text"] is None:
                out.write(f"    · silence (p_silence={p_s}){flag}\n")
            else:
                out.write(f"    -> {ASSISTANT_NAME}: {row['text']}  (p_silence={p_s}){flag}\n")
        out.flush()
    print(f"replayed {len(convs)} conversation(s), {turns} user turn(s): spoke {spoke} times, "
          f"mean decision latency {lat / max(turns, 1):.1f} ms; {len(result.errors)} bad "
          f"line(s) skipped", file=sys.stderr)
    return 0
