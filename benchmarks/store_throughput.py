"""Store throughput: real chat messages written through bot.store (and through the core).

Prints JSON. Run by hand: `python benchmarks/store_throughput.py [--messages 10000]`.

The messages are the Gitter support room gitterHQ/gitter from the LiveChat dataset (Lin Shi et
al., "A First Look at Developers' Live Chat on Gitter", ESEC/FSE 2021; MIT licence;
github.com/LiveChat2021/LiveChat at 062c40fa, data/raw/gitter_gitter_chatFormat.ascii.txt),
copied under ../shared/data/external/gitter-livechat/ (see its SOURCE.md). Every author is
opted in and the channel logs, so every message is written.

Modes (each on a fresh file):
- sequential: one conversation, each `record_message` awaited before the next (one commit per
  message: the worst case, a single busy channel);
- concurrent: the same messages dealt round-robin to 16 conversations writing at once (the
  writer batches their commits);
- core: `Core.handle` for every message in the 16 conversations (store + queue + the scripted
  engine deciding, decisions recorded too), as the adapters drive it, then `flush`;
- export: `export_conversations` over the file the concurrent run wrote (scrubbing included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from calendar import timegm
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_SOURCE = (Path(__file__).resolve().parent.parent.parent / "shared" / "data" /
                  "external" / "gitter-livechat" / "data" / "raw" /
                  "gitter_gitter_chatFormat.ascii.txt")
# Without the shared copy: the repository's excerpt (its first 3,000 messages).
EXCERPT = (Path(__file__).resolve().parent.parent / "tests" / "data" / "external" /
           "gitter-livechat" / "gitter_gitter_first3000.txt")
_RECORD = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] <([^>]*)> ?(.*)$", re.DOTALL)


def load_gitter(path: Path, limit: int) -> list[tuple[float, str, str]]:
    """(unix time, speaker, text) records: a record starts at `[date time] <nick> `, and lines
    that do not start one continue the previous message (SOURCE.md)."""
    # CRLF line ends (newline="" keeps them; a bare \r or \n inside a message is content).
    with path.open(encoding="utf-8", newline="") as f:
        raw = f.read()
    out: list[tuple[float, str, str]] = []
    for line in raw.split("\r\n"):
        m = _RECORD.match(line)
        if m:
            if len(out) >= limit:
                break
            ts = timegm(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
            out.append((float(ts), m.group(2), m.group(3)))
        elif out and line:
            ts, nick, text = out[-1]
            out[-1] = (ts, nick, text + "\n" + line)
    return out


def _messages(records: list[tuple[float, str, str]], channels: int) -> list[Any]:
    from bot.message import ConversationKey, Message

    keys = [ConversationKey("gitter", f"gitterHQ/gitter-{i}") for i in range(channels)]
    return [Message(keys[i % channels], nick, nick, text, message_id=f"g{i}", ts=ts)
            for i, (ts, nick, text) in enumerate(records)]


async def _prepare(store: Any, msgs: list[Any]) -> None:
    for key in {m.key for m in msgs}:
        await store.set_channel_logging(key.platform, key.channel, True)
    for author in sorted({m.author_id for m in msgs}):
        await store.set_consent("gitter", author, True)


async def run_store(records: list[tuple[float, str, str]], folder: Path, channels: int
                    ) -> dict[str, Any]:
    """Write every record through `Store.record_message`, `channels` conversations at once."""
    from bot.store import Store

    msgs = _messages(records, channels)
    path = folder / f"store-{channels}.sqlite3"
    async with Store(path) as store:
        await _prepare(store, msgs)
        store.batches.clear()
        by_channel: dict[Any, list[Any]] = {}
        for m in msgs:
            by_channel.setdefault(m.key, []).append(m)

        async def conversation(items: list[Any]) -> int:
            return sum([await store.record_message(m) for m in items])

        t0 = time.perf_counter()
        stored = sum(await asyncio.gather(*(conversation(v) for v in by_channel.values())))
        seconds = time.perf_counter() - t0
        batches = list(store.batches)
    return {"messages": len(msgs), "stored": stored, "conversations": channels,
            "seconds": round(seconds, 3), "messages_per_second": round(len(msgs) / seconds),
            "commits": len(batches), "mean_batch": round(statistics.mean(batches), 1),
            "file_mb": round(path.stat().st_size / 2**20, 1), "path": str(path)}


async def run_core(records: list[tuple[float, str, str]], folder: Path, channels: int
                   ) -> dict[str, Any]:
    """Every record through `Core.handle` (consent check, commit, queue, then the scripted
    engine's decision), `channels` conversations at once, as adapters drive it."""
    from bot.config import PolicySettings
    from bot.core import Core
    from bot.engine.fake import ScriptedEngine
    from bot.policy import Policy
    from bot.store import Store

    msgs = _messages(records, channels)
    path = folder / "store-core.sqlite3"
    async with Store(path) as store:
        await _prepare(store, msgs)
        core = Core(ScriptedEngine(), Policy(PolicySettings(), ["assistant"]), store=store)
        by_channel: dict[Any, list[Any]] = {}
        for m in msgs:
            by_channel.setdefault(m.key, []).append(m)

        async def conversation(items: list[Any]) -> None:
            for m in items:
                await core.handle(m)

        async with core:
            t0 = time.perf_counter()
            await asyncio.gather(*(conversation(v) for v in by_channel.values()))
            handled = time.perf_counter() - t0
            await core.flush()
            seconds = time.perf_counter() - t0
        stats = await store.stats()
    return {"messages": len(msgs), "stored": stats["totals"]["messages"],
            "decisions": stats["totals"]["decisions"], "conversations": channels,
            "seconds": round(seconds, 3), "handle_seconds": round(handled, 3),
            "messages_per_second": round(len(msgs) / seconds)}


async def run_export(path: Path) -> dict[str, Any]:
    from bot.store import Store, export_conversations

    async with Store(path) as store:
        t0 = time.perf_counter()
        segments = turns = 0
        async for seg in export_conversations(store, idle_gap_minutes=60):
            segments += 1
            turns += len(seg.records)
        seconds = time.perf_counter() - t0
    return {"segments": segments, "turns": turns, "seconds": round(seconds, 3)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    records = load_gitter(Path(args.source), args.messages)
    if len(records) < args.messages:
        print(f"note: only {len(records)} messages in {args.source}", file=sys.stderr)
    chars = [len(t) for _, _, t in records]
    result: dict[str, Any] = {
        "source": "LiveChat gitterHQ/gitter (Shi et al. FSE 2021, MIT)",
        "messages": len(records), "speakers": len({n for _, n, _ in records}),
        "chars_mean": round(statistics.mean(chars), 1), "chars_max": max(chars)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result["sequential"] = await run_store(records, folder, 1)
        result["concurrent"] = await run_store(records, folder, args.conversations)
        result["core"] = await run_core(records, folder, args.conversations)
        result["export"] = await run_export(Path(result["concurrent"]["path"]))
        for mode in ("sequential", "concurrent"):
            result[mode].pop("path")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--conversations", type=int, default=16)
    p.add_argument("--source", default=None,
                   help="a Gitter chatFormat file (default: the shared copy of the whole room, "
                        "else the repository's 3,000-message excerpt)")
    args = p.parse_args(argv)
    if args.source is None:
        args.source = str(DEFAULT_SOURCE if DEFAULT_SOURCE.exists() else EXCERPT)
        if not DEFAULT_SOURCE.exists():
            print(f"note: {DEFAULT_SOURCE} not found: using the excerpt {EXCERPT} "
                  f"(at most 3,000 messages)", file=sys.stderr)
    if not Path(args.source).exists():
        print(f"error: {args.source} not found", file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(main_async(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
