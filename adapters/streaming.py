"""An answer shown as it is written on a platform whose messages can be edited: post the first
text, then edit it as the answer grows (Discord; Slack where its native stream is unavailable).

`EditedStream` is a `bot.stream.ReplyStream` over three platform calls (`Messages`: post, edit,
delete). What it shows is always `split(text)` of the text so far, the split a whole post
uses: every part but the last is already final (a cut depends only on the text before it), and
the last grows until it outgrows the platform's limit; its message is then edited back to the
part a whole post would have and the answer goes on in a new message. So a streamed answer
ends as exactly the messages a whole post makes.

Failures: `update` may raise (the core's relay then stops updating). `finish` makes the
messages equal the final parts; where an edit fails, that message and the ones after it are
deleted and the rest posted anew, so the answer is posted once and no partial text is left as
the last word. `abort` replaces what was shown by an apology, or takes it down; it never
raises.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Messages(Protocol):
    """The platform calls one answer's messages need; ids are the platform's message ids."""

    async def post(self, text: str, first: bool) -> str:
        """Post a new message (`first`: the answer's first, e.g. a reply to the question)."""
        ...

    async def edit(self, message_id: str, text: str) -> None: ...

    async def delete(self, message_id: str) -> None: ...


class EditedStream:
    """One answer on a platform with editable messages (see the module docstring)."""

    def __init__(self, messages: Messages, split: Callable[[str], list[str]]):
        self._messages = messages
        self._split = split
        self._shown: list[tuple[str, str]] = []  # (message id, its text), in order

    async def update(self, text: str) -> None:
        await self._show(self._split(text))

    async def finish(self, text: str) -> str | None:
        await self._settle(self._split(text))
        return self._shown[0][0] if self._shown else None

    async def abort(self, text: str | None) -> None:
        try:
            await self._settle(self._split(text) if text else [])
        except Exception:  # the core is already handling a failure: log, never raise
            log.exception("taking a broken-off answer down failed")

    async def _show(self, parts: list[str]) -> None:
        """Messages `i` show `parts[i]`: edited where they differ, posted where missing;
        messages past the parts are deleted."""
        for i, part in enumerate(parts):
            if i < len(self._shown):
                mid, text = self._shown[i]
                if text != part:
                    await self._messages.edit(mid, part)
                    self._shown[i] = (mid, part)
            else:
                mid = await self._messages.post(part, not self._shown)
                self._shown.append((mid, part))
        while len(self._shown) > len(parts):
            await self._messages.delete(self._shown[-1][0])
            self._shown.pop()

    async def _settle(self, parts: list[str]) -> None:
        """`_show(parts)`, and where a call fails: the first message that is not right yet and
        every one after it are deleted (as far as the platform lets us) and posted anew. Raises
        only if posting anew fails too."""
        try:
            await self._show(parts)
            return
        except Exception as e:  # noqa: BLE001 - any platform failure: repaired below
            log.warning("finishing a streamed answer failed (%s); posting the rest anew", e)
        i = 0
        while i < len(self._shown) and i < len(parts) and self._shown[i][1] == parts[i]:
            i += 1
        for mid, _ in reversed(self._shown[i:]):
            with contextlib.suppress(Exception):
                await self._messages.delete(mid)
        del self._shown[i:]
        for part in parts[i:]:
            mid = await self._messages.post(part, not self._shown)
            self._shown.append((mid, part))
