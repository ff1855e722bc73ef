"""Settings -> the running parts: engine, policy, commands and core, built in one place.

`chimein run`, `chimein console`, `chimein replay`, the demo and the tests all build a core
here, so they run the same wiring. Heavy libraries are imported only when an engine loads.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.core import Core
    from bot.engine.base import Engine
    from bot.message import Message


def quiet_libraries() -> None:
    """bitsandbytes warns at import, on CPUs with AVX-512 bf16, that it cannot fetch an
    optional faster kernel from the hub (`pip install kernels`): it works without it, and a
    self-hosted bot should not fetch code from a hub anyway. Shown with -vv."""
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


async def load_engine_async(settings: Settings) -> Engine:
    """The engine of `model.backend`; loading takes seconds to minutes, so it runs on a worker
    thread and the event loop stays free (signals, platform heartbeats)."""
    from bot.core import block_stop_signals
    from bot.engine import load_engine

    def load() -> Engine:
        block_stop_signals()  # threads the runtime starts while loading inherit the mask
        return load_engine(settings)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chimein-load") as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, load)


class AdminHooks(Protocol):
    """What the admin `reload` / `retrain` commands call (adapters.admin.Admin)."""

    async def reload(self, msg: Message) -> str | None: ...

    async def retrain(self, msg: Message) -> str | None: ...


def build_core(settings: Settings, engine: Engine | None = None, store: Any = None,
               admin: AdminHooks | None = None) -> Core:
    """Engine + policy (+ store, commands with the admin hooks) -> Core, as `chimein
    run/console/replay` use it; every part gets what it needs at construction."""
    from bot.core import Core
    from bot.engine import load_engine
    from bot.policy import Policy

    if engine is None:
        engine = load_engine(settings)
    wake = list(settings.bot.wake_words) + [settings.bot.name]
    policy = Policy(settings.policy, wake)
    commands = None
    if store is not None:
        from bot.commands import CommandHandler

        commands = CommandHandler(
            settings, store, policy, on_retrain=admin.retrain if admin else None,
            on_reload=admin.reload if admin else None)
    core = Core(engine, policy, bot=settings.bot, runtime=settings.runtime, store=store,
                commands=commands, generation=settings.generation)
    return core
