"""`chimein run`: every adapter enabled in the config, one core, one process.

Order of things: check the secrets of every enabled adapter first (a missing token names the
variable before minutes go into loading a model), load the engine off the event loop, open the
store when there is one, build the core, connect each adapter, then wait for SIGTERM / SIGINT
(or an adapter failing for good). Shutdown: answers already queued are finished and delivered,
then the adapters disconnect, then the core and the store close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any, Protocol

from adapters.common import AdapterError
from bot.config import Settings
from bot.core import Core

log = logging.getLogger(__name__)

DRAIN_SECONDS = 30.0


class RunnableAdapter(Protocol):
    platform: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


AdapterFactory = Callable[[Core], RunnableAdapter]


def plan_adapters(settings: Settings) -> list[tuple[str, AdapterFactory]]:
    """The enabled adapters as (platform, factory), with every secret they need read now.

    Raises ConfigError naming the environment variable when one is missing.
    """
    plans: list[tuple[str, AdapterFactory]] = []
    if settings.slack.enabled:
        bot_token = settings.require_secret("SLACK_BOT_TOKEN", "the Slack adapter")
        if settings.slack.mode == "socket":
            app_token = settings.require_secret(
                "SLACK_APP_TOKEN", "Slack Socket Mode",
                "use the HTTP Events API instead ([slack] mode = \"http\")")
            secret = None
        else:
            app_token = None
            secret = settings.require_secret(
                "SLACK_SIGNING_SECRET", "the Slack HTTP Events API",
                "use Socket Mode instead ([slack] mode = \"socket\")")

        def make_slack(core: Core) -> RunnableAdapter:
            from adapters.slack import SlackAdapter

            return SlackAdapter(core, settings.slack, settings.bot, bot_token=bot_token,
                                app_token=app_token, signing_secret=secret)

        plans.append(("slack", make_slack))
    if settings.discord.enabled:
        token = settings.require_secret("DISCORD_TOKEN", "the Discord adapter")

        def make_discord(core: Core) -> RunnableAdapter:
            from adapters.discord import DiscordAdapter

            return DiscordAdapter(core, settings.discord, settings.bot, token=token)

        plans.append(("discord", make_discord))
    return plans


@contextlib.contextmanager
def _signals_set(stop: asyncio.Event) -> Any:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, _on_signal, stop, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError) as e:
            # asyncio's signal handlers exist only in the main thread on Unix: elsewhere (a
            # test's thread, Windows) the `stop` event is the way to stop, and Ctrl-C still
            # raises KeyboardInterrupt in the main thread
            log.debug("no %s handler here (%s): stop through the stop event", sig.name, e)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if stop.is_set():
        log.warning("%s again: still shutting down", sig.name)
        return
    log.warning("%s: shutting down (finishing answers in progress)", sig.name)
    stop.set()


async def run_all(settings: Settings, *, engine: Any = None,
                  stop: asyncio.Event | None = None,
                  factories: list[tuple[str, AdapterFactory]] | None = None) -> int:
    """Run every enabled adapter until SIGTERM/SIGINT (or `stop` is set). Returns the exit
    status: 0 after a clean shutdown, 2 when an adapter could not start or failed for good.

    `engine` skips loading the configured model (tests pass a ScriptedEngine); `factories`
    replaces the adapters planned from the config.
    """
    plans = factories if factories is not None else plan_adapters(settings)
    if not plans:
        print("nothing to run: enable an adapter in the config ([slack] enabled = true or "
              "[discord] enabled = true)", file=sys.stderr)
        return 2
    stop = stop or asyncio.Event()
    from adapters.admin import Admin
    from bot.store import Store
    from bot.wiring import build_core, load_engine_async

    rc = 0
    with _signals_set(stop):  # a SIGTERM while the model loads is a clean stop too
        if engine is None:
            log.info("loading model %s", settings.model.path or settings.model.registry_dir)
            engine = await load_engine_async(settings)
        if stop.is_set():
            log.info("stopped before starting")
            return 0
        # Every lifetime in one stack; it unwinds in reverse: the admin services stop, the
        # answers already queued go out, the adapters disconnect, the core and the store close.
        async with contextlib.AsyncExitStack() as stack:
            store = await stack.enter_async_context(Store.from_settings(settings.store))
            admin = Admin(settings)
            core = build_core(settings, engine=engine, store=store, admin=admin)
            stack.push_async_callback(core.close, False)
            adapters: list[RunnableAdapter] = []
            stack.push_async_callback(_close_adapters, adapters)
            stack.push_async_callback(_drain, core)
            await stack.enter_async_context(admin.serving(core))
            rc = await _serve(core, plans, adapters, stop)
    log.info("stopped")
    return rc


async def _drain(core: Core) -> None:
    """Answers already queued still go out before the adapters disconnect."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(core.flush(), DRAIN_SECONDS)


async def _close_adapters(adapters: list[RunnableAdapter]) -> None:
    for a in reversed(adapters):
        try:
            await a.close()
        except Exception:
            log.exception("closing the %s adapter failed", a.platform)


async def _serve(core: Core, plans: list[tuple[str, AdapterFactory]],
                 adapters: list[RunnableAdapter], stop: asyncio.Event) -> int:
    try:
        for name, make in plans:
            adapter = make(core)
            core.add_adapter(adapter)  # type: ignore[arg-type]
            adapters.append(adapter)
            log.info("starting the %s adapter", name)
            try:
                await adapter.start()
            except (AdapterError, asyncio.CancelledError):
                raise
            except Exception as e:  # e.g. DNS or TLS failure: one line, the trace in -vv
                log.debug("starting the %s adapter failed", name, exc_info=True)
                raise AdapterError(f"the {name} adapter could not connect: "
                                   f"{type(e).__name__}: {e} (check the network, a proxy, "
                                   f"or {name}.api_base_url)") from e
    except AdapterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = ", ".join(a.platform for a in adapters)
    print(f"chimein: running on {names} (Ctrl-C or SIGTERM stops)", file=sys.stderr)
    watchers: dict[asyncio.Task[Any], RunnableAdapter] = {
        asyncio.create_task(a.wait_closed(), name=f"chimein:{a.platform}:watch"): a
        for a in adapters}
    stopper: asyncio.Task[Any] = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({stopper, *watchers}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (stopper, *watchers):
            t.cancel()
        await asyncio.gather(stopper, *watchers, return_exceptions=True)
    for t in done:
        if t is stopper or t.cancelled():
            continue
        exc = t.exception()
        platform = watchers[t].platform
        if isinstance(exc, AdapterError):
            print(f"error: {exc}", file=sys.stderr)
        elif exc is not None:
            log.error("the %s adapter failed: %r", platform, exc)
        else:
            print(f"error: the {platform} connection ended", file=sys.stderr)
        return 2
    return 0
