"""Consent and channel settings: who opted in, which channels log (an admin's `logging on`;
new channels start with `default_logging`), and admins' mode and threshold per channel. Every
write checks here, in its own transaction, before anything is written (the package docstring,
"Consent")."""

from __future__ import annotations

import time

import aiosqlite

from bot.store.db import Read, fetch
from bot.store.writer import Writer


class Consent:
    """Who may be stored, and where; the admins' per-channel policy, restored at open."""

    def __init__(self, writer: Writer, read: Read, *, default_logging: bool) -> None:
        self._writer = writer
        self._read = read
        self.default_logging = default_logging
        self._overrides: dict[tuple[str, str], tuple[str | None, float | None]] = {}

    async def load(self, db: aiosqlite.Connection) -> None:
        """At open: the admins' per-channel mode and threshold (`channel_overrides`)."""
        rows = await fetch(
            db, "SELECT platform, channel, mode, threshold FROM channels "
            "WHERE mode IS NOT NULL OR threshold IS NOT NULL")
        self._overrides = {(r[0], r[1]): (r[2], r[3]) for r in rows}

    async def allowed(self, db: aiosqlite.Connection, platform: str, channel: str,
                      user_id: str) -> tuple[bool, bool]:
        """(the user is opted in, the channel logs) in one query."""
        rows = await fetch(
            db, "SELECT (SELECT opted_in FROM consent WHERE platform = ? AND user_id = ?), "
            "(SELECT logging FROM channels WHERE platform = ? AND channel = ?)",
            (platform, user_id, platform, channel))
        opted, logging_on = rows[0]
        return bool(opted), self.default_logging if logging_on is None else bool(logging_on)

    async def channel_logs(self, db: aiosqlite.Connection, platform: str,
                           channel: str) -> bool:
        rows = await fetch(
            db, "SELECT logging FROM channels WHERE platform = ? AND channel = ?",
            (platform, channel))
        return self.default_logging if not rows else bool(rows[0][0])

    async def set_consent(self, platform: str, user_id: str, opted_in: bool) -> None:
        """`optin` / `optout`. Opting out keeps what is stored (see `forget`) but stores
        nothing new, and export leaves out everyone who is not opted in at export time."""
        async def op(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO consent (platform, user_id, opted_in, updated_ts) VALUES "
                "(?, ?, ?, ?) ON CONFLICT (platform, user_id) DO UPDATE SET "
                "opted_in = excluded.opted_in, updated_ts = excluded.updated_ts",
                (platform, user_id, int(opted_in), time.time()))

        await self._writer.submit("set_consent", op)

    async def consent(self, platform: str, user_id: str) -> bool | None:
        """True opted in, False opted out, None never asked."""
        rows = await self._read("SELECT opted_in FROM consent WHERE platform = ? AND "
                                "user_id = ?", (platform, user_id))
        return None if not rows else bool(rows[0][0])

    async def set_channel_logging(self, platform: str, channel: str, on: bool,
                                  by: str | None = None) -> None:
        """An admin's `logging on|off` for a channel (and its threads)."""
        async def op(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO channels (platform, channel, logging, updated_by, updated_ts) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (platform, channel) DO UPDATE SET "
                "logging = excluded.logging, updated_by = excluded.updated_by, "
                "updated_ts = excluded.updated_ts",
                (platform, channel, int(on), by, time.time()))

        await self._writer.submit("set_channel_logging", op)

    async def channel_logging(self, platform: str, channel: str) -> bool:
        rows = await self._read("SELECT logging FROM channels WHERE platform = ? AND "
                                "channel = ?", (platform, channel))
        return self.default_logging if not rows else bool(rows[0][0])

    async def set_channel_policy(self, platform: str, channel: str, *, mode: str | None = None,
                                 threshold: float | None = None, by: str | None = None) -> None:
        """Persist an admin's `mode` / `threshold` for a channel (restored at the next start
        through `channel_overrides`)."""
        async def op(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO channels (platform, channel, logging, updated_by, updated_ts, mode, "
                "threshold) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (platform, channel) DO "
                "UPDATE SET mode = COALESCE(excluded.mode, mode), "
                "threshold = COALESCE(excluded.threshold, threshold), "
                "updated_by = excluded.updated_by, updated_ts = excluded.updated_ts",
                (platform, channel, int(self.default_logging), by, time.time(), mode, threshold))

        await self._writer.submit("set_channel_policy", op)
        old_mode, old_thr = self._overrides.get((platform, channel), (None, None))
        self._overrides[(platform, channel)] = (mode or old_mode,
                                                old_thr if threshold is None else threshold)

    def channel_overrides(self) -> dict[tuple[str, str], tuple[str | None, float | None]]:
        """(platform, channel) -> (mode, threshold) set by admins, as loaded at open."""
        return dict(self._overrides)

