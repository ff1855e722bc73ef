"""What every part of the store stands on: its errors, how a connection is opened, and the two
small SQL helpers. Below the schema and the writer, so that neither depends on the other."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosqlite

from bot.errors import ChimeinError

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000  # another process (the `chimein data` CLI) may hold the write lock


class Read(Protocol):
    """A query on the store's shared reader connection (`Store._read`)."""

    def __call__(self, sql: str, params: Sequence[Any] = ...) -> Awaitable[list[Any]]: ...


class StoreError(ChimeinError, RuntimeError):
    """The store cannot be opened or used; the message says what to do."""


class StoreClosed(StoreError):
    """A write was attempted after the store was closed."""


async def connect(path: Path, synchronous: str) -> aiosqlite.Connection:
    """A connection with the store's settings (every connection has them: the writer's, the
    reader's, the checkpoints', and each export's snapshot)."""
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await db.execute("PRAGMA foreign_keys = ON")
        await db.execute(f"PRAGMA synchronous = {synchronous}")
        # Deleted and forgotten text is overwritten in the file, not just unlinked.
        await db.execute("PRAGMA secure_delete = ON")
    except BaseException:
        await db.close()
        raise
    return db


async def fetch(db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return list(await db.execute_fetchall(sql, params))


def chunks(items: Sequence[T], size: int = 500) -> list[list[T]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]
