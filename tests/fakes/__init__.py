"""Fake platform servers on 127.0.0.1 that the real client libraries talk to (STYLE.md #13),
plus in-memory stand-ins for the core's store and commands seams used by the adapter tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from adapters.common import Lifecycle
from bot.engine.base import Decision
from bot.message import ConversationKey, Deletion, Edit, Message, Reaction, Turn


class FakeServer(Lifecycle):
    """What both fake servers share: `posts` (what the bot posted, in order) and waiting for a
    condition on their state, re-checked on every change (`_notify`)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` holds (re-checked on every change), or fail the test."""
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)
        await asyncio.wait_for(_wait(), timeout)

    async def wait_posts(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        await self.wait_for(lambda: len(self.posts) >= n, timeout)
        return self.posts


class RecordingStore:
    """Implements bot.core.Store by keeping every call in lists (consent: everyone)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.edits: list[Edit] = []
        self.deletions: list[Deletion] = []
        self.reactions: list[Reaction] = []
        self.decisions: list[tuple[ConversationKey, Decision]] = []
        self.bot_turns: list[tuple[ConversationKey, str, str | None]] = []

    async def record_message(self, msg: Message) -> bool:
        self.messages.append(msg)
        return True

    async def record_edit(self, edit: Edit) -> None:
        self.edits.append(edit)

    async def record_deletion(self, deletion: Deletion) -> None:
        self.deletions.append(deletion)

    async def record_reaction(self, reaction: Reaction) -> None:
        self.reactions.append(reaction)

    async def record_decision(self, key: ConversationKey, decision: Decision, **kw: Any) -> None:
        self.decisions.append((key, decision))

    async def record_bot_turn(self, key: ConversationKey, text: str, *,
                              message_id: str | None, **kw: Any) -> None:
        self.bot_turns.append((key, text, message_id))


class RecordingCommands:
    """Implements bot.core.Commands for a few words; remembers who asked what."""

    ANSWERS: ClassVar[dict[str, str]] = {"optin": "You're opted in.", "optout": "You're opted out.",
               "forget": "Forgotten.", "status": "Logging is off here.", "help": "Commands: ..."}

    def __init__(self) -> None:
        self.calls: list[tuple[Message, str]] = []

    def recognises(self, msg: Message, text: str) -> bool:
        return text.strip().lower() in self.ANSWERS

    async def handle(self, msg: Message, text: str, announce: Any = None) -> str | None:
        self.calls.append((msg, text))
        return self.ANSWERS.get(text.strip().lower())


def last_user_text(turns: Sequence[Turn]) -> str:
    return next(t.content or "" for t in reversed(turns) if t.role == "user")


def chime_on_429(turns: Sequence[Turn]) -> float:
    """The scripted model: p_silence 0.0 (speak) when the last message mentions 429, else
    0.95 (silence)."""
    return 0.0 if "429" in last_user_text(turns) else 0.95


def marked_echo(turns: Sequence[Turn]) -> str:
    """An answer that starts with the response marker, as a raw model continuation might: what
    reaches the platform must not contain it."""
    return "(response) echo: " + last_user_text(turns)
