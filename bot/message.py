"""Neutral, frozen types that cross the adapter <-> core seam.

Every platform event becomes one of these; nothing here imports a platform library (or anything
beyond the standard library), so the core can be tested without Slack or Discord.

Every text field of every type here (text, names, ids, keys, turns) is cleaned when the object
is made (`clean_text`): valid Unicode with no surrogates and no control characters other than
newline and tab, whatever the source (a platform, the console, a JSONL file). That is the one
boundary: the core, the engine, the tokenizer and the store never see bad text.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

# What no chat shows and no tokenizer or SQLite file should get: C0 and C1 control characters
# other than newline and tab (NUL, ESC, DEL...), and lone UTF-16 surrogates (undecodable bytes
# read with surrogateescape, a JSON "\ud800"), which are not valid Unicode at all.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Terminal escape sequences pasted from a coloured log (`ESC[31m`, a title `ESC]0;...BEL`):
# removed whole, not just their ESC, which would leave "[31m" in the text.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x9b[0-?]*[ -/]*[@-~]"
                      r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_text(text: object) -> str:
    """`text` as every type here holds it: valid Unicode (a lone surrogate becomes U+FFFD, a
    split pair is joined), CRLF and bare CR as newline, no control characters other than
    newline and tab. Anything that is not a string is turned into one (None: "")."""
    if not isinstance(text, str):
        if text is None:
            return ""
        try:
            text = str(text)
        except Exception:  # noqa: BLE001 - a value whose str() fails is still a value
            text = f"<{type(text).__name__}>"
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _SURROGATE.search(text):
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if "\x1b" in text or "\x9b" in text:
        text = _ESCAPES.sub("", text)
    return _CONTROLS.sub("", text)


def cleaning_changes(text: str) -> str | None:
    """What `clean_text` changes in `text`, in words (for reports on data files); None when
    it changes nothing."""
    what = []
    if _SURROGATE.search(text):
        what.append("invalid Unicode (lone surrogates) replaced by U+FFFD")
    if "\r" in text or _CONTROLS.search(text):
        what.append("control characters removed (a carriage return is a newline)")
    return "; ".join(what) or None


def _clean(obj: object, fields: Sequence[str], optional: Sequence[str] = ()) -> None:
    """Clean a frozen dataclass's text fields in place (its __post_init__), so that whatever
    an adapter, the console or a JSONL file hands over, nothing downstream sees bad text."""
    for name in fields:
        object.__setattr__(obj, name, clean_text(getattr(obj, name)))
    for name in optional:
        value = getattr(obj, name)
        if value is not None:
            object.__setattr__(obj, name, clean_text(value))


@dataclass(frozen=True, order=True)
class ConversationKey:
    """One conversation: a channel, or a thread inside a channel (a thread is its own)."""

    platform: str
    channel: str
    thread: str | None = None

    def __post_init__(self) -> None:
        _clean(self, ("platform", "channel"), ("thread",))

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

    def __post_init__(self) -> None:
        _clean(self, ("author_id", "author_name", "text"), ("message_id", "reply_to"))
        object.__setattr__(self, "attachments", tuple(clean_text(a) for a in self.attachments))


@dataclass(frozen=True)
class Edit:
    """A message was edited on the platform."""

    key: ConversationKey
    message_id: str
    author_id: str
    new_text: str
    ts: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        _clean(self, ("message_id", "author_id", "new_text"))


@dataclass(frozen=True)
class Deletion:
    """A message was deleted on the platform (by its author or a moderator)."""

    key: ConversationKey
    message_id: str
    ts: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        _clean(self, ("message_id",))


@dataclass(frozen=True)
class Reaction:
    """A reaction added to (or removed from) a message; feedback when the target is the bot's."""

    key: ConversationKey
    message_id: str
    user_id: str
    emoji: str
    added: bool = True
    ts: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        _clean(self, ("message_id", "user_id", "emoji"))


Event = Message | Edit | Deletion | Reaction


@dataclass(frozen=True)
class Reply:
    """What the core asks an adapter to post."""

    key: ConversationKey
    text: str
    in_reply_to: str | None = None  # the triggering message's platform id
    addressed: bool = False  # an answer to a direct address (adapters may thread these)

    def __post_init__(self) -> None:
        _clean(self, ("text",), ("in_reply_to",))


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

    def __post_init__(self) -> None:
        _clean(self, (), ("content", "name"))

    @property
    def silent(self) -> bool:
        return self.role == "assistant" and self.content is None


def user(name: str, text: str) -> Turn:
    return Turn("user", text, name)


def assistant(text: str | None) -> Turn:
    return Turn("assistant", text, "assistant")


def model_view_text(text: str, attachments: Sequence[str] = (),
                    max_chars: int | None = None) -> str:
    """A user message as the model sees it at inference (the core, and the store's export):
    cleaned (`clean_text`: text stored by an older chimein may hold NUL or other control
    characters), cut at `max_chars` (None: whole), attachments named when there is no text."""
    text = clean_text(text)
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars] + " …[truncated]"
    if not text.strip() and attachments:
        text = "[attachment: " + ", ".join(attachments) + "]"
    return text
