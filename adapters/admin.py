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
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.registry_watch import RegistryWatcher
    from bot.config import Settings
    from bot.core import Core
    from bot.message import Message

log = logging.getLogger(__name__)


def retrain_argv(settings: Settings) -> list[str]:
    """The command line of `chimein retrain` for this bot's config."""
    argv = [sys.executable, "-m", "adapters.cli"]
    if settings.source and not settings.source.startswith("("):
        argv += ["--config", settings.source]
    return argv + ["retrain", "--data-from-store", "--quiet"]


class RetrainJob:
    """Runs one retrain at a time in a child process; `start` is the `on_retrain` callback.
    `announce(msg, text)` tells the admin who asked how it ended. The child writes its
    outcome as JSON (`chimein retrain --outcome FILE`); its log is for people."""

    def __init__(self, settings: Settings, watcher: RegistryWatcher | None = None, *,
                 announce: Callable[[Message, str], Awaitable[object]] | None = None,
                 argv: Sequence[str] | None = None, log_dir: str | Path | None = None):
        self.settings = settings
        self.watcher = watcher
        self.announce = announce
        self.argv = list(argv) if argv is not None else retrain_argv(settings)
        self.log_dir = Path(log_dir) if log_dir is not None \
            else Path(settings.store.path).resolve().parent
        self.task: asyncio.Task[int] | None = None
        self.log_file: Path | None = None
        self.outcome_file: Path | None = None
        self.returncode: int | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def start(self, msg: Message | None = None) -> str:
        if self.running:
            return f"A retrain is already running (log: {self.log_file}); I'll switch when it ends."
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = self.log_dir / time.strftime("retrain-%Y%m%d-%H%M%S.log")
        self.outcome_file = self.log_file.with_suffix(".json")
        self.outcome_file.unlink(missing_ok=True)
        out = self.log_file.open("ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, "--outcome", str(self.outcome_file),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT)
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
        """One line on how the last retrain ended: the child's JSON outcome; the last line of
        its log when it wrote none (it crashed before it could)."""
        result: dict[str, Any] = {}
        if self.outcome_file is not None and self.outcome_file.exists():
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(self.outcome_file.read_text(encoding="utf-8"))
                result = loaded if isinstance(loaded, dict) else {}
        verdict = result.get("verdict") or (f"error: {result['error']}"
                                            if result.get("error") else None)
        if self.returncode in (0, 3):  # 3: trained and compared, the gate refused it
            return f"Retrain finished: {verdict or 'done'}."
        if verdict is None and self.log_file is not None and self.log_file.exists():
            lines = [ln.strip() for ln in self.log_file.read_text(
                encoding="utf-8", errors="replace").splitlines() if ln.strip()]
            verdict = lines[-1] if lines else None
        return (f"Retrain ended with exit status {self.returncode}: {verdict or 'no output'} "
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


class Admin:
    """The admin `reload` and `retrain` commands of a running bot, and the services behind
    them. Made before the core: its `reload` and `retrain` go into the command handler at
    construction (bot.wiring.build_core). `serving(core)` runs them for the core's lifetime:
    the registry watcher, and a retrain job that tells the admin how it ended."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.watcher: RegistryWatcher | None = None
        self.job: RetrainJob | None = None

    async def reload(self, msg: Message) -> str:
        if self.watcher is None:
            return "Reloading is not available: the bot is not serving yet."
        return await self.watcher.reload()

    async def retrain(self, msg: Message) -> str:
        if self.job is None:
            return "Retraining is not available: the bot is not serving yet."
        return await self.job.start(msg)

    @contextlib.asynccontextmanager
    async def serving(self, core: Core) -> AsyncIterator[Admin]:
        """Follow the model registry and take retrains while `core` runs (a retrain still
        running at the end is stopped)."""
        from adapters.registry_watch import RegistryWatcher

        async def announce(msg: Message, text: str) -> None:
            await core.announce(msg.key, text, msg)

        async with RegistryWatcher(core, self.settings) as watcher:
            self.watcher = watcher
            self.job = RetrainJob(self.settings, watcher, announce=announce)
            try:
                yield self
            finally:
                await self.job.close()
                self.watcher = self.job = None
