"""Neutral, frozen types that cross the adapter <-> core seam.

Every platform event becomes one of these; nothing here imports a platform library (or anything
beyond the standard library), so the core can be tested without Slack or Discord.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, order=True)
class ConversationKey:
    """One conversation: a channel, or a thread inside a channel (a thread is its own)."""

    platform: str
    channel: str
    thread: str | None = None

    def __str__(self) -> str:
        base = f"{self.platform}:{self.channel}"
        return f"{base}/{self.thread}" if self.thread else base


@dataclass(frozen=True)
class Message:
    """A message someone posted in a conversation.

    `author_name` is the display name the model sees (`Name: text`); `author_id` is what the store
    keys on. `mentions_bot` is set by the adapter when the platform itself marks a mention of the
    bot (a Slack `<@U...>`, a Discord user or role mention): that always counts as addressed.
    """

    key: ConversationKey
    author_id: str
    author_name: str
    text: str
    message_id: str | None = None
    ts: float = field(default_factory=time.time)
    is_bot: bool = False  # another bot (never answered, kept as context)
    is_self: bool = False  # the assistant's own message (kept as context, never answered)
    mentions_bot: bool = False
    is_dm: bool = False
    attachments: tuple[str, ...] = ()
    reply_to: str | None = None  # platform id of the message this one replies to


@dataclass(frozen=True)
class Edit:
    """A message was edited on the platform."""

    key: ConversationKey
    message_id: str
    author_id: str
    new_text: str
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Deletion:
    """A message was deleted on the platform (by its author or a moderator)."""

    key: ConversationKey
    message_id: str
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Reaction:
    """A reaction added to (or removed from) a message; feedback when the target is the bot's."""

    key: ConversationKey
    message_id: str
    user_id: str
    emoji: str
    added: bool = True
    ts: float = field(default_factory=time.time)


Event = Message | Edit | Deletion | Reaction


@dataclass(frozen=True)
class Reply:
    """What the core asks an adapter to post."""

    key: ConversationKey
    text: str
    in_reply_to: str | None = None  # the triggering message's platform id
    addressed: bool = False  # an answer to a direct address (adapters may thread these)


@dataclass(frozen=True)
class Turn:
    """One turn of a conversation as the model sees it.

    Users: `role="user"`, `name` set. The assistant: `role="assistant"` with `content=None` for
    a silence, or the posted text. `role="system"` holds instructions. Markers are never stored
    here: `bot.render` is the only place that spells them.
    """

    role: Literal["user", "assistant", "system"]
    content: str | None
    name: str | None = None

    @property
    def silent(self) -> bool:
        return self.role == "assistant" and self.content is None


def user(name: str, text: str) -> Turn:
    return Turn("user", text, name)


def assistant(text: str | None) -> Turn:
    return Turn("assistant", text, "assistant")


def model_view_text(text: str, attachments: Sequence[str] = (),
                    max_chars: int | None = None) -> str:
    """A user message as the model sees it at inference (the core, and the store's export): NUL
    removed, cut at `max_chars` (None: whole), attachments named when there is no text."""
    text = text.replace("\x00", "")
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars] + " …[truncated]"
    if not text.strip() and attachments:
        text = "[attachment: " + ", ".join(attachments) + "]"
    return text
