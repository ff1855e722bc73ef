"""The message store: one SQLite file (aiosqlite, WAL), opt-in logging, export for training.

Opening it::

    async with Store("data/chimein.sqlite3") as store:      # or Store.from_settings(s.store)
        await store.record_message(msg)

    store = await Store.open(path)   # the same without a block; `await store.close()` at the end

Opening creates the file (and its folder), switches it to WAL, and runs the schema migrations
(`MIGRATIONS`, numbered; `PRAGMA user_version` holds the version). A file written by a newer
chimein is refused with a StoreError that says so, and nothing in it is changed.

Writes. One writer task owns the write connection. Every write is a job on its queue; the writer
takes all jobs waiting at that moment, runs them in ONE transaction and commits, then wakes each
caller. So `await store.record_message(msg)` returns only after the row is committed (a `kill -9`
right after loses nothing: WAL with synchronous=NORMAL survives a process crash; power loss may
lose the last commits unless `synchronous="FULL"`), and concurrent conversations share commits
instead of fighting over the lock (no `database is locked`). If one job of a batch fails, the
batch is rolled back and its jobs re-run one by one, so only the bad one fails. Reads use a
second connection (WAL readers never block the writer).

Consent (DESIGN.md, privacy). `record_message` writes a message's text only when its author has
opted in (`optin`) AND its channel has logging on (an admin's `logging on`; new channels start
with `default_logging`). For anyone else, in a channel with logging on, it writes an anonymous
gap (a time, nothing else) so that export can cut the conversation there; in a channel with
logging off it writes nothing at all. Other bots are gaps too: they cannot consent. Decisions are
always recorded, without text, author or platform id (a decision points at its message's row,
a gap for someone who never opted in), so metrics cover every channel. A reply or a bot turn
keeps the platform id of the message it answers only if that message was kept.

The bot's own turns may carry what others wrote (an answer quotes, translates or sums up). A bot
turn's text is kept only if the message it answered was kept, every message of the batch it was
decided on was kept, and it does not repeat (a shared run of QUOTE_CHARS letters/digits) any
message the model may have seen that was not kept. Those "unkept" fingerprints live in memory
only, per conversation (a thread's turns are also checked against its channel's): every message
not stored (logging off, author not opted in, another bot, too long), whatever the channel's
state (an admin may turn logging on while the model still holds them), and messages of this run
turned into gaps later. They are never dropped while the model may still hold them: past
UNKEPT_CHARS of them in a conversation (or when the memory of all conversations passes
UNKEPT_TOTAL_CHARS), the conversation is marked overflowed instead and its bot turns are withheld
until the process restarts (the model's context lives in memory too and starts empty then), so
memory stays bounded and no quote slips through. Otherwise the turn is "withheld": its row keeps
the model's numbers, not its text. Export applies the same checks again against who is opted in
at export time.

Edits update the stored text (the old text is not kept, and bot turns made from it are withheld);
an edit by an author who is no longer opted in turns the row into a gap. A deleted message becomes
a gap, and the bot turns that carry it are withheld; a deleted bot turn loses its text and is
exported as silence, as is a bot turn with a negative reaction. Reactions are kept only on the
bot's turns (feedback), with the reactor's id only if they opted in (otherwise anonymously).
`forget` turns every message of a user into gaps, withholds the bot turns that carry them, clears
the forgotten messages' platform ids where other rows point at them (replies), deletes their
reactions and consent record, removes their conversations from export files not yet used for
training, and their entries from the index of every export file (one already used for training
is not edited: retraining retires it). What forget, retention, deletions and edits remove also
leaves the file's bytes: see "erasure on disk" (bot.store.erasure).

Export: `export_conversations(store, ...)` is the one function training reads the store through.
It yields consented conversation segments in the JSONL conversation format; see its docstring.
It reads through the store's public read API, `Store.snapshot()` (one consistent view on its
own connection: bot.store.reads.Snapshot), never through the store's connections.

Where each part lives (each module says more at its top; each imports only modules below it
here, and none imports this package, so no import goes round a cycle):

    export    export_conversations, export_jsonl ("Export")
    store     Store: opening, closing, connections, background tasks; hands each call on
    events    messages, edits, deletions, reactions, decisions, bot turns, model versions
    forget    gaps, forget, the export index, retention ("Edits ... forget")
    consent   consent and channel settings ("Consent")
    erasure   erasure on disk: checkpoints and their background retries
    writer    the single writer: queue, batching, commit ("Writes")
    reads     a user's status, the stats, and Snapshot (the read API export uses)
    schema    MIGRATIONS, SCHEMA_VERSION and running them ("Opening")
    privacy   the privacy memory: quotes and unkept texts; pure ("The bot's own turns")
    db        StoreError, StoreClosed, how a connection is opened, the SQL helpers

Consent and erasure are modules of their own rather than parts of events and forget: every
write checks consent, and edits and deletions erase as forget and retention do. Store is not
in this file so that export, which opens one when it is given none, can import it.
"""

from __future__ import annotations

from bot.message import model_view_text
from bot.store.db import StoreClosed, StoreError
from bot.store.events import MAX_TEXT_CHARS, is_negative
from bot.store.export import ExportSegment, ExportStats, export_conversations, export_jsonl
from bot.store.forget import ForgetResult
from bot.store.privacy import PrivacyMemory, quotes
from bot.store.reads import Snapshot, StoredRow, UserStatus
from bot.store.schema import MIGRATIONS, SCHEMA_VERSION
from bot.store.schema import statements as _statements  # tests/test_store_migrations.py
from bot.store.store import Store

__all__ = [
    "MAX_TEXT_CHARS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ExportSegment",
    "ExportStats",
    "ForgetResult",
    "PrivacyMemory",
    "Snapshot",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoredRow",
    "UserStatus",
    "_statements",
    "export_conversations",
    "export_jsonl",
    "is_negative",
    "model_view_text",
    "quotes",
]
