"""The async runtime: per-conversation queues, decision points, the error boundary.

adapter -> core: `await core.handle(event)`; core -> adapter: `await adapter.send(reply)`, or
the answer as it is written through the adapter's optional `open_stream(reply)`.
Each conversation (channel or thread) has its own queue and worker task. A burst that arrives
while the model is busy is one batch: every address and every command in it is a decision
point of its own, answered in its own place with the history up to it; unaddressed messages
after the last point get one decision together (DESIGN.md, "Addressing and bursts"). A model
in this process has one inference thread that conversations take turns on (a cache rebuild
yields to them between chunks); a server engine serves conversations concurrently, each one's
messages still in order. An exception at one decision point is logged (and an addressed
message answered with a short apology); the batch's other points and the other conversations
go on.

Why one module of ~650 lines: the runtime is one state machine (queues, the model's turn, the
swap gate, decision points, streaming); the Protocols of its seams are here because the core
is what they are written for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, Self

from bot.config import BotSettings, GenerationSettings, RuntimeSettings
from bot.engine.base import Decision, Engine
from bot.message import (
    ConversationKey,
    Deletion,
    Edit,
    Event,
    Message,
    Reaction,
    Reply,
    Turn,
    model_view_text,
)
from bot.policy import Policy
from bot.sessions import Session, SessionStore
from bot.stream import Relay, ReplyStream

log = logging.getLogger(__name__)


class Adapter(Protocol):
    """What the core needs from a platform adapter."""

    platform: str

    async def send(self, reply: Reply) -> str | None:
        """Post a reply; returns the platform's id of the posted message (if any)."""
        ...

    def typing(self, key: ConversationKey) -> contextlib.AbstractAsyncContextManager[None]:
        """A typing/status indicator shown while the answer is generated."""
        ...

    # Optional: `open_stream(reply) -> ReplyStream | None` where the platform can show an
    # answer as it is written (bot.stream.ReplyStream); without it, answers are posted whole.


class Store(Protocol):
    """The persistence the core writes through (implemented by bot.store.Store)."""

    async def record_message(self, msg: Message) -> bool: ...

    async def record_edit(self, edit: Edit) -> None: ...

    async def record_deletion(self, deletion: Deletion) -> None: ...

    async def record_reaction(self, reaction: Reaction) -> None: ...

    async def record_decision(self, key: ConversationKey, decision: Decision, *,
                              model_version: str, addressed: bool, message_id: str | None,
                              mode: str, address: str | None = None) -> None: ...

    async def record_bot_turn(self, key: ConversationKey, text: str, *,
                              message_id: str | None, in_reply_to: str | None,
                              p_silence: float, model_version: str,
                              latency_ms: float) -> None: ...


class Commands(Protocol):
    """Platform-neutral commands (opt-in, admin...), implemented by bot.commands."""

    def recognises(self, msg: Message, text: str) -> bool:
        """Whether `text` (the message without its address) is a command."""
        ...

    async def handle(self, msg: Message, text: str,
                     announce: Callable[[ConversationKey, str, Message], Awaitable[object]]
                     | None = None) -> str | None:
        """Returns the answer if it was a command; `announce` posts a later notice."""
        ...


@dataclass(frozen=True)
class DecisionRecord:
    """What happened for one batch of user messages (for replay, metrics and tests)."""

    key: ConversationKey
    messages: tuple[Message, ...]
    addressed: bool
    mode: str
    decision: Decision | None  # None when the model was not run (mention mode, command)
    text: str | None  # what was posted
    reason: str  # "model", "addressed", "always", "listen-only", "cooldown", "command"
    latency_ms: float
    # How the decided message addressed the bot: "direct", "ambiguous", "follow-up" or None
    # (see bot.policy). `addressed` is `address == "direct"`.
    address: str | None = None


_APOLOGY = "Sorry, something went wrong on my side; please try again in a moment."


class _NullTyping(contextlib.AbstractAsyncContextManager[None]):
    async def __aexit__(self, *exc: object) -> None:
        return None


_NULL_LOCK = _NullTyping()


def block_stop_signals() -> None:
    """For a worker thread: SIGTERM/SIGINT stay blocked here, and in the threads the model's
    runtime starts from here (OpenVINO's pool inherits the mask), so the kernel delivers a
    stop to the main thread, whose handler turns it into a clean shutdown. A SIGTERM that
    landed on an OpenVINO worker thread crashed the process (SIGSEGV) instead."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


@dataclass(frozen=True)
class _Command:
    """A command that came outside the chat (a slash command), queued in its conversation's
    order; `done` receives its answer."""

    msg: Message
    text: str
    done: asyncio.Future[str | None]

    @property
    def key(self) -> ConversationKey:
        return self.msg.key


class Core:
    """Routes events from adapters to the engine and replies back."""

    def __init__(self, engine: Engine, policy: Policy, *, bot: BotSettings | None = None,
                 runtime: RuntimeSettings | None = None, store: Store | None = None,
                 commands: Commands | None = None,
                 generation: GenerationSettings | None = None):
        self.engine = engine
        self.policy = policy
        self.bot = bot or BotSettings()
        self.runtime = runtime or RuntimeSettings()
        self.generation = generation or GenerationSettings()
        self.store = store
        self.commands = commands
        self.sessions = SessionStore(self.runtime.max_sessions,
                                     int(self.runtime.max_kv_megabytes * 2**20))
        self.adapters: dict[str, Adapter] = {}
        self.listeners: list[Callable[[DecisionRecord], Awaitable[None] | None]] = []
        self._executor = self._pool(engine)
        self._queues: dict[ConversationKey, asyncio.Queue[Event | _Command]] = {}
        self._workers: dict[ConversationKey, asyncio.Task[None]] = {}
        self._busy: dict[ConversationKey, bool] = {}
        # A model in this process has one inference thread: one conversation at a time talks
        # to it, and a worker takes its batch only when it gets the model, so messages that
        # arrive while the model is busy with ANY conversation are coalesced into one
        # decision. A server engine (max_concurrency > 1) serves conversations concurrently;
        # each conversation's own worker still keeps its messages in order.
        self._model_turn = asyncio.Lock()
        self._closed = False
        self.errors = 0
        self._typical_decide_ms: float | None = None  # running average of decide()
        self._prefill_ms_per_token: float | None = None  # running average of rebuild chunks
        # A decision and its answer must run on the same engine: a model swap waits until no
        # decision is between decide() and respond(), and holds new ones back meanwhile.
        self._gate = asyncio.Condition()
        self._inflight = 0
        self._swapping = False

    # -- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, drain: bool = True) -> None:
        if self._closed:
            return
        if drain:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.flush(), timeout=30)
        self._closed = True
        for t in self._workers.values():
            t.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self._executor.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _pool(engine: Engine) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=max(1, engine.max_concurrency),
                                  thread_name_prefix="chimein-infer",
                                  initializer=block_stop_signals)

    def _model(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """The model's turn: exclusive for an in-process model, free for a server."""
        return self._model_turn if self.engine.max_concurrency <= 1 else _NULL_LOCK

    def add_adapter(self, adapter: Adapter) -> None:
        self.adapters[adapter.platform] = adapter

    # -- intake -------------------------------------------------------------------------
    async def handle(self, event: Event) -> None:
        """Accept one platform event. Messages are persisted (where consented) before this
        returns, so an adapter that acknowledges after it loses nothing on a crash."""
        if self._closed:
            raise RuntimeError("core is closed")
        if isinstance(event, Message) and self.store is not None and not event.is_self \
                and self._command_text(event) is None:  # a command is not conversation
            await self.store.record_message(event)
        await self._enqueue(event)

    async def command(self, msg: Message, text: str) -> str | None:
        """A command that did not come as a chat message (a Discord slash command): handled in
        the conversation's order like one, its answer returned to the caller (an interaction
        reply) instead of posted. None when it is not a command."""
        if self._closed:
            raise RuntimeError("core is closed")
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        await self._enqueue(_Command(msg, text, done))
        return await done

    def _command_text(self, m: Message) -> str | None:
        """The command in a human's message ("assistant optin" -> "optin"), else None. The wake
        word rules would make "assistant optin" no address (or "assistant manager" would be
        one), but a whole message that is a command after the wake word is a command."""
        if self.commands is None or m.is_bot or m.is_self or len(m.text) > 300:
            return None  # (a command is one line of at most 100 characters after the address)
        addressing = self.policy.addressing
        if not (addressing.classify(m.text, m.mentions_bot) == "direct"
                or addressing.leads_with_wake_word(m.text)):
            return None
        text = addressing.strip_address(m.text)
        return text if self.commands.recognises(m, text) else None

    async def _enqueue(self, event: Event | _Command) -> None:
        q = self._queues.get(event.key)
        if q is None:
            q = self._queues[event.key] = asyncio.Queue(self.runtime.queue_size)
            self._workers[event.key] = asyncio.create_task(self._worker(event.key, q),
                                                           name=f"chimein:{event.key}")
        await q.put(event)

    async def flush(self) -> None:
        """Wait until every queued event has been handled."""
        while True:
            pending = [q for q in self._queues.values() if not q.empty()]
            busy = [k for k, b in self._busy.items() if b]
            if not pending and not busy:
                return
            await asyncio.sleep(0.005)

    async def _worker(self, key: ConversationKey, q: asyncio.Queue[Event | _Command]) -> None:
        while True:
            first = await q.get()
            self._busy[key] = True
            batch = [first]
            try:
                if isinstance(first, Message):  # before the model's turn: a platform fetch
                    await self._open_session(key, first)
                while not q.empty():
                    batch.append(q.get_nowait())
                if not self._needs_model(batch):
                    # commands, edits, reactions: answered now, not after another
                    # channel's answer is written
                    await self._process(key, batch)
                    continue
                async with self._model():
                    while not q.empty():  # what came while waiting joins the batch
                        batch.append(q.get_nowait())
                    await self._process(key, batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # the error boundary: log, carry on with the next batch
                self.errors += 1
                log.exception("error while handling %d event(s) in %s", len(batch), key)
                for ev in batch:  # a slash command's caller must not wait forever
                    if isinstance(ev, _Command) and not ev.done.done():
                        ev.done.set_result(None)
            finally:
                for _ in batch:
                    q.task_done()
                self._busy[key] = False

    def _needs_model(self, batch: Sequence[Event | _Command]) -> bool:
        """Whether a batch has anything for the model: a human's message that is not a
        command, or another bot's (context). Commands answer from the store and the policy."""
        return any(isinstance(ev, Message) and not ev.is_self
                   and (ev.is_bot or self._command_text(ev) is None) for ev in batch)

    # -- processing ---------------------------------------------------------------------
    async def _process(self, key: ConversationKey,
                       batch: Sequence[Event | _Command]) -> None:
        """One batch, in arrival order. Every address (and every command) is a decision point
        of its own: it is decided, and answered in its own place, with the history up to it
        (earlier answers of this batch included). Unaddressed messages between two points are
        context for the next one; those after the last point get one decision together."""
        items: list[Message | _Command] = []
        for ev in batch:
            if isinstance(ev, Message | _Command):
                items.append(ev)
            elif self.store is not None:
                if isinstance(ev, Edit):
                    await self.store.record_edit(ev)
                elif isinstance(ev, Deletion):
                    await self.store.record_deletion(ev)
                elif isinstance(ev, Reaction):
                    await self.store.record_reaction(ev)
        if not items:
            return
        session = self.sessions.get(key)
        turns: list[Turn] = []  # since the last decision point: humans and other bots
        humans: list[Message] = []
        answers: Counter[str] = Counter()  # direct answers per author in this batch
        behind: list[Message] = []  # addresses past the caps: told to ask again
        settings = self.policy.settings
        for m in items:
            if isinstance(m, _Command):  # a slash command: answered to its caller
                await self._flush_context(session, turns)
                turns, humans = [], []
                answer = None if self.commands is None else \
                    await self.commands.handle(m.msg, m.text, announce=self.announce)
                m.done.set_result(answer)
                continue
            if m.is_self:
                continue  # already in history: the core put it there when it posted it
            if m.is_bot:
                turns.append(self._turn(m))  # context only: other bots are never answered
                continue
            address = self.policy.address(m)
            self.policy.note_message(m)
            command = self._command_text(m)
            if command is not None and self.commands is not None:
                answer = await self.commands.handle(m, command, announce=self.announce)
                if answer is not None:
                    # Commands stay out of the model's history: they are not conversation;
                    # what came before them is context now.
                    await self._flush_context(session, turns)
                    turns, humans = [], []
                    await self._post(key, answer, m, addressed=True)
                    await self._notify(DecisionRecord(key, (m,), True, self.policy.mode(
                        key, m.is_dm), None, answer, "command", 0.0, "direct"))
                    continue
            turns.append(self._turn(m))
            humans.append(m)
            if address == "direct":
                if (sum(answers.values()) >= settings.max_answers_per_batch
                        or answers[m.author_id] >= settings.max_answers_per_user):
                    behind.append(m)  # context for what comes next, and named below
                    continue
                answers[m.author_id] += 1
            elif address is None or sum(answers.values()) >= settings.max_answers_per_batch:
                continue
            await self._point(key, session, turns, humans, address)
            turns, humans = [], []
        if humans:
            await self._point(key, session, turns, humans, None)
        else:
            await self._flush_context(session, turns)
        if behind:
            await self._catching_up(key, behind)

    async def _point(self, key: ConversationKey, session: Session, turns: list[Turn],
                     humans: list[Message], address: str | None) -> None:
        """One decision point; an error is logged here so the batch's later points (other
        people's questions) still get their answers. The history goes back to what it was
        before this point (its messages stay in the store, unseen by the model), so a turn
        the model cannot take never breaks every later answer in the conversation."""
        before = list(session.turns)
        try:
            await self._decide(key, session, turns, humans, address)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.errors += 1
            session.turns = before
            session.drop_cache()
            log.exception("error while deciding on %d message(s) in %s (left out of the "
                          "model's history)", len(humans), key)

    async def _catching_up(self, key: ConversationKey, behind: list[Message]) -> None:
        """Said once for a burst past the caps: who was not answered, rather than nobody."""
        names = list(dict.fromkeys(m.author_name for m in behind))
        who = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
        text = (f"I'm catching up with a lot of questions at once and couldn't answer "
                f"{len(behind)} of them. {who}: please ask me again in a moment.")
        await self._post(key, text, behind[0], addressed=False)
        await self._notify(DecisionRecord(key, tuple(behind), True, self.policy.mode(
            key, behind[0].is_dm), None, text, "catching-up", 0.0, "direct"))

    def _turn(self, m: Message) -> Turn:
        return Turn("user", model_view_text(m.text, m.attachments,
                                            self.runtime.max_message_chars), m.author_name)

    async def _flush_context(self, session: Session, turns: list[Turn]) -> None:
        if turns:
            await self._run(self.engine.observe, session, turns)

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def _decide(self, key: ConversationKey, session: Session, new_turns: list[Turn],
                      humans: list[Message], address: str | None) -> None:
        t0 = time.perf_counter()
        last = humans[-1]
        mode = self.policy.mode(key, last.is_dm)
        msgs = tuple(humans)
        addressed = address == "direct"
        if mode == "mention" and address is None:
            await self._run(self.engine.observe, session, new_turns)  # cheap listen-only
            await self._notify(DecisionRecord(key, msgs, False, mode, None, None, "listen-only",
                                              (time.perf_counter() - t0) * 1000, None))
            return
        await self._prefill(session, new_turns)
        force = addressed or mode == "always"
        lenient = address in ("ambiguous", "follow-up")
        threshold = self.policy.ambiguous_threshold(key) if lenient else \
            self.policy.threshold(key)
        async with self._gate:
            await self._gate.wait_for(lambda: not self._swapping)
            self._inflight += 1
        # An answer to a (possible) address goes where that message expects it.
        in_place = addressed or lenient
        try:
            text, decision, reason, version, streamed = await self._decide_and_respond(
                key, session, new_turns, last, addressed, force, threshold,
                cooldown=not (force or lenient), in_place=in_place)
        finally:
            async with self._gate:
                self._inflight -= 1
                self._gate.notify_all()
        if text is not None:
            if not (force or lenient):
                self.policy.record_chimein(key)
            latency = (time.perf_counter() - t0) * 1000
            posted_id = streamed[1] if streamed[0] else \
                await self._post(key, text, last, addressed=in_place)
            if address is not None:  # an answer to a person, not a chime-in to the channel
                self.policy.note_answered(last)
            if self.store is not None:
                await self.store.record_bot_turn(key, text, message_id=posted_id,
                                                 in_reply_to=last.message_id,
                                                 p_silence=decision.p_silence,
                                                 model_version=version,
                                                 latency_ms=latency)
        latency = (time.perf_counter() - t0) * 1000
        if self.store is not None:
            await self.store.record_decision(key, decision, model_version=version,
                                             addressed=addressed, message_id=last.message_id,
                                             mode=mode, address=address)
        # on the inference thread: never drop a cache another decision is using
        await self._run(self.sessions.enforce_bytes, keep=key)
        await self._notify(DecisionRecord(key, msgs, addressed, mode, decision, text, reason,
                                          latency, address))

    async def _prefill(self, session: Session, new_turns: list[Turn]) -> None:
        """A cold cache (overflow, eviction, a new thread) is rebuilt in chunks; between
        chunks the model goes to the conversations waiting for it (first come, first
        served), so one long recompute never stalls every channel. A chunk is sized to cost
        about half a typical decision (from the rate earlier chunks ran at; a 32-token probe
        first), at most recompute_chunk_tokens: a conversation that arrives during a chunk
        waits a quarter of a decision more, on average."""
        limit = self.runtime.recompute_chunk_tokens
        while self.engine.max_concurrency <= 1:
            # sized from the rate the last chunks ran at (a small first probe until then)
            rate, typical = self._prefill_ms_per_token, self._typical_decide_ms
            chunk = min(limit, 32) if rate is None else limit if typical is None else \
                max(16, min(limit, int(0.5 * typical / rate)))
            t0 = time.perf_counter()
            if not await self._run(self.engine.prefill, session, new_turns, chunk):
                break
            ms = (time.perf_counter() - t0) * 1000 / chunk
            self._prefill_ms_per_token = ms if rate is None else 0.7 * rate + 0.3 * ms
            if self._model_turn.locked():
                self._model_turn.release()
                try:
                    await asyncio.sleep(0)
                finally:
                    await self._model_turn.acquire()

    async def _decide_and_respond(
            self, key: ConversationKey, session: Session, new_turns: list[Turn],
            last: Message, addressed: bool, force: bool, threshold: float, *,
            cooldown: bool, in_place: bool
    ) -> tuple[str | None, Decision, str, str, tuple[bool, str | None]]:
        """The decision and, when it speaks, the answer. The last item is (streamed, posted
        id): a streamed answer has already been posted, whole, by its stream."""
        engine = self.engine
        # Past the chime-in cooldown the model still decides (its history needs the turn),
        # at threshold 0: it cannot speak, and the record says the cooldown held it back.
        held = cooldown and not self.policy.allow_chimein(key)
        try:
            decision: Decision = await self._run(engine.decide, session, new_turns,
                                                 threshold=0.0 if held else threshold,
                                                 force=force)
        except Exception:
            session.drop_cache()  # the state may be half-updated: recompute next time
            if addressed:
                await self._post(key, _APOLOGY, last, addressed=True)
            raise
        ms = decision.latency_ms
        self._typical_decide_ms = ms if self._typical_decide_ms is None else \
            0.9 * self._typical_decide_ms + 0.1 * ms
        reason = "addressed" if addressed else "always" if force else \
            "cooldown" if held and decision.p_silence < threshold else "model"
        text: str | None = None
        streamed: tuple[bool, str | None] = (False, None)
        if decision.speak:
            adapter = self.adapters.get(key.platform)
            stream = self._open_stream(adapter, Reply(key, "", last.message_id, in_place))
            typing = adapter.typing(key) if adapter is not None else _NullTyping()
            async with typing:
                try:
                    if stream is None:
                        text = await self._run(engine.respond, session)
                    else:
                        text = await self._respond_streaming(engine, session, stream)
                except Exception:
                    session.drop_cache()
                    if stream is not None:  # nothing half-written stays up
                        await stream.abort(_APOLOGY if addressed else None)
                    elif addressed:
                        await self._post(key, _APOLOGY, last, addressed=True)
                    raise
            if stream is not None:
                streamed = (True, await stream.finish(text))
        return text, decision, reason, engine.version, streamed

    def _open_stream(self, adapter: Adapter | None, reply: Reply) -> ReplyStream | None:
        """The adapter's stream for this answer, if streaming is on and it can show one."""
        opener = getattr(adapter, "open_stream", None) if self.generation.stream else None
        return opener(reply) if opener is not None else None

    async def _respond_streaming(self, engine: Engine, session: Session,
                                 stream: ReplyStream) -> str:
        """Generate on the inference thread while the text so far goes to the platform at
        most every stream_interval_ms (coalesced while a platform call is in flight)."""
        relay = Relay(stream.update, interval=self.generation.stream_interval_ms / 1000)
        try:
            text: str = await self._run(engine.respond, session, relay.offer)
        finally:
            await relay.close()
        return text

    async def _open_session(self, key: ConversationKey, first: Message) -> None:
        """A thread new to the bot gets its earlier messages as context: the adapter's
        optional `history(key, before)` fetches them (the core decides when: once, as the
        thread's session is made). Context for the model only; the store withholds bot turns
        that repeat it."""
        if key.thread is None or self.sessions.peek(key) is not None:
            return
        fetch = getattr(self.adapters.get(key.platform), "history", None)
        turns: Sequence[Turn] = ()
        if fetch is not None:
            try:
                turns = await fetch(key, first)
            except Exception:  # context is a nicety: the conversation goes on without it
                log.exception("fetching the history of %s failed", key)
        self.seed_context(key, turns)

    def seed_context(self, key: ConversationKey, turns: Sequence[Turn]) -> bool:
        """Give a conversation new to the bot its earlier history (a thread's messages fetched
        from the platform): context for the model only. They are not stored, and the store
        withholds bot turns that repeat them. False (and nothing done) if the conversation
        already has a session. Call it with no await between checking and calling."""
        if self.sessions.peek(key) is not None:
            return False
        session = self.sessions.get(key)
        note = getattr(self.store, "note_context", None)
        if note is not None:
            note(key, [t.content for t in turns if t.role == "user" and t.content])
        if turns:
            self.engine.observe(session, list(turns))
        return True

    async def announce(self, key: ConversationKey, text: str,
                       trigger: Message | None = None) -> str | None:
        """Post a notice that is not conversation (the end of an admin's retrain): it goes to
        the platform but not into the model's history. Returns the platform's message id."""
        try:
            return await self._post(key, text, trigger, addressed=trigger is not None)
        except Exception:  # a notice must never break its caller
            log.exception("posting a notice to %s failed", key)
            return None

    async def _post(self, key: ConversationKey, text: str, trigger: Message | None,
                    addressed: bool) -> str | None:
        adapter = self.adapters.get(key.platform)
        if adapter is None:
            log.warning("no adapter for platform %r: reply not delivered", key.platform)
            return None
        reply = Reply(key, text, trigger.message_id if trigger else None, addressed)
        return await adapter.send(reply)

    async def _notify(self, record: DecisionRecord) -> None:
        for fn in self.listeners:
            try:
                r = fn(record)
                if asyncio.iscoroutine(r):
                    await r
            except Exception:
                log.exception("decision listener failed")

    # -- model swaps --------------------------------------------------------------------
    async def swap_engine(self, engine: Engine) -> None:
        """Switch to a new model without a restart: queued messages wait, none is dropped.

        Runs on the inference thread, so it happens between two decisions; every session's KV
        state belongs to the old model and is dropped (the turns stay and are recomputed)."""
        def _swap() -> Engine:
            old = self.engine
            self.engine = engine
            for s in self.sessions:
                s.drop_cache()
            return old

        async with self._gate:
            self._swapping = True
            try:
                await self._gate.wait_for(lambda: self._inflight == 0)
                old = await self._run(_swap)
            finally:
                self._swapping = False
                self._gate.notify_all()
        if engine.max_concurrency != old.max_concurrency:  # a server <-> a local model
            stale, self._executor = self._executor, self._pool(engine)
            stale.shutdown(wait=False)
        log.info("model switched: %s -> %s", old.version, engine.version)
        with contextlib.suppress(Exception):
            await self._run(old.close)
