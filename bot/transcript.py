"""The JSONL conversation format, read with a line number on every problem.

One conversation a line: either a bare list of `{"role", "name", "content"}` items, or an
object with `"messages"` (that list) and optional `"id"` and `"tags"`. An assistant turn
appears only where the assistant spoke. Bad lines are reported and skipped; reading never
raises on bad content (only on a file that cannot be opened).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.message import clean_text, cleaning_changes

ROLES = ("user", "assistant", "system")


@dataclass(frozen=True)
class Conversation:
    line: int
    records: list[dict[str, Any]]
    id: str | None = None
    tags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what reading changed (text cleaned), for `data check`


@dataclass
class ReadResult:
    conversations: list[Conversation] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "FILE:LINE: problem"


def parse_line(text: str) -> Conversation:
    """One JSONL line -> Conversation (line=0); raises ValueError saying what is wrong.

    Text comes out as `bot.message.clean_text` makes it (valid Unicode, no control characters
    but newline and tab); what that changed is listed in `notes`."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply (lists or objects inside each other hundreds "
                         "of levels deep): not a conversation") from None
    conv_id: str | None = None
    tags: tuple[str, ...] = ()
    notes: list[str] = []
    if isinstance(obj, dict):
        if "messages" not in obj:
            raise ValueError("an object line needs a \"messages\" list")
        raw_id = obj.get("id")
        if raw_id is not None and not isinstance(raw_id, str | int | float):
            raise ValueError("\"id\" must be a string or a number")
        conv_id = None if raw_id is None else clean_text(raw_id)
        raw_tags = obj.get("tags") or []
        if not isinstance(raw_tags, list) or not all(
                isinstance(t, str | int | float) for t in raw_tags):
            raise ValueError("\"tags\" must be a list of strings")
        tags = tuple(clean_text(t) for t in raw_tags)
        obj = obj["messages"]
    if not isinstance(obj, list):
        raise ValueError(f"expected a list of messages, got {type(obj).__name__}")  # noqa: TRY004
    if not obj:
        raise ValueError("empty conversation")
    records = []
    for i, item in enumerate(obj):
        if not isinstance(item, dict):
            raise ValueError(  # noqa: TRY004 - every problem of a line is a ValueError
                f"message {i}: expected an object, got {type(item).__name__}")
        role = item.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i}: role {role!r} is not one of {', '.join(ROLES)}")
        content = item.get("content")
        if content is not None and not isinstance(content, str):
            raise ValueError(f"message {i}: content must be a string")
        if role != "assistant" and content is None:
            raise ValueError(f"message {i}: a {role} message needs content")
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"message {i}: name must be a string")
        if role == "system" and i != 0:
            raise ValueError(f"message {i}: a system message may only come first")
        if content is not None:
            content = _cleaned(content, f"message {i}: content", notes)
        if name is not None:
            name = _cleaned(name, f"message {i}: name", notes)
        rec: dict[str, Any] = {"role": role, "content": content}
        if role == "user":
            rec["name"] = (name or "").strip() or "user"
        elif name:
            rec["name"] = name
        records.append(rec)
    if not any(r["role"] == "user" for r in records):
        raise ValueError("no user message")
    return Conversation(0, records, conv_id, tags, tuple(notes))


def _cleaned(value: str, where: str, notes: list[str]) -> str:
    what = cleaning_changes(value)
    if what is not None:
        notes.append(f"{where}: {what}")
    return clean_text(value)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Conversation | None, str | None]]:
    """(line number, conversation or None, error or None) for every non-blank line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield n, None, f"not UTF-8 ({e.reason} at byte {e.start})"
                continue
            if not text.strip():
                continue
            try:
                conv = parse_line(text)
            except ValueError as e:
                yield n, None, str(e)
                continue
            yield n, Conversation(n, conv.records, conv.id, conv.tags, conv.notes), None


def read_jsonl(path: str | Path) -> ReadResult:
    """Every good conversation of a file, and every problem as 'FILE:LINE: what'."""
    result = ReadResult()
    for n, conv, err in iter_jsonl(path):
        if err is not None:
            result.errors.append(f"{path}:{n}: {err}")
        elif conv is not None:
            result.conversations.append(conv)
    return result
