"""Erasure on disk: what forget, retention, deletions and edits remove also leaves the file.

Removing a row is not removing its bytes. secure_delete zeroes the text in the pages a deletion
writes, but those pages go to the WAL first: the file keeps its old pages, and the WAL the
pages that first held the text, until a checkpoint copies the WAL into the file and truncates
it. A TRUNCATE checkpoint cannot finish while another connection (a long export, a `sqlite3`
shell, another chimein process) reads an older snapshot. So each forget, retention purge,
deletion and edit leaves a row in `erasures` in its own transaction; a row goes only once a
checkpoint has finished after it. Attempts wait CHECKPOINT_BUSY_MS at most, on their own
connection (aiosqlite's thread, never the event loop), and a busy file is retried in the
background until it is free.

Its own module, not part of forget's: edits and deletions (bot.store.events) request erasures
too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import aiosqlite

from bot.store.db import StoreClosed, StoreError, connect, fetch
from bot.store.writer import Writer

log = logging.getLogger(__name__)

# One checkpoint attempt waits this long for other readers and the writer; a busy file is
# retried in the background from ERASE_RETRY_S[0] seconds, doubling up to ERASE_RETRY_S[1]; an
# open store also looks every ERASE_POLL_S for erasures another process left pending.
CHECKPOINT_BUSY_MS = 250
ERASE_RETRY_S = (0.5, 30.0)
ERASE_POLL_S = 60.0


async def checkpoint_connection(path: Path, synchronous: str) -> aiosqlite.Connection:
    """The eraser's own connection: it waits CHECKPOINT_BUSY_MS at most for a busy file."""
    ckpt = await connect(path, synchronous)
    try:
        await ckpt.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_MS}")
    except BaseException:
        await ckpt.close()
        raise
    return ckpt


class Eraser:
    """Pending erasures, the checkpoint connection, and the background task that finishes them
    (`start` at open; `refuse`, `stop` and `close` at close, in that order)."""

    def __init__(self, path: Path, writer: Writer, *,
                 poll_interval: float = ERASE_POLL_S) -> None:
        self.path = path
        self._writer = writer
        self.poll_interval = poll_interval
        self._ckpt: aiosqlite.Connection | None = None  # checkpoints only (a short busy wait)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()  # set (and replaced) when pending erasures finish
        self._pending = True  # unknown until the first look at open
        self._busy_since: float | None = None  # when a checkpoint first found the file busy
        self._closed = False

    def start(self, ckpt: aiosqlite.Connection) -> None:
        """Own `ckpt` (from `checkpoint_connection`; `close` closes it) and start finishing
        erasures in the background."""
        self._ckpt = ckpt
        self._task = asyncio.create_task(self._loop(), name="chimein:store-eraser")

    def refuse(self) -> None:
        """The store is closing: no more retries (the last try is `close`'s)."""
        self._closed = True

    async def stop(self) -> None:
        """Stop the background task."""
        self._closed = True
        if self._task is not None:
            # Stopped by the flag, not cancelled: a cancellation that lands as asyncio.wait_for
            # times out is lost on Python 3.11, and close() would wait for ever.
            self._wake.set()
            await asyncio.gather(self._task, return_exceptions=True)

    async def close(self) -> None:
        """After the writer has stopped: a last try, then close the checkpoint connection."""
        if self._ckpt is not None and self._pending:
            # A last try, now that this process writes nothing more.
            with contextlib.suppress(Exception):
                await self._once(direct=True)
            if self._pending:
                log.warning("store %s: removing erased text from the file is still pending (another "
                            "process reads it); the next chimein that opens the store finishes "
                            "it", self.path)
        self._changed.set()  # wake anyone waiting in wait_erased: the answer is False
        if self._ckpt is not None:
            with contextlib.suppress(Exception):
                await self._ckpt.close()
        self._ckpt = None

    async def request(self, db: aiosqlite.Connection, what: str) -> None:
        """Inside a write: what it removes must also leave the file's bytes."""
        await db.execute("INSERT INTO erasures (requested_ts, what) VALUES (?, ?)",
                         (time.time(), what))
        self._pending = True

    def wake(self) -> None:
        """Finish what was requested in the background, now (an edit or deletion never waits)."""
        self._wake.set()

    async def _once(self, *, direct: bool = False) -> bool:
        """One checkpoint attempt; True when no erasure is pending after it. `direct`: clear
        the done rows on the checkpoint connection (at close, the writer has stopped)."""
        ckpt = self._ckpt
        if ckpt is None:
            return False
        top = (await fetch(ckpt, "SELECT MAX(id) FROM erasures"))[0][0]
        if top is None:
            self._erased()
            return True
        busy, _, _ = (await fetch(ckpt, "PRAGMA wal_checkpoint(TRUNCATE)"))[0]
        if busy:
            if self._busy_since is None:
                self._busy_since = time.monotonic()
            return False

        async def op(db: aiosqlite.Connection) -> int:
            await db.execute("DELETE FROM erasures WHERE id <= ?", (top,))
            return int((await fetch(db, "SELECT COUNT(*) FROM erasures"))[0][0])

        if direct:
            left = await op(ckpt)
        else:
            left = await self._writer.submit("erasure done", op)
        if self._busy_since is not None:
            log.info("store %s: the file is free again; erased text is gone from it and its "
                     "WAL (pending for %.1fs)", self.path, time.monotonic() - self._busy_since)
            self._busy_since = None
        if left:
            return False  # requested meanwhile: the next attempt takes it
        self._erased()
        return True

    def _erased(self) -> None:
        self._pending = False
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def finish(self, wait: float = 0.0) -> bool:
        """Try to finish pending erasures now, for up to `wait` seconds (at least one attempt);
        True when the file and its WAL hold no erased byte any more. Otherwise the store keeps
        trying in the background."""
        deadline = time.monotonic() + wait
        delay = ERASE_RETRY_S[0]
        while True:
            try:
                if await self._once():
                    return True
            except (aiosqlite.Error, StoreError) as e:
                log.warning("store: checkpoint failed (%s); retrying in the background", e)
            self._wake.set()
            left = deadline - time.monotonic()
            if left <= 0 or self._closed:
                log.info("store %s: the file is busy (another connection reads it); erased text "
                         "is removed from it as soon as it is free", self.path)
                return False
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, ERASE_RETRY_S[1])

    @property
    def pending(self) -> bool:
        """Something was removed from the tables but may still be in the file's bytes."""
        return self._pending

    async def wait_erased(self, timeout: float | None = None) -> bool:
        """Until no erasure is pending on disk (True), or `timeout` passes or the store closes
        (False)."""
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while self._pending and not self._closed:
            changed = self._changed
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                return False
        return not self._pending

    async def _loop(self) -> None:
        """In the background while open: finish pending erasures, retrying a busy file, and
        look every `poll_interval` for those another process left."""
        delay = ERASE_RETRY_S[0]
        while not self._closed:
            try:
                done = await self._once()
            except StoreClosed:
                return
            except Exception as e:  # noqa: BLE001 - keep trying: a later attempt may work
                log.warning("store: checkpoint failed (%s); trying again in %gs", e, delay)
                done = False
            if done:
                delay, timeout = ERASE_RETRY_S[0], self.poll_interval
            else:
                timeout, delay = delay, min(delay * 2, ERASE_RETRY_S[1])
            if self._closed:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
