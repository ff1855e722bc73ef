"""The single writer: one task owns the write connection, and every write is a job on its queue.

The writer takes all jobs waiting at that moment (MAX_BATCH at most), runs them in ONE
transaction and commits, then wakes each caller: so a caller returns only after its row is
committed, and concurrent conversations share commits instead of fighting over the lock. If
one job of a batch fails, the batch is rolled back and its jobs re-run one by one, so only the
bad one fails. (The package docstring, "Writes", says what that guarantees.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from bot.store.db import StoreClosed, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BATCH = 512  # jobs per transaction


@dataclass
class _Job:
    fn: Callable[[aiosqlite.Connection], Awaitable[Any]]
    fut: asyncio.Future[Any]
    what: str


_STOP = object()


class Writer:
    """The write queue and its task. `on_commit` runs after each commit, `on_rollback` before
    each transaction and after each rollback: what a job caches in memory (the conversations'
    row ids) is kept only once its transaction is."""

    def __init__(self, path: Path, *, on_commit: Callable[[], None],
                 on_rollback: Callable[[], None]) -> None:
        self.path = path
        self._on_commit = on_commit
        self._on_rollback = on_rollback
        self._db: aiosqlite.Connection | None = None
        self._jobs: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # For tests and the benchmark: how many jobs each commit carried.
        self.batches: list[int] = []

    def start(self, db: aiosqlite.Connection) -> None:
        """Start writing through `db` (the store's write connection; the store closes it)."""
        self._db = db
        self._task = asyncio.create_task(self._write_loop(), name="chimein:store-writer")

    def refuse(self) -> None:
        """From now on, `submit` raises StoreClosed (what is queued still runs)."""
        self._closed = True

    async def stop(self) -> None:
        """Run what is queued, then stop the task."""
        self._closed = True
        if self._task is not None:
            await self._jobs.put(_STOP)
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, what: str, fn: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run `fn` in the next write transaction; returns its result once committed."""
        if self._closed or self._task is None:
            raise StoreClosed(f"the store {self.path} is closed ({what} not written)")
        if self._task.done():
            raise StoreError(f"the store writer stopped; {what} not written")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._jobs.put(_Job(fn, fut, what))
        return await fut

    async def _write_loop(self) -> None:
        stop = False
        while not stop:
            job = await self._jobs.get()
            if job is _STOP:
                break
            batch = [job]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._jobs.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            try:
                await self._run_batch(batch)
            except Exception as e:  # never leave a caller waiting forever
                log.exception("store writer: a batch of %d failed", len(batch))
                for j in batch:
                    if not j.fut.done():
                        j.fut.set_exception(StoreError(f"{j.what} not written: {e}"))

    async def _run_batch(self, batch: list[_Job]) -> None:
        db = self._db
        assert db is not None  # internal invariant: the writer runs only while open
        live = [j for j in batch if not j.fut.done()]
        if not live:
            return
        results: list[Any] = []
        self._on_rollback()
        try:
            await db.execute("BEGIN IMMEDIATE")
            for j in live:
                results.append(await j.fn(db))
            await db.execute("COMMIT")
        except Exception as e:  # noqa: BLE001  (handed to the job's caller below)
            with contextlib.suppress(Exception):
                await db.execute("ROLLBACK")
            self._on_rollback()
            if len(live) == 1:
                log.warning("store: %s failed: %s", live[0].what, e)
                if not live[0].fut.done():
                    live[0].fut.set_exception(e)
                return
            # Re-run one by one so that only the job at fault fails.
            for j in live:
                await self._run_batch([j])
            return
        self._on_commit()
        self.batches.append(len(live))
        if len(self.batches) > 10_000:
            del self.batches[:5_000]
        for j, r in zip(live, results, strict=True):
            if not j.fut.done():
                j.fut.set_result(r)
