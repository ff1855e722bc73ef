"""The admin `retrain` and `reload` commands of a running bot.

`reload` asks the `RegistryWatcher` to load the model again and swap it in. `retrain` starts
`chimein retrain --data-from-store` as a child process (the bot never imports the training
code, and a crash there cannot take the bot down), writes its output to a log file next to the
store, and when it ends asks the watcher to pick up the new active version: the gate in
`chimein retrain` decides whether there is one. One retrain at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.registry_watch import RegistryWatcher
    from bot.config import Settings
    from bot.message import Message

log = logging.getLogger(__name__)


def retrain_argv(settings: Settings) -> list[str]:
    """The command line of `chimein retrain` for this bot's config."""
    argv = [sys.executable, "-m", "adapters.cli"]
    if settings.source and not settings.source.startswith("("):
        argv += ["--config", settings.source]
    return argv + ["retrain", "--data-from-store", "--quiet"]


class RetrainJob:
    """Runs one retrain at a time in a child process; `start` is the `on_retrain` callback."""

    def __init__(self, settings: Settings, watcher: RegistryWatcher | None = None, *,
                 argv: Sequence[str] | None = None, log_dir: str | Path | None = None):
        self.settings = settings
        self.watcher = watcher
        self.argv = list(argv) if argv is not None else retrain_argv(settings)
        self.log_dir = Path(log_dir) if log_dir is not None \
            else Path(settings.store.path).resolve().parent
        # Called with (the admin's message, a one-line outcome) when a retrain ends.
        self.announce: Callable[[Message, str], Awaitable[object]] | None = None
        self.task: asyncio.Task[int] | None = None
        self.log_file: Path | None = None
        self.returncode: int | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def start(self, msg: Message | None = None) -> str:
        if self.running:
            return f"A retrain is already running (log: {self.log_file}); I'll switch when it ends."
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = self.log_dir / time.strftime("retrain-%Y%m%d-%H%M%S.log")
        out = self.log_file.open("ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=asyncio.subprocess.STDOUT)
        except OSError as e:
            out.close()
            return f"Retraining could not start: {e}"
        self.returncode = None
        self.task = asyncio.create_task(self._wait(proc, out, msg), name="chimein:retrain")
        log.info("retrain started (pid %d), log %s", proc.pid, self.log_file)
        switch = ("I'll switch to the new model if it passes the checks"
                  if self.watcher is not None and self.watcher.registry_dir
                  else "set model.registry_dir so the bot picks the new version up")
        return f"Retraining started (log: {self.log_file}); {switch}."

    def outcome(self) -> str:
        """One line on how the last retrain ended, from its exit status and log."""
        lines: list[str] = []
        if self.log_file is not None and self.log_file.exists():
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        verdict = next((ln for ln in reversed(lines) if ln.startswith(("PROMOTED", "NOT PROMOTED",
                                                                        "error:"))), None)
        if self.returncode in (0, 3):  # 3: trained and compared, the gate refused it
            return f"Retrain finished: {verdict or 'done'}."
        detail = verdict or (lines[-1] if lines else "no output")
        return (f"Retrain ended with exit status {self.returncode}: {detail} "
                f"(log: {self.log_file}).")

    async def _wait(self, proc: asyncio.subprocess.Process, out: Any,
                    msg: Message | None = None) -> int:
        try:
            rc = await proc.wait()
        except asyncio.CancelledError:
            proc.terminate()
            await proc.wait()
            raise
        finally:
            out.close()
        self.returncode = rc
        if rc == 0:
            log.info("retrain finished; log %s", self.log_file)
        else:
            log.warning("retrain failed with exit status %d; see %s", rc, self.log_file)
        if self.watcher is not None and self.watcher.registry_dir:
            await self.watcher.check()  # promoted or not, the pointer says what to serve
        if self.announce is not None and msg is not None:
            await self.announce(msg, self.outcome())
        return rc

    async def close(self) -> None:
        """Stop a retrain still running (the bot is shutting down)."""
        if self.running:
            assert self.task is not None
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@contextlib.asynccontextmanager
async def admin_services(core: Any, settings: Settings) -> AsyncIterator[RetrainJob | None]:
    """What a running bot needs besides its adapters: following the model registry, and the
    admin `reload` / `retrain` commands (a retrain still running at the end is stopped)."""
    from adapters.registry_watch import RegistryWatcher

    async with RegistryWatcher(core, settings) as watcher:
        job = wire_admin_commands(core, watcher, settings)
        try:
            yield job
        finally:
            if job is not None:
                await job.close()


def wire_admin_commands(core: Any, watcher: RegistryWatcher, settings: Settings,
                        retrain: RetrainJob | None = None) -> RetrainJob | None:
    """Connect the `reload` and `retrain` admin commands of `core.commands` (if any)."""
    commands = getattr(core, "commands", None)
    if commands is None:
        return None
    job = retrain or RetrainJob(settings, watcher)

    async def on_reload(msg: Message) -> str:
        return await watcher.reload()

    async def announce(msg: Message, text: str) -> None:
        await core.announce(msg.key, text, msg)

    commands.on_reload = on_reload
    commands.on_retrain = job.start
    if job.announce is None:
        job.announce = announce
    return job
