"""Answers shown as they are written: what of a partial answer may be shown, and relaying it
to a platform without ever stalling generation.

- `visible(raw)`: the part of a partial raw answer that may be shown now. It is always a
  prefix of the final answer (`strip_markers` of the whole text) and never holds a marker or
  the start of one: a tail that could still become `(silence)` or `(response)` (a bare `(`,
  `(s`, `( resp`) and trailing whitespace are held back until the next text decides them.
- `Relay`: takes the growing visible text from the inference thread (`offer`, thread-safe,
  never blocks) and hands it to an async `show(text)` on the event loop, at most once per
  `interval` seconds; while one platform call is in flight, newer text only replaces the
  pending one (coalesced), so a slow platform never slows the model down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from bot.render import strip_markers

log = logging.getLogger(__name__)

# "(" and what follows it to the end, where that could still grow into a marker
_OPEN_TAIL = re.compile(r"[ \t]*\(\s*([A-Za-z]*)\s*$")
_MARKER_WORDS = ("silence", "response")


def visible(raw: str) -> str:
    """What of the partial answer `raw` may be shown now (see the module docstring)."""
    text = strip_markers(raw)
    while True:
        m = _OPEN_TAIL.search(text)
        if m is None or not any(w.startswith(m.group(1).lower()) for w in _MARKER_WORDS):
            return text.rstrip()
        text = text[:m.start()]


class ReplyStream(Protocol):
    """One answer shown as it is written, on one platform (an adapter's `open_stream`)."""

    async def update(self, text: str) -> None:
        """Show `text`, the answer so far (it only grows); may raise: the relay then stops
        updating and `finish` still posts the answer."""
        ...

    async def finish(self, text: str) -> str | None:
        """Post the final answer exactly once, whatever updates failed, leaving no partial
        text as the last word; returns the platform id of (the first part of) the answer."""
        ...

    async def abort(self, text: str | None) -> None:
        """Generation failed: replace what was shown by `text` (an apology), or take it
        down when `text` is None."""
        ...


class Relay:
    """Forwards the latest visible text to `show`, coalescing while a call is in flight."""

    def __init__(self, show: Callable[[str], Awaitable[None]], *, interval: float = 1.0,
                 loop: asyncio.AbstractEventLoop | None = None):
        self._show = show
        self.interval = interval
        self._loop = loop or asyncio.get_running_loop()
        self._latest = ""
        self._shown = ""
        self._wake = asyncio.Event()
        self._done = False
        self._task = self._loop.create_task(self._run(), name="chimein:stream")
        self.failed: BaseException | None = None  # the platform refused: stop showing
        self.updates = 0  # calls of `show` that went out

    def offer(self, text: str) -> None:
        """From any thread (the inference thread): the visible answer so far (`visible`)."""
        self._loop.call_soon_threadsafe(self._take, text)

    def _take(self, text: str) -> None:
        if len(text) > len(self._latest):
            self._latest = text
            self._wake.set()

    async def _run(self) -> None:
        last = 0.0
        while not self._done:
            await self._wake.wait()
            self._wake.clear()
            if self._done or self.failed is not None or self._latest == self._shown:
                continue
            wait = self.interval - (time.monotonic() - last)
            if wait > 0:
                await asyncio.sleep(wait)  # throttled: what arrives meanwhile coalesces
                if self._done:
                    return
            text = self._latest
            try:
                await self._show(text)
                self._shown = text
                self.updates += 1
            except Exception as e:  # noqa: BLE001 - any platform failure: posted whole later
                log.warning("showing a partial answer failed (%s); it will be posted whole", e)
                self.failed = e
            last = time.monotonic()

    @property
    def shown(self) -> str:
        """The text the platform shows now (what `show` last succeeded with)."""
        return self._shown

    async def close(self) -> None:
        """Stop relaying once the call in flight (if any) is done; pending text is dropped:
        the caller posts the final answer whole, which supersedes it."""
        self._done = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
