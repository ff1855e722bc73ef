"""kill -9 mid-burst: every message whose `core.handle()` returned (acknowledged to the
platform as handled) is in the file when it is opened again."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bot.store import Store

ROOT = Path(__file__).resolve().parent.parent

# The bot in a subprocess: four conversations post as fast as they can through the real core
# and store; after each `core.handle()` returns, the message id is printed (= acknowledged).
WRITER = r"""
import asyncio, sys
from bot.config import PolicySettings
from bot.core import Core
from bot.engine.fake import ScriptedEngine
from bot.message import ConversationKey, Message
from bot.policy import Policy
from bot.store import Store

async def main(path):
    async with Store(path) as store:
        for c in range(4):
            await store.set_channel_logging("test", f"c{c}", True)
        await store.set_consent("test", "ann", True)
        core = Core(ScriptedEngine(), Policy(PolicySettings(), ["assistant"]), store=store)
        print("READY", flush=True)

        async def conversation(c):
            key = ConversationKey("test", f"c{c}")
            i = 0
            while True:
                mid = f"c{c}-{i}"
                await core.handle(Message(key, "ann", "Ann", f"burst {mid} " + "x" * (i % 300),
                                          message_id=mid))
                sys.stdout.write(f"ACK {mid}\n")
                sys.stdout.flush()
                i += 1

        await asyncio.gather(*(conversation(c) for c in range(4)))

asyncio.run(main(sys.argv[1]))
"""


def test_kill_9_mid_burst_loses_no_acknowledged_message(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        ready = False
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break  # the writer died on its own
            if line.startswith("READY"):
                ready = True
            elif line.startswith("ACK "):
                acked.append(line.split()[1])
                if len(acked) >= 400:
                    break
        assert ready and len(acked) >= 400, proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)  # mid-burst: writes are in flight right now
        rest, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    # Lines already in the pipe were acknowledged before the kill too.
    acked += [ln.split()[1] for ln in rest.splitlines() if ln.startswith("ACK ")]

    con = sqlite3.connect(path)  # recovers the WAL the dead process left behind
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {r[0] for r in con.execute("SELECT platform_message_id FROM messages")}
    finally:
        con.close()
    missing = [m for m in acked if m not in stored]
    assert not missing, f"{len(missing)} acknowledged message(s) lost, e.g. {missing[:5]}"
    assert len(stored) >= len(acked)

    async def reopen() -> int:  # and the store itself opens and carries on
        async with Store(path) as store:
            return int((await store.stats())["totals"]["messages"])

    assert asyncio.run(reopen()) == len(stored)
