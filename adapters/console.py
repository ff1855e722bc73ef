"""A group chat in the terminal: `chimein console`.

Type `alice: hi there`; the bot's answers appear as `assistant: ...`, written out as the model
writes them (with `[generation] stream`, the default). `/who` lists who spoke, `/quit` (or end
of input) leaves. A line without `name:` is said by the last speaker. Replaying JSONL
conversations through the core is `bot.replay` (`chimein replay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
from collections.abc import AsyncIterator
from typing import Any, TextIO

from bot.config import Settings
from bot.core import Core
from bot.message import ConversationKey, Message, Reply, clean_text
from bot.render import ASSISTANT_NAME
from bot.wiring import load_engine_async

log = logging.getLogger(__name__)

_LINE = re.compile(r"^\s*([^:：\s][^:：]{0,40}?)\s*[:：]\s?(.*)$", re.DOTALL)


class ConsoleAdapter:
    """Prints replies as `assistant: text`; a streamed answer is written out as it comes."""

    platform = "console"

    def __init__(self, out: TextIO, name: str = ASSISTANT_NAME):
        self.out = out
        self.name = name
        self.sent: list[Reply] = []

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()  # stdout may be a pipe: each piece shows when it is written

    async def send(self, reply: Reply) -> str | None:
        self.sent.append(reply)
        self.write(f"{self.name}: {reply.text}\n")
        return f"console-{len(self.sent)}"

    def open_stream(self, reply: Reply) -> ConsoleStream:
        return ConsoleStream(self, reply)

    @contextlib.asynccontextmanager
    async def typing(self, key: ConversationKey) -> AsyncIterator[None]:
        yield


class ConsoleStream:
    """One answer written to the terminal as it comes (bot.stream.ReplyStream): `assistant: `,
    then the new part of each update, then what is left and the end of the line. Written text
    cannot be taken back; the core's updates only grow, so the line ends as the whole answer."""

    def __init__(self, adapter: ConsoleAdapter, reply: Reply):
        self._adapter = adapter
        self._reply = reply
        self._written: str | None = None  # None: the line is not started

    async def update(self, text: str) -> None:
        if self._written is None:
            self._adapter.write(f"{self._adapter.name}: ")
            self._written = ""
        if text.startswith(self._written):
            self._adapter.write(text[len(self._written):])
            self._written = text

    async def finish(self, text: str) -> str | None:
        written = self._written
        if written is not None and text.startswith(written):
            self._adapter.write(text[len(written):] + "\n")
            self._adapter.sent.append(Reply(self._reply.key, text, self._reply.in_reply_to,
                                            self._reply.addressed))
            return f"console-{len(self._adapter.sent)}"
        if written is not None:  # cannot happen with the core's updates: the whole line again
            self._adapter.write("\n")
        return await self._adapter.send(Reply(self._reply.key, text, self._reply.in_reply_to,
                                              self._reply.addressed))

    async def abort(self, text: str | None) -> None:
        if self._written is not None:
            self._adapter.write(" …\n* (that answer broke off)\n")
        if text:
            await self._adapter.send(Reply(self._reply.key, text, self._reply.in_reply_to,
                                           self._reply.addressed))


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
        engine = await load_engine_async(settings)
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
