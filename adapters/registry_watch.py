"""Follow the model registry while the bot runs: switch to a newly promoted version without a
restart.

`RegistryWatcher` polls the registry's `active` pointer (its format: `bot.registry`) and, when
it changes (or when an admin says `reload`), loads the new engine on a worker thread and hands
it to `Core.swap_engine`, which switches between two decisions without dropping queued
messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Self

from bot.registry import RegistryError, read_active

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.core import Core
    from bot.engine.base import Engine

log = logging.getLogger(__name__)


def _default_loader(settings: Settings) -> Engine:
    from bot.engine import load_engine

    return load_engine(settings)


class RegistryWatcher:
    """Polls `model.registry_dir` and swaps the core's engine when the active version changes.

    `reload()` is what the admin `reload` command calls: it reloads even when the pointer has
    not changed (a re-exported model in place). Loading runs on a worker thread, never on the
    event loop; a failed load is logged and the old model keeps serving.
    """

    def __init__(self, core: Core, settings: Settings, *, poll_seconds: float | None = None,
                 loader: Callable[[Settings], Engine] | None = None):
        self.core = core
        self.settings = settings
        self.registry_dir = settings.model.registry_dir
        self.poll_seconds = poll_seconds if poll_seconds is not None \
            else settings.model.registry_poll_seconds
        self.loader = loader or _default_loader
        self.current: str | None = getattr(core.engine, "version", None)
        self.swaps = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def active_version(self) -> str | None:
        if not self.registry_dir:
            return None
        active = read_active(self.registry_dir)
        return None if active is None else active.version

    async def check(self) -> bool:
        """Swap if the active version differs from the one serving; True if it swapped."""
        try:
            version = await asyncio.to_thread(self.active_version)
        except RegistryError as e:
            self._error(f"registry unreadable: {e}")
            return False
        if version is None or version == self.current:
            return False
        return await self._load_and_swap(version)

    async def reload(self) -> str:
        """Load the configured model again (the active version when following a registry) and
        swap it in. Returns a line for the admin; never raises on a bad model."""
        ok = await self._load_and_swap(None)
        if ok:
            return f"reloaded: now serving {self.current}"
        return f"reload failed, still serving {self.current}: {self.last_error}"

    async def _load_and_swap(self, wanted: str | None) -> bool:
        async with self._lock:
            if wanted is not None and wanted == self.current:
                return False
            try:
                engine = await asyncio.to_thread(self.loader, self.settings)
            except Exception as e:  # noqa: BLE001 - any load failure leaves the old model
                self._error(f"loading {wanted or 'the model'} failed: {e}")
                return False
            await self.core.swap_engine(engine)
            self.current = engine.version
            self.swaps += 1
            self.last_error = None
            log.info("now serving model version %s", self.current)
            return True

    def _error(self, text: str) -> None:
        if text != self.last_error:
            log.warning("%s", text)
        self.last_error = text

    async def run(self) -> None:
        """Poll forever (cancel the task to stop)."""
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher must outlive any one bad poll
                log.exception("registry poll failed")

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="chimein:registry-watch")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> Self:
        if self.registry_dir:
            self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
