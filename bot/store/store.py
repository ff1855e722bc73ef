"""The Store: it opens the file, owns the connections and the background tasks, and offers the
store's whole API by handing each call to the part that does it (composition, STYLE.md #3):

    Writer        the write queue (bot.store.writer)
    Consent       consent and channel settings (bot.store.consent)
    Events        messages, edits, deletions, reactions, decisions, bot turns (bot.store.events)
    Forgetter     gaps, forget, the export index, retention (bot.store.forget)
    Eraser        erasure on disk (bot.store.erasure)
    PrivacyMemory what a bot turn must not repeat (bot.store.privacy), as `store.privacy`

Each method below says in one line what it does; the part's method says the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import aiosqlite

from bot.config import StoreSettings
from bot.engine.base import Decision
from bot.message import ConversationKey, Deletion, Edit, Message, Reaction
from bot.store.consent import Consent
from bot.store.db import StoreClosed, StoreError, connect, fetch
from bot.store.erasure import ERASE_POLL_S, Eraser, checkpoint_connection
from bot.store.events import ConversationIds, Events
from bot.store.forget import ForgetResult, Forgetter
from bot.store.privacy import PrivacyMemory
from bot.store.reads import Snapshot, UserStatus, stats, user_status
from bot.store.schema import SCHEMA_VERSION, migrate
from bot.store.writer import Writer

log = logging.getLogger(__name__)


class Store:
    """The aiosqlite store; implements bot.core.Store. See the package docstring (bot.store)."""

    def __init__(self, path: str | os.PathLike[str], *, default_logging: bool = False,
                 retention_days: int = 0, retention_interval: float = 3600.0,
                 synchronous: str = "NORMAL", erase_poll_interval: float = ERASE_POLL_S):
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous must be NORMAL, FULL or EXTRA")
        self.path = Path(path)
        self.retention_days = retention_days
        self.retention_interval = retention_interval
        self._synchronous = synchronous.upper()
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._retention: asyncio.Task[None] | None = None
        self._closed = False
        self.privacy = PrivacyMemory()
        conversations = ConversationIds()
        self._writer = Writer(self.path, on_commit=conversations.commit,
                              on_rollback=conversations.rollback)
        self._eraser = Eraser(self.path, self._writer, poll_interval=erase_poll_interval)
        self._consent = Consent(self._writer, self._read, default_logging=default_logging)
        self._forget = Forgetter(self._writer, self.privacy, self._eraser)
        self._events = Events(self._writer, self._read, consent=self._consent,
                              privacy=self.privacy, forget=self._forget, eraser=self._eraser,
                              conversations=conversations)

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> Store:
        """A store configured from the [store] section (path, default_logging, retention)."""
        return cls(settings.path, default_logging=settings.default_logging,
                   retention_days=settings.retention_days)

    @classmethod
    async def open(cls, path: str | os.PathLike[str], **kwargs: Any) -> Store:
        """Open (create, migrate) a store; close it with `await store.close()`."""
        store = cls(path, **kwargs)
        await store._open()
        return store

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def default_logging(self) -> bool:
        """Whether a channel no admin has set logs."""
        return self._consent.default_logging

    @property
    def erase_poll_interval(self) -> float:
        """How often an open store looks for erasures another process left pending."""
        return self._eraser.poll_interval

    @property
    def batches(self) -> list[int]:
        """For tests and the benchmark: how many jobs each commit carried."""
        return self._writer.batches

    # -- opening and closing ------------------------------------------------------------------
    async def _open(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await connect(self.path, self._synchronous)
        except aiosqlite.OperationalError as e:  # permissions, a folder, a full disk...
            raise StoreError(f"cannot open the store {self.path}: {e}") from e
        except aiosqlite.DatabaseError as e:
            raise StoreError(f"{self.path} is not a chimein store ({e}); point store.path at "
                             "another file") from e
        except Exception as e:
            raise StoreError(f"cannot open the store {self.path}: {e}") from e
        ckpt: aiosqlite.Connection | None = None
        try:
            try:
                mode = (await fetch(db, "PRAGMA journal_mode = WAL"))[0][0]
            except aiosqlite.DatabaseError as e:
                raise StoreError(f"{self.path} is not a chimein store ({e}); point store.path "
                                 "at another file") from e
            if str(mode).lower() != "wal":
                log.warning("store %s: journal mode is %s, not WAL", self.path, mode)
            await migrate(db, self.path)
            await self._consent.load(db)
            seq = await fetch(db, "SELECT seq FROM sqlite_sequence WHERE name = 'messages'")
            self._forget.start_row = int(seq[0][0]) if seq else 0
            self._reader = await connect(self.path, self._synchronous)
            ckpt = await checkpoint_connection(self.path, self._synchronous)
        except BaseException:
            for conn in (self._reader, ckpt, db):
                if conn is not None:
                    await conn.close()
            self._reader = None
            raise
        self._db = db
        self._writer.start(db)
        self._eraser.start(ckpt)
        if self.retention_days > 0:
            self._retention = asyncio.create_task(self.run_retention(self.retention_interval),
                                                  name="chimein:store-retention")
        log.info("store %s open (schema v%d)", self.path, SCHEMA_VERSION)

    async def close(self) -> None:
        """Finish queued writes, stop the background tasks and close the file."""
        if self._closed:
            return
        self._closed = True
        self._writer.refuse()
        self._eraser.refuse()
        if self._retention is not None:
            self._retention.cancel()
            await asyncio.gather(self._retention, return_exceptions=True)
        await self._eraser.stop()
        await self._writer.stop()
        await self._eraser.close()  # a last try, now that this process writes nothing more
        for conn in (self._reader, self._db):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._db = self._reader = None

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._reader is None:
            raise StoreClosed(f"the store {self.path} is not open")
        return list(await fetch(self._reader, sql, params))

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Snapshot]:
        """One consistent read of the whole store on a connection of its own, for as long as
        the block runs (WAL: writers carry on meanwhile). What export reads through."""
        db = await connect(self.path, self._synchronous)
        try:
            await db.execute("BEGIN")
            yield Snapshot(db)
        finally:
            with contextlib.suppress(Exception):
                await db.execute("ROLLBACK")
            await db.close()

    # -- the core's seam (bot.store.events) -------------------------------------------------
    async def record_message(self, msg: Message) -> bool:
        """Persist a message if its author opted in and its channel logs (see Events)."""
        return await self._events.record_message(msg)

    async def record_edit(self, edit: Edit) -> None:
        """An edit replaces the stored text, or turns the message into a gap (see Events)."""
        await self._events.record_edit(edit)

    async def record_deletion(self, deletion: Deletion) -> None:
        """A deleted message becomes a gap; a deleted bot turn, silence (see Events)."""
        await self._events.record_deletion(deletion)

    async def record_reaction(self, reaction: Reaction) -> None:
        """Feedback on the bot's turns (see Events)."""
        await self._events.record_reaction(reaction)

    async def record_decision(self, key: ConversationKey, decision: Decision, *,
                              model_version: str, addressed: bool, message_id: str | None,
                              mode: str, address: str | None = None) -> None:
        """Every decision, in every channel, without text or author (see Events)."""
        await self._events.record_decision(key, decision, model_version=model_version,
                                           addressed=addressed, message_id=message_id,
                                           mode=mode, address=address)

    async def record_bot_turn(self, key: ConversationKey, text: str, *,
                              message_id: str | None, in_reply_to: str | None,
                              p_silence: float, model_version: str,
                              latency_ms: float) -> None:
        """The bot's posted turn; its text only if nothing unkept is in it (see Events)."""
        await self._events.record_bot_turn(key, text, message_id=message_id,
                                           in_reply_to=in_reply_to, p_silence=p_silence,
                                           model_version=model_version, latency_ms=latency_ms)

    def note_context(self, key: ConversationKey, texts: Iterable[str]) -> None:
        """Texts the model gets as context without their messages passing through
        `record_message` (a thread's earlier messages fetched from the platform when the bot
        first sees the thread): never stored, and bot turns that repeat them are withheld."""
        for text in texts:
            self.privacy.remember(key, text)

    # -- consent, channels (bot.store.consent) ------------------------------------------------
    async def set_consent(self, platform: str, user_id: str, opted_in: bool) -> None:
        """`optin` / `optout` (see Consent)."""
        await self._consent.set_consent(platform, user_id, opted_in)

    async def consent(self, platform: str, user_id: str) -> bool | None:
        """True opted in, False opted out, None never asked."""
        return await self._consent.consent(platform, user_id)

    async def set_channel_logging(self, platform: str, channel: str, on: bool,
                                  by: str | None = None) -> None:
        """An admin's `logging on|off` for a channel (and its threads)."""
        await self._consent.set_channel_logging(platform, channel, on, by)

    async def channel_logging(self, platform: str, channel: str) -> bool:
        """Whether a channel logs (its admin's setting, else `default_logging`)."""
        return await self._consent.channel_logging(platform, channel)

    async def set_channel_policy(self, platform: str, channel: str, *, mode: str | None = None,
                                 threshold: float | None = None, by: str | None = None) -> None:
        """Persist an admin's `mode` / `threshold` for a channel (see Consent)."""
        await self._consent.set_channel_policy(platform, channel, mode=mode,
                                               threshold=threshold, by=by)

    def channel_overrides(self) -> dict[tuple[str, str], tuple[str | None, float | None]]:
        """(platform, channel) -> (mode, threshold) set by admins, as loaded at open."""
        return self._consent.channel_overrides()

    # -- forget, retention, the export index (bot.store.forget) -------------------------------
    async def forget(self, user_id: str, platform: str | None = None, *,
                     wait: float = 0.0) -> ForgetResult:
        """Delete everything of a user, then its bytes (see Forgetter.forget)."""
        return await self._forget.forget(user_id, platform, wait=wait)

    async def purge_older_than(self, days: float, *, now: float | None = None,
                               wait: float = 0.0) -> int:
        """Delete messages older than `days`; returns how many (see Forgetter)."""
        return await self._forget.purge_older_than(days, now=now, wait=wait)

    async def run_retention(self, interval: float = 3600.0, *,
                            days: float | None = None) -> None:
        """Purge messages older than `days` (default: retention_days) now and every
        `interval` seconds, until cancelled. Started by the store itself when opened with
        retention_days > 0."""
        await self._forget.run_retention(interval, self.retention_days if days is None else days)

    async def register_export(self, path: str | os.PathLike[str],
                              segments: Iterable[tuple[str, Iterable[tuple[str, str]]]]) -> int:
        """Remember which users' conversations an export file holds (see Forgetter)."""
        return await self._forget.register_export(path, segments)

    async def mark_export_used(self, path: str | os.PathLike[str]) -> int:
        """An export file went into training: `forget` no longer edits it (see Forgetter)."""
        return await self._forget.mark_export_used(path)

    # -- erasure on disk (bot.store.erasure) --------------------------------------------------
    async def finish_erasure(self, wait: float = 0.0) -> bool:
        """Try to finish pending erasures now, for up to `wait` seconds (see Eraser.finish)."""
        return await self._eraser.finish(wait)

    @property
    def erasure_pending(self) -> bool:
        """Something was removed from the tables but may still be in the file's bytes."""
        return self._eraser.pending

    async def wait_erased(self, timeout: float | None = None) -> bool:
        """Until no erasure is pending on disk (True), or `timeout` passes or the store closes
        (False)."""
        return await self._eraser.wait_erased(timeout)

    # -- status, stats, model versions (bot.store.reads, bot.store.events) --------------------
    async def user_status(self, platform: str, user_id: str) -> UserStatus:
        """What is stored about a user (the `status` command)."""
        return await user_status(self._read, platform, user_id,
                                 await self.consent(platform, user_id))

    async def stats(self) -> dict[str, Any]:
        """What is stored, per channel and per user (`chimein data stats`)."""
        return await stats(self._read, path=self.path, default_logging=self.default_logging,
                           model_versions=self.model_versions)

    async def record_model_version(self, version: str, *, source: str | None = None,
                                   note: str | None = None) -> None:
        """Register a model version (the training side calls this on promotion)."""
        await self._events.record_model_version(version, source=source, note=note)

    async def model_versions(self) -> list[dict[str, Any]]:
        """Every model version seen, oldest first, with how many decisions it made."""
        return await self._events.model_versions()
