"""Slack: slack-bolt's AsyncApp over Socket Mode (default) or the HTTP Events API.

The adapter only translates and delivers. Slack event payloads become `bot.message` types in
pure functions (`translate_event`, `render_text`, `conversation_key`), tested on recorded
payloads; `SlackAdapter` wires them to bolt, resolves display names (users.info, cached), hands
the result to `core.handle`, and posts what the core sends back.

- A thread is its own conversation (`ConversationKey(thread=thread_ts)`); when a thread is new to
  the bot, the core asks `history` for its earlier messages (the parent first) as context.
- Replies go to the thread the message was in; an answer to a mention in a channel goes into a
  thread under it when `slack.reply_in_thread` is on. Long replies are split under 4,000
  characters at paragraph / sentence boundaries.
- An event is handled once: Slack redelivers an event (same `event_id`, `x-slack-retry-num`)
  when an acknowledgement was late or lost, and sends both `message` and `app_mention` for one
  mention; both are recognised.
- `<@U123>` becomes `@Name`; the bot's own mention becomes `@{bot.name}` and sets
  `mentions_bot`.
- With `[generation] stream` an answer shows as it is written (`open_stream`): Slack's native
  stream in a thread, post + edit elsewhere (adapters.slack_stream).

Why one module of ~680 lines: it is all of one platform's translation (pure functions, tested
on recorded payloads), the name cache and the adapter that wires them to bolt, read together
when Slack changes; showing an answer as it is written lives in adapters/slack_stream.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from adapters.common import LRU, AdapterError, Lifecycle, SeenSet, split_text
from adapters.slack_stream import NativeSupport, SlackMessages, SlackStream
from bot.config import BotSettings, SlackSettings
from bot.core import Core
from bot.message import (
    ConversationKey,
    Deletion,
    Edit,
    Event,
    Message,
    Reaction,
    Reply,
    Turn,
    assistant,
    clean_text,
    user,
)

log = logging.getLogger(__name__)

PLATFORM = "slack"
# chat.postMessage accepts far more, but Slack recommends at most 4,000 characters a message and
# truncates long ones in the client; stay a little under.
MAX_POST_CHARS = 3900
THREAD_CONTEXT_MESSAGES = 20
STATUS_TEXT = "is thinking…"
CONNECT_TIMEOUT = 60.0

# Message subtypes that are someone saying something; other subtypes (joins, topic changes,
# pins...) are not conversation.
_SPOKEN_SUBTYPES = {None, "thread_broadcast", "file_share", "me_message", "bot_message"}
_TOKEN = re.compile(r"<([^<>\n]{1,500})>")
_USER_REF = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")


@dataclass(frozen=True)
class SlackIdentity:
    """Who the bot is on Slack (from auth.test) and what it is called in the model's view."""

    bot_user_id: str
    bot_id: str | None = None
    bot_name: str = "assistant"


# -- pure translation -------------------------------------------------------------------------
# Every field of a payload is read through these two: Slack documents the shapes, but a handler
# must not die (and leave its envelope unacknowledged) on one it did not expect.
def _obj(value: Any) -> Mapping[str, Any]:
    """A nested payload object, or an empty one where the payload has something else."""
    return value if isinstance(value, Mapping) else {}


def _str(value: Any) -> str | None:
    """A string field, or None where the payload has something else (a number, a list...)."""
    return value if isinstance(value, str) else None


def is_dm_channel(channel: str, channel_type: str | None = None) -> bool:
    """One-to-one DMs (`im`); group DMs (`mpim`) are treated like channels."""
    if channel_type:
        return channel_type == "im"
    return channel.startswith("D")


def conversation_key(channel: str, ts: str | None, thread_ts: str | None) -> ConversationKey:
    """A thread reply belongs to its thread; a thread's parent (thread_ts == ts) and every other
    message belong to the channel."""
    if thread_ts and thread_ts != ts:
        return ConversationKey(PLATFORM, channel, thread_ts)
    return ConversationKey(PLATFORM, channel)


def mentioned_user_ids(text: str) -> set[str]:
    return set(_USER_REF.findall(text or ""))


def user_ids_to_resolve(event: Mapping[str, Any], ident: SlackIdentity | None = None
                        ) -> set[str]:
    """Every user id whose display name the translation of `event` needs (never the bot's own:
    it is called `bot_name`)."""
    ids: set[str] = set()
    inner = _obj(event.get("message")) if event.get("subtype") == "message_changed" else event
    uid = _str(inner.get("user"))
    if uid and not inner.get("bot_id"):
        ids.add(uid)
    ids |= mentioned_user_ids(_str(inner.get("text")) or "")
    if ident is not None:
        ids.discard(ident.bot_user_id)
    return ids


def render_text(text: str, names: Mapping[str, str], ident: SlackIdentity) -> tuple[str, bool]:
    """Slack's markup -> what people read; returns (text, mentions the bot).

    `<@U1>` -> `@Name`, the bot's own mention -> `@{bot_name}`, `<#C1|general>` -> `#general`,
    `<!here>` -> `@here`, `<https://x|label>` -> `label (https://x)`, `&amp;` -> `&`; the
    result is `clean_text` (no control characters, valid Unicode).
    """
    mentions_bot = False

    def sub(m: re.Match[str]) -> str:
        nonlocal mentions_bot
        body = m.group(1)
        head, _, label = body.partition("|")
        if head.startswith("@"):
            uid = head[1:]
            if uid == ident.bot_user_id:
                mentions_bot = True
                return f"@{ident.bot_name}"
            return "@" + (names.get(uid) or label or uid)
        if head.startswith("#"):
            return "#" + (label or head[1:])
        if head.startswith("!"):
            special = head[1:]
            if special.startswith("subteam^"):
                return label or "@" + special.split("^", 1)[1]
            if special.startswith("date^"):
                return label or special
            return label or "@" + special
        if label:  # a link with a label
            url = head.removeprefix("mailto:")
            return label if label == url else f"{label} ({url})"
        return head

    out = _TOKEN.sub(sub, text or "")
    # Slack escapes only these three; unescape after the <...> tokens are gone.
    out = out.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return clean_text(out), mentions_bot


def slack_escape(text: str) -> str:
    """Text -> Slack `text`: `&`, `<`, `>` must be escaped, or `<!channel>` would ping."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _split(text: str) -> list[str]:
    """An answer's parts, each under MAX_POST_CHARS once escaped (whole posts and streams)."""
    return split_text(text, MAX_POST_CHARS, measure=lambda s: len(slack_escape(s)))


def _author_name(msg: Mapping[str, Any], names: Mapping[str, str]) -> str:
    uid = _str(msg.get("user"))
    if uid is not None and uid in names:
        return names[uid]
    prof = _obj(msg.get("user_profile"))
    for k in ("display_name", "real_name", "name"):
        if _str(prof.get(k)):
            return str(prof[k])
    bot = _obj(msg.get("bot_profile"))
    return (_str(msg.get("username")) or _str(bot.get("name")) or uid
            or _str(msg.get("bot_id")) or "someone")


def _float_ts(ts: Any) -> float:
    """A Slack ts ("1760000100.000100") as a time; now, where it is missing or not a time."""
    if isinstance(ts, str | int | float) and not isinstance(ts, bool):
        try:
            value = float(ts)
        except ValueError:
            return time.time()
        if math.isfinite(value):
            return value
    return time.time()


def message_from_payload(msg: Mapping[str, Any], channel: str, ident: SlackIdentity,
                         names: Mapping[str, str], channel_type: str | None = None
                         ) -> Message | None:
    """One Slack message object (an event, or an entry of conversations.replies) -> Message."""
    subtype = msg.get("subtype")
    if not (subtype is None or isinstance(subtype, str)) or subtype not in _SPOKEN_SUBTYPES:
        return None
    ts = _str(msg.get("ts"))
    if not ts:
        return None
    uid = _str(msg.get("user"))
    bot_id = _str(msg.get("bot_id"))
    is_self = (uid is not None and uid == ident.bot_user_id) or (
        bot_id is not None and bot_id == ident.bot_id)
    is_bot = not is_self and (bot_id is not None or subtype == "bot_message")
    text, mentions_bot = render_text(_str(msg.get("text")) or "", names, ident)
    raw_files = msg.get("files")
    files = tuple(_str(f.get("name")) or _str(f.get("title")) or "file"
                  for f in (raw_files if isinstance(raw_files, list) else [])
                  if isinstance(f, Mapping))
    thread_ts = _str(msg.get("thread_ts"))
    return Message(
        key=conversation_key(channel, ts, thread_ts),
        author_id=str(uid or bot_id or "unknown"),
        author_name=_author_name(msg, names),
        text=text,
        message_id=ts,
        ts=_float_ts(ts),
        is_bot=is_bot,
        is_self=is_self,
        mentions_bot=mentions_bot,
        is_dm=is_dm_channel(channel, channel_type),
        attachments=files,
        reply_to=thread_ts if thread_ts and thread_ts != ts else None,
    )


def translate_event(event: Mapping[str, Any], ident: SlackIdentity,
                    names: Mapping[str, str] | None = None,
                    own_messages: Mapping[str, ConversationKey] | None = None) -> Event | None:
    """A Slack event (the `event` of an event_callback) -> a neutral event, or None when it is
    nothing the core cares about.

    `names` maps user ids to display names (ids missing from it fall back to the payload's own
    profile or the id); `own_messages` maps the ts of messages the bot posted to the
    conversation they were posted for, so reactions on them reach the right conversation.
    """
    names = names or {}
    etype = event.get("type")
    channel = event.get("channel")
    if etype in ("message", "app_mention"):
        if not isinstance(channel, str) or not channel:
            return None
        subtype = event.get("subtype")
        if subtype == "message_changed":
            new = _obj(event.get("message"))
            old = _obj(event.get("previous_message"))
            ts = _str(new.get("ts"))
            if not ts:
                return None
            if new.get("text") == old.get("text"):
                return None  # an unfurl, a reply count or a reaction changed, not the text
            text, _ = render_text(_str(new.get("text")) or "", names, ident)
            return Edit(conversation_key(channel, ts, _str(new.get("thread_ts"))), ts,
                        _str(new.get("user")) or _str(new.get("bot_id")) or "unknown",
                        text, ts=_float_ts(event.get("event_ts") or event.get("ts")))
        if subtype == "message_deleted":
            deleted = _str(event.get("deleted_ts"))
            if not deleted:
                return None
            prev = _obj(event.get("previous_message"))
            return Deletion(conversation_key(channel, deleted, _str(prev.get("thread_ts"))),
                            deleted, ts=_float_ts(event.get("event_ts") or event.get("ts")))
        return message_from_payload(event, channel, ident, names, event.get("channel_type"))
    if etype in ("reaction_added", "reaction_removed"):
        item = _obj(event.get("item"))
        reactor, emoji, ts = _str(event.get("user")), _str(event.get("reaction")), \
            _str(item.get("ts"))
        if (item.get("type") != "message" or not reactor or reactor == ident.bot_user_id
                or not emoji or not ts):
            return None
        own = (own_messages or {}).get(ts)
        if own is None and event.get("item_user") != ident.bot_user_id:
            return None  # feedback is reactions on the bot's own messages only
        item_channel = _str(item.get("channel"))
        if own is None and not item_channel:
            return None
        key = own or ConversationKey(PLATFORM, item_channel or "")
        return Reaction(key, ts, reactor, emoji, added=etype == "reaction_added",
                        ts=_float_ts(event.get("event_ts")))
    return None


def display_name(user_obj: Mapping[str, Any]) -> str:
    """users.info's user -> the name people see: display name, then real name, then handle."""
    prof = _obj(user_obj.get("profile"))
    for v in (prof.get("display_name"), prof.get("real_name"), user_obj.get("real_name"),
              user_obj.get("name")):
        if isinstance(v, str) and v.strip():
            return v.strip()
    return _str(user_obj.get("id")) or "someone"


def _unreadable(e: Exception) -> None:
    log.warning("slack: acknowledged and skipped an event that slack-bolt cannot read (%s: %s)",
                type(e).__name__, e)


# -- display names ---------------------------------------------------------------------------
class NameCache:
    """Display names from users.info, cached for `ttl` seconds; concurrent look-ups of one id
    share one request, and a failed look-up falls back to the id (not retried for a minute)."""

    def __init__(self, client: AsyncWebClient, ttl: float = 3600.0, size: int = 10_000):
        self.client = client
        self.ttl = ttl
        self._names: LRU = LRU(size)
        self._inflight: dict[str, asyncio.Future[str]] = {}

    def peek(self, uid: str) -> str | None:
        hit = self._names.get(uid)
        if hit is not None and hit[1] > time.monotonic():
            return str(hit[0])
        return None

    async def get(self, uid: str) -> str:
        hit = self.peek(uid)
        if hit is not None:
            return hit
        fut = self._inflight.get(uid)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[uid] = fut
        try:
            resp = await self.client.users_info(user=uid)
            name, ttl = display_name(resp.get("user") or {}), self.ttl
        except asyncio.CancelledError:
            fut.set_result(uid)  # whoever shares this look-up goes on with the id
            raise
        except Exception as e:  # noqa: BLE001 - a name is cosmetic: never lose the message
            log.warning("users.info failed for %s (%s); using the id as its name", uid, e)
            name, ttl = uid, 60.0
        finally:
            self._inflight.pop(uid, None)
        self._names.put(uid, (name, time.monotonic() + ttl))
        fut.set_result(name)
        return name

    async def resolve(self, ids: Iterable[str]) -> dict[str, str]:
        ids = sorted(set(ids))
        names = await asyncio.gather(*(self.get(i) for i in ids))
        return dict(zip(ids, names, strict=True))


# -- the adapter ------------------------------------------------------------------------------
class SlackAdapter(Lifecycle):
    """Slack <-> core. `async with SlackAdapter(...)` or `await start()` / `await close()`."""

    platform = PLATFORM

    def __init__(self, core: Core, settings: SlackSettings, bot: BotSettings, *,
                 bot_token: str, app_token: str | None = None,
                 signing_secret: str | None = None, ping_interval: float = 10.0):
        if settings.mode == "socket" and not app_token:
            raise AdapterError("Slack Socket Mode needs an app-level token (SLACK_APP_TOKEN)")
        if settings.mode == "http" and not signing_secret:
            raise AdapterError("the Slack HTTP Events API needs SLACK_SIGNING_SECRET")
        self.core = core
        self.settings = settings
        self.bot = bot
        self.ping_interval = ping_interval
        self._app_token = app_token
        self._signing_secret = signing_secret
        self.client = AsyncWebClient(
            token=bot_token, base_url=settings.api_base_url,
            # Rate limits (HTTP 429 + Retry-After) and dropped connections are retried by the
            # SDK itself: no hand-made sleeps here.
            retry_handlers=[AsyncConnectionErrorRetryHandler(max_retry_count=2),
                            AsyncRateLimitErrorRetryHandler(max_retry_count=3)])
        self.names = NameCache(self.client)
        self.identity = SlackIdentity("", None, bot.name)
        self.app: AsyncApp | None = None
        self.handler: AsyncSocketModeHandler | None = None
        self._runner: web.AppRunner | None = None
        self.http_port: int | None = None  # the bound port in HTTP mode
        self._events = SeenSet()
        self._messages = SeenSet()
        self._own: LRU = LRU(5000)  # ts of the bot's posts -> conversation
        self._recent: LRU = LRU(5000)  # (channel, ts) -> Message, for thread context
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary())
        self._status_supported = True
        self._native = NativeSupport()  # where Slack refused its native stream
        self._deleted = SeenSet(1000)  # ts of partial answers the bot took down itself
        self._team_id: str | None = None
        self._status_off: set[str] = set()  # channels whose threads refused a status
        self._closed = asyncio.Event()
        self.duplicates = 0
        self.handled = 0

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Check the tokens, then connect (Socket Mode) or start listening (HTTP)."""
        try:
            auth = await self.client.auth_test()
        except SlackApiError as e:
            raise AdapterError(f"Slack rejected SLACK_BOT_TOKEN ({e.response.get('error')}): "
                               "use the Bot User OAuth Token (xoxb-...) from OAuth & "
                               "Permissions") from None
        self.identity = SlackIdentity(str(auth["user_id"]), auth.get("bot_id"), self.bot.name)
        self._team_id = _str(auth.get("team_id"))
        log.info("slack: signed in as %s (%s) in %s", auth.get("user"), self.identity.bot_user_id,
                 auth.get("team"))
        self.app = AsyncApp(
            client=self.client, name="chimein",
            signing_secret=self._signing_secret or "",
            # Acknowledge only after core.handle returned (the message is persisted): a crash
            # before that makes Slack redeliver instead of losing the message.
            process_before_response=True,
            request_verification_enabled=self.settings.mode == "http",
            logger=logging.getLogger("slack_bolt"))
        for name in ("message", "app_mention", "reaction_added", "reaction_removed"):
            self.app.event(name)(self._on_event)
        if self.settings.mode == "socket":
            self.handler = AsyncSocketModeHandler(self.app, self._app_token,
                                                  web_client=self.client,
                                                  ping_interval=self.ping_interval)
            listeners = self.handler.client.socket_mode_request_listeners
            bolt_listener = listeners.index(self.handler.handle)  # type: ignore[arg-type]
            listeners[bolt_listener] = self._socket_request
            try:
                # Issued here (not inside connect(), which retries forever) so a bad app token
                # fails start-up with a clear message.
                self.handler.client.wss_uri = await self.handler.client.issue_new_wss_url()
            except SlackApiError as e:
                await self.handler.close_async()
                self.handler = None
                raise AdapterError(
                    f"Slack rejected SLACK_APP_TOKEN ({e.response.get('error')}): create an "
                    "app-level token with the connections:write scope (Basic Information -> "
                    "App-Level Tokens) and turn Socket Mode on") from None
            try:
                # The SDK retries a failing websocket forever; at start-up, say so instead.
                await asyncio.wait_for(self.handler.connect_async(), CONNECT_TIMEOUT)
            except TimeoutError:
                await self.close()
                raise AdapterError(f"could not open the Slack Socket Mode websocket in "
                                   f"{CONNECT_TIMEOUT:.0f} s (is outbound wss:// blocked?)"
                                   ) from None
        else:
            web_app = web.Application()
            web_app.router.add_post(self.settings.http_path, self._http_endpoint)
            self._runner = web.AppRunner(web_app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.settings.http_host, self.settings.http_port)
            await site.start()
            addr = self._runner.addresses[0]
            self.http_port = int(addr[1])
            log.info("slack: Events API listening on http://%s:%d%s", addr[0], self.http_port,
                     self.settings.http_path)

    async def wait_closed(self) -> None:
        """Returns after `close()`: the SDK reconnects Socket Mode by itself, and the HTTP
        server has no connection to lose."""
        await self._closed.wait()

    async def close(self) -> None:
        self._closed.set()
        if self.handler is not None:
            handler, self.handler = self.handler, None
            await handler.close_async()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _http_endpoint(self, request: web.Request) -> web.Response:
        if self.app is None:
            return web.Response(status=503)
        try:
            bolt_req = await to_bolt_request(request)
        except Exception as e:  # noqa: BLE001 - see _socket_request
            _unreadable(e)
            return web.Response(status=200)  # acknowledged: a retry would fail the same way
        bolt_resp = await self.app.async_dispatch(bolt_req)
        return await to_aiohttp_response(bolt_resp)

    async def _socket_request(self, client: AsyncBaseSocketModeClient,
                              req: SocketModeRequest) -> None:
        """bolt's Socket Mode listener, except for an envelope bolt cannot even read: bolt takes
        the channel, user and team ids out of the event before any listener runs and raises on
        shapes Slack does not document (a `channel` that is a number...), leaving the envelope
        unacknowledged for Slack to redeliver, which would fail the same way. It is
        acknowledged and skipped here, with a log line."""
        assert self.handler is not None  # internal invariant: registered by start()
        try:
            AsyncBoltRequest(mode="socket_mode", body=req.payload)
        except Exception as e:  # noqa: BLE001 - the boundary for payloads nobody expected
            _unreadable(e)
            await client.send_socket_mode_response(SocketModeResponse(req.envelope_id))
            return
        await self.handler.handle(client, req)  # type: ignore[arg-type]

    # -- intake ---------------------------------------------------------------------------
    async def _on_event(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        """bolt listener for every subscribed event (arguments are injected by name)."""
        await self._handle_event(_obj(event), _str(_obj(body).get("event_id")))

    async def _handle_event(self, event: Mapping[str, Any], event_id: str | None = None) -> None:
        channel = _str(event.get("channel")) or _str(_obj(event.get("item")).get("channel")) or ""
        lock = self._locks.get(channel)
        if lock is None:
            lock = self._locks[channel] = asyncio.Lock()
        # One channel's events reach the core in the order they arrived. A redelivery (same
        # event id) waits here for the first delivery: if that one failed it is not marked
        # handled, and this one is handled instead of being acknowledged as a repeat (Slack
        # never retries an acknowledged delivery).
        async with lock:
            if event_id and event_id in self._events:
                self.duplicates += 1
                log.debug("slack: event %s redelivered; already handled", event_id)
                return
            await self._deliver(event)
            if event_id:
                self._events.add(event_id)

    async def _deliver(self, event: Mapping[str, Any]) -> None:
        """Translate one event and hand it to the core (the channel's lock is held).

        An event that cannot be translated is logged and dropped: it is acknowledged, since a
        redelivery would fail the same way. Only the core's own failure (the message was not
        persisted) propagates, so that Slack redelivers it."""
        try:
            names = await self.names.resolve(user_ids_to_resolve(event, self.identity))
            ev = translate_event(event, self.identity, names, self._own)
        except Exception as e:  # noqa: BLE001 - the boundary for payloads nobody expected
            log.warning("slack: skipped a %r event that could not be read (%s: %s)",
                        _str(event.get("type")) or "?", type(e).__name__, e)
            return
        if ev is None:
            return
        if isinstance(ev, Edit) and ev.author_id in (self.identity.bot_user_id,
                                                     self.identity.bot_id):
            return  # the bot's own edits: a streamed answer growing
        if isinstance(ev, Deletion) and ev.message_id in self._deleted:
            return  # a partial answer the bot replaced: nothing the core knew
        if isinstance(ev, Message):
            if not self._messages.add((ev.key.channel, ev.message_id)):
                self.duplicates += 1  # the same message as `message` and `app_mention`
                return
            if ev.is_self:  # the adapter keeps its own (final) text; an echo may be older
                if (ev.key.channel, ev.message_id) not in self._recent:
                    self._recent.put((ev.key.channel, ev.message_id), ev)
                return
            self._recent.put((ev.key.channel, ev.message_id), ev)
        try:
            await self.core.handle(ev)
        except BaseException:
            if isinstance(ev, Message):  # not handled: its retry must not look like a repeat
                self._messages.discard((ev.key.channel, ev.message_id))
            raise
        self.handled += 1

    async def history(self, key: ConversationKey, before: Message) -> list[Turn]:
        """A thread new to the bot: its earlier messages (the parent first, then the latest
        ones before `before`), so "what about the second one?" in a thread means something.
        The core calls this once, when it makes the thread's session."""
        if key.thread is None:
            return []
        earlier: list[Message] = []
        try:
            resp = await self.client.conversations_replies(channel=key.channel, ts=key.thread,
                                                           limit=100)
            listed = resp.get("messages")
            raw = [m for m in (listed if isinstance(listed, list) else [])
                   if isinstance(m, Mapping) and _float_ts(m.get("ts")) < before.ts
                   and m.get("ts") != before.message_id]
            raw = raw[:1] + raw[1:][-(THREAD_CONTEXT_MESSAGES - 1):]
            ids: set[str] = set()
            for m in raw:
                ids |= user_ids_to_resolve(m, self.identity)
            names = await self.names.resolve(ids)
            for m in raw:
                t = message_from_payload(m, key.channel, self.identity, names)
                if t is not None:
                    earlier.append(t)
        except SlackApiError as e:
            # No channels:history scope, or an archived thread: the parent we saw is enough.
            log.info("slack: thread context for %s unavailable (%s)", key,
                     e.response.get("error"))
            parent = self._recent.get((key.channel, key.thread))
            earlier = [parent] if parent is not None else []
        log.debug("slack: %d earlier message(s) for %s", len(earlier), key)
        return [assistant(m.text) if m.is_self else user(m.author_name, m.text)
                for m in earlier]

    # -- delivery -------------------------------------------------------------------------
    def thread_for(self, reply: Reply) -> str | None:
        """Where a reply goes: its thread; for an answer to a mention in a channel, a new
        thread under the message when reply_in_thread is on; else the channel itself."""
        if reply.key.thread:
            return reply.key.thread
        if (reply.addressed and self.settings.reply_in_thread and reply.in_reply_to
                and not is_dm_channel(reply.key.channel)):
            return reply.in_reply_to
        return None

    def _answer_messages(self, reply: Reply) -> SlackMessages:
        thread_ts = self.thread_for(reply)
        key = replace(reply.key, thread=thread_ts) if thread_ts else reply.key

        def posted(ts: str, text: str) -> None:
            self._own.put(ts, reply.key)
            self._recent.put((reply.key.channel, ts), Message(
                key, self.identity.bot_user_id, self.bot.name, text, message_id=ts,
                is_self=True))

        return SlackMessages(self.client, reply.key.channel, thread_ts, escape=slack_escape,
                             posted=posted, deleted=self._deleted.add)

    async def send(self, reply: Reply) -> str | None:
        """Post a reply (split if long); returns the ts of its first part."""
        out = self._answer_messages(reply)
        first: str | None = None
        for part in _split(reply.text):
            first = first or await out.post(part)
        return first

    def open_stream(self, reply: Reply) -> SlackStream:
        """The answer as it is written (adapters.slack_stream): Slack's native stream in a
        thread, addressed to the person asked; post + edit elsewhere or where it is refused."""
        asker = self._recent.get((reply.key.channel, reply.in_reply_to)) \
            if reply.in_reply_to else None
        recipient = (asker.author_id, self._team_id) if (
            asker is not None and not asker.is_self and not asker.is_bot and self._team_id
        ) else None
        return SlackStream(self._answer_messages(reply), split=_split, recipient=recipient,
                           support=self._native)

    @contextlib.asynccontextmanager
    async def typing(self, key: ConversationKey) -> AsyncIterator[None]:
        """Slack has no typing indicator for bots outside AI-app threads: there,
        assistant.threads.setStatus shows one; elsewhere this is silently nothing."""
        shown = False
        if key.thread and self._status_supported and key.channel not in self._status_off:
            try:
                await self.client.assistant_threads_setStatus(
                    channel_id=key.channel, thread_ts=key.thread, status=STATUS_TEXT)
                shown = True
            except SlackApiError as e:
                err = e.response.get("error")
                if err in ("missing_scope", "not_allowed_token_type", "unknown_method",
                           "method_deprecated", "invalid_arguments"):
                    self._status_supported = False  # this app cannot: stop asking
                    log.info("slack: no status indicator (%s); answering without one", err)
                else:  # e.g. an ordinary (non-AI-app) thread: stop asking in this channel
                    self._status_off.add(key.channel)
                    log.debug("slack: setStatus failed in %s: %s", key, err)
        try:
            yield
        finally:
            if shown:
                with contextlib.suppress(SlackApiError):
                    await self.client.assistant_threads_setStatus(
                        channel_id=key.channel, thread_ts=key.thread or "", status="")
