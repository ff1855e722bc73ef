"""The read side: what is stored about a user (`status`), the stats (`chimein data stats`), and
`Snapshot`, the read API export goes through (one consistent view of the file on its own
connection, made by `Store.snapshot()`). Writers carry on meanwhile (WAL)."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite

from bot.store.db import Read, fetch
from bot.store.schema import SCHEMA_VERSION


@dataclass(frozen=True)
class UserStatus:
    """What the store holds about one user (the `status` command)."""

    opted_in: bool | None  # None: never asked
    messages: int
    channels: dict[str, int]  # "platform:channel" -> messages
    reactions: int
    first_ts: float | None
    last_ts: float | None



async def user_status(read: Read, platform: str, user_id: str,
                      opted: bool | None) -> UserStatus:
    """What is stored about a user (the `status` command); `opted`: their consent."""
    rows = await read(
        "SELECT c.channel, COUNT(*), MIN(m.ts), MAX(m.ts) FROM messages m JOIN conversations "
        "c ON c.id = m.conversation_id WHERE c.platform = ? AND m.author_id = ? AND "
        "m.role = 'user' GROUP BY c.channel", (platform, user_id))
    reactions = await read(
        "SELECT COUNT(*) FROM reactions r JOIN messages m ON m.id = r.message_id JOIN "
        "conversations c ON c.id = m.conversation_id WHERE c.platform = ? AND "
        "r.user_id = ?", (platform, user_id))
    firsts = [r[2] for r in rows]
    lasts = [r[3] for r in rows]
    return UserStatus(opted, sum(r[1] for r in rows),
                      {f"{platform}:{r[0]}": r[1] for r in rows}, reactions[0][0],
                      min(firsts) if firsts else None, max(lasts) if lasts else None)


async def stats(read: Read, *, path: Path, default_logging: bool,
                model_versions: Callable[[], Awaitable[list[dict[str, Any]]]]
                ) -> dict[str, Any]:
    """What is stored, per channel and per user (`chimein data stats`)."""
    channels = await read(
        "SELECT c.platform, c.channel, "
        "SUM(m.role = 'user'), SUM(m.role = 'assistant' AND m.text IS NOT NULL), "
        "SUM(m.role = 'gap'), "
        "COUNT(DISTINCT m.author_id), MIN(m.ts), MAX(m.ts) FROM conversations c "
        "LEFT JOIN messages m ON m.conversation_id = c.id GROUP BY c.platform, c.channel "
        "ORDER BY c.platform, c.channel")
    settings = {(r[0], r[1]): r[2:] for r in await read(
        "SELECT platform, channel, logging, mode, threshold FROM channels")}
    decisions = {(r[0], r[1]): r[2:] for r in await read(
        "SELECT c.platform, c.channel, COUNT(*), SUM(d.speak), AVG(d.latency_ms) FROM "
        "decisions d JOIN conversations c ON c.id = d.conversation_id "
        "GROUP BY c.platform, c.channel")}
    users = await read(
        "SELECT c.platform, m.author_id, COUNT(*), MAX(m.author_name), MIN(m.ts), "
        "MAX(m.ts) FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        "WHERE m.role = 'user' GROUP BY c.platform, m.author_id ORDER BY c.platform, "
        "m.author_id")
    consent = {(r[0], r[1]): bool(r[2]) for r in await read(
        "SELECT platform, user_id, opted_in FROM consent")}
    out_channels = []
    for p, ch, n_user, n_bot, n_gap, n_authors, first, last in channels:
        logging_on, mode, thr = settings.get((p, ch), (None, None, None))
        n_dec, n_speak, lat = decisions.get((p, ch), (0, 0, None))
        out_channels.append({
            "channel": f"{p}:{ch}",
            "logging": default_logging if logging_on is None else bool(logging_on),
            "mode": mode, "threshold": thr, "messages": n_user or 0,
            "bot_turns": n_bot or 0, "gaps": n_gap or 0, "users": n_authors or 0,
            "decisions": n_dec or 0, "spoke": n_speak or 0,
            "mean_decision_ms": None if lat is None else round(lat, 2),
            "first": first, "last": last})
    seen = set()
    out_users = []
    for p, uid, n, name, first, last in users:
        seen.add((p, uid))
        out_users.append({"user": f"{p}:{uid}", "name": name, "messages": n,
                          "opted_in": consent.get((p, uid)), "first": first,
                          "last": last})
    for (p, uid), opted in sorted(consent.items()):
        if (p, uid) not in seen:
            out_users.append({"user": f"{p}:{uid}", "name": None, "messages": 0,
                              "opted_in": opted, "first": None, "last": None})
    totals = (await read(
        "SELECT (SELECT COUNT(*) FROM messages WHERE role = 'user'), "
        "(SELECT COUNT(*) FROM messages WHERE role = 'assistant' AND text IS NOT NULL), "
        "(SELECT COUNT(*) FROM decisions), (SELECT COUNT(*) FROM reactions), "
        "(SELECT COUNT(*) FROM consent WHERE opted_in = 1)"))[0]
    return {"path": str(path), "schema": SCHEMA_VERSION,
            "totals": {"messages": totals[0], "bot_turns": totals[1],
                       "decisions": totals[2], "reactions": totals[3],
                       "opted_in_users": totals[4]},
            "channels": out_channels, "users": out_users,
            "model_versions": await model_versions()}



# -- the export's read API -----------------------------------------------------------------
class StoredRow(NamedTuple):
    """One row of a conversation as export reads it: a user's message, a gap or a bot turn."""

    id: int
    role: str  # "user", "assistant" or "gap"
    author_id: str | None
    author_name: str | None
    text: str | None  # None: a gap, or a bot turn withheld, forgotten or deleted
    attachments: str | None  # a JSON list of names
    ts: float
    deleted_ts: float | None  # a bot turn deleted on the platform
    sort_key: int | None  # a bot turn: the row of the message it answered
    context_from: int | None  # a bot turn: the last row before the batch it was decided on


class Snapshot:
    """One consistent read of the whole store (a WAL snapshot on a connection of its own),
    made by `Store.snapshot()`: what `export_conversations` reads, and all it reads."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def opted_in(self) -> set[tuple[str, str]]:
        """(platform, user id) of everyone opted in now."""
        return {(r[0], r[1]) for r in await fetch(
            self._db, "SELECT platform, user_id FROM consent WHERE opted_in = 1")}

    async def conversations(self) -> list[tuple[int, str]]:
        """(id, platform) of every conversation with a user's message in it, oldest first."""
        return [(int(r[0]), str(r[1])) for r in await fetch(
            self._db, "SELECT c.id, c.platform FROM conversations c WHERE EXISTS (SELECT 1 FROM "
            "messages m WHERE m.conversation_id = c.id AND m.role = 'user') ORDER BY c.id")]

    async def negative_rows(self, conversation_id: int) -> set[int]:
        """The rows of a conversation that someone gave a negative reaction."""
        return {r[0] for r in await fetch(
            self._db, "SELECT DISTINCT r.message_id FROM reactions r JOIN messages m ON "
            "m.id = r.message_id WHERE m.conversation_id = ? AND r.negative = 1",
            (conversation_id,))}

    async def rows(self, conversation_id: int,
                   since: float = -math.inf) -> AsyncGenerator[StoredRow, None]:
        """A conversation's rows from `since` (a time) on, as the model saw them: in id order,
        each bot turn right after the message it answered. Streamed: use it with
        `contextlib.aclosing` if it may not be run to the end."""
        async with self._db.execute(
                "SELECT id, role, author_id, author_name, text, attachments, ts, deleted_ts, "
                "sort_key, context_from FROM messages WHERE conversation_id = ? AND "
                "ts >= ? ORDER BY COALESCE(sort_key, id), id", (conversation_id, since)) as cur:
            async for row in cur:
                yield StoredRow._make(row)
