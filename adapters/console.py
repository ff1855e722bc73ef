"""A group chat in the terminal, and transcript replay through the real core and engine.

Console: type `alice: hi there`; the bot's answers appear as `assistant: ...`. `/who` lists
who spoke, `/quit` (or end of input) leaves. A line without `name:` is said by the last speaker.

Replay: every user turn of a JSONL conversation file goes through the real core and engine;
`--json` prints one object per user turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, TextIO

from bot.config import Settings
from bot.core import Core, DecisionRecord
from bot.message import ConversationKey, Message, Reply, Turn, clean_text
from bot.render import ASSISTANT_NAME
from bot.transcript import read_jsonl

log = logging.getLogger(__name__)

_LINE = re.compile(r"^\s*([^:：\s][^:：]{0,40}?)\s*[:：]\s?(.*)$", re.DOTALL)


class ConsoleAdapter:
    """Prints replies as `assistant: text`."""

    platform = "console"

    def __init__(self, out: TextIO, name: str = ASSISTANT_NAME):
        self.out = out
        self.name = name
        self.sent: list[Reply] = []

    async def send(self, reply: Reply) -> str | None:
        self.sent.append(reply)
        self.out.write(f"{self.name}: {reply.text}\n")
        self.out.flush()
        return f"console-{len(self.sent)}"

    @contextlib.asynccontextmanager
    async def typing(self, key: ConversationKey) -> AsyncIterator[None]:
        yield


def parse_console_line(line: str, last_speaker: str | None) -> tuple[str, str] | None:
    """`alice: hi` -> ("alice", "hi"); a bare line goes to the last speaker (or None)."""
    m = _LINE.match(line)
    if m and m.group(2).strip():
        return m.group(1).strip(), m.group(2).strip()
    if last_speaker and line.strip():
        return last_speaker, line.strip()
    return None


async def _stdin_lines() -> AsyncIterator[str]:
    """Lines of standard input. Read as bytes and decoded here, so a byte that is not valid in
    the terminal's encoding becomes U+FFFD instead of ending the chat with a traceback."""
    loop = asyncio.get_running_loop()
    raw = getattr(sys.stdin, "buffer", None)
    encoding = getattr(sys.stdin, "encoding", None) or "utf-8"
    while True:
        if raw is None:  # a text-only stand-in for stdin
            line = await loop.run_in_executor(None, sys.stdin.readline)
        else:
            data = await loop.run_in_executor(None, raw.readline)
            line = data.decode(encoding, "replace")
        if not line:
            return
        yield line


async def _load_engine(settings: Settings) -> Any:
    from bot.engine import load_engine

    # Loading a model takes seconds to minutes: keep the event loop free meanwhile.
    return await asyncio.to_thread(load_engine, settings)


def _say(out: TextIO, text: str) -> None:
    """One line of the console's own output, flushed: stdout may be a pipe."""
    out.write(text + "\n")
    out.flush()


async def console_session(core: Core, lines: AsyncIterator[str], out: TextIO,
                          channel: str = "main") -> int:
    """Drive `core` with chat lines; returns the number of messages handled."""
    key = ConversationKey("console", channel)
    adapter = ConsoleAdapter(out)
    core.add_adapter(adapter)
    speakers: dict[str, int] = {}
    last: str | None = None
    handled = 0
    async for raw in lines:
        # Cleaned here too, not only in Message: names are echoed back (/who), and a lone
        # surrogate cannot even be written to a UTF-8 terminal.
        line = clean_text(raw.rstrip("\n"))
        cmd = line.strip()
        if cmd in ("/quit", "/exit"):
            break
        if cmd == "/who":
            who = ", ".join(f"{n} ({c})" for n, c in speakers.items()) or "nobody yet"
            _say(out, f"* in this chat: {who}")
            continue
        if cmd.startswith("/"):
            _say(out, "* commands: /who, /quit; messages are 'name: text'")
            continue
        parsed = parse_console_line(line, last)
        if parsed is None:
            if line.strip():
                _say(out, "* type 'name: message', e.g. 'alice: hi there'")
            continue
        name, text = parsed
        if name.lower() == ASSISTANT_NAME:
            _say(out, "* that name is the bot's; pick another")
            continue
        last = name
        speakers[name] = speakers.get(name, 0) + 1
        handled += 1
        await core.handle(Message(key, f"{name.lower()}", name, text,
                                  message_id=f"c{handled}"))
        await core.flush()
    return handled


async def run_console(settings: Settings, store_path: str | None = None,
                      lines: AsyncIterator[str] | None = None, out: TextIO | None = None,
                      engine: Any = None) -> int:
    """`chimein console`: load the model, then chat on stdin/stdout."""
    from adapters.admin import Admin
    from bot.wiring import build_core

    out = out or sys.stdout
    if engine is None:
        what = settings.model.path or (
            f"the active version of {settings.model.registry_dir}"
            if settings.model.registry_dir else "(model.path not set)")
        out.write(f"* loading {what} ...\n")
        out.flush()
        engine = await _load_engine(settings)
    store_cm: Any = contextlib.nullcontext(None)
    if store_path:
        from dataclasses import replace

        from bot.store import Store

        # the [store] section's consent default and retention, at the path asked for
        store_cm = Store.from_settings(replace(settings.store, path=store_path))
    async with store_cm as store:
        admin = Admin(settings)
        core = build_core(settings, engine=engine, store=store, admin=admin)
        async with core, admin.serving(core):
            out.write("* chimein console: type 'name: message' (e.g. 'alice: hi'); "
                      "/who, /quit\n")
            out.flush()
            await console_session(core, lines or _stdin_lines(), out)
    return 0


# -- replay -------------------------------------------------------------------------------
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

    class _Collect:
        platform = "replay"

        def __init__(self) -> None:
            self.sent: list[Reply] = []

        async def send(self, reply: Reply) -> str | None:
            self.sent.append(reply)
            return f"r{len(self.sent)}"

        @contextlib.asynccontextmanager
        async def typing(self, key: ConversationKey) -> AsyncIterator[None]:
            yield

    core.add_adapter(_Collect())
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
    from bot.wiring import build_core

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
        engine = await _load_engine(settings)
    if history == "gold":  # evaluation: every decision is the model's own, no cooldown
        import dataclasses

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
