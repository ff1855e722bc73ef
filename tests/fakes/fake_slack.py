"""A fake Slack on 127.0.0.1 that the real slack-bolt / slack-sdk clients talk to.

It speaks the real protocols, not a mock of the client:
- the Web API over HTTP (`POST/GET /api/<method>`, bearer tokens, form or JSON bodies):
  auth.test, apps.connections.open, chat.postMessage, chat.update, chat.delete, users.info,
  conversations.info, conversations.replies, reactions.add, assistant.threads.setStatus, and
  the native stream as slack_sdk calls it: chat.startStream (channel, thread_ts, recipient_user_id,
  recipient_team_id, markdown_text or `markdown_text` chunks, never both), chat.appendStream and
  chat.stopStream (channel, ts, the same text fields). `rate_limit[method] = n` answers the next n
  calls with HTTP 429 + Retry-After, `fail[method] = "error"` with ok=false, `fail_nth(method, n)`
  only the n-th call from now; `refuse_streaming = "method_not_supported"` (or any error)
  refuses the three stream methods, as a workspace without them does;
- `posts` holds every message the bot made (posted or streamed) as it is now: `text` follows
  chat.update and the stream's appends, `deleted` is set by chat.delete; `shown` logs every text
  a reader could have seen, with its time;
- Socket Mode: apps.connections.open hands out a ws:// URL; the websocket says `hello`, carries
  `events_api` envelopes and takes the client's acknowledgements. An envelope not acknowledged
  when its connection drops is delivered again on the next connection with `retry_attempt`
  raised, as Slack does (`lose_acks = True` drops acknowledgements on the floor to make that
  happen); `disconnect()` sends Slack's `{"type": "disconnect"}` or just closes;
- the HTTP Events API the other way round: `deliver_http` signs a request with the signing
  secret (v0 HMAC-SHA256) and POSTs it to the app, with `X-Slack-Retry-Num` for retries.

Messages the bot posts are echoed back as `message` events, as Slack does.

Why one module of ~520 lines: one platform's fake server (the Web API methods, Socket Mode, the
signed Events API) is one protocol that tests drive through one object; split, every test would
import the parts.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes import FakeServer

TEAM = "T0FAKE01"
APP = "A0FAKE01"

DEFAULT_USERS: dict[str, dict[str, Any]] = {
    "U0ANN": {"name": "ann", "real_name": "Ann Lee", "display_name": "Ann"},
    "U0BOB": {"name": "bob", "real_name": "Bob Stone", "display_name": "Bob"},
    "U0CY": {"name": "cy", "real_name": "Cy Wu", "display_name": ""},  # no display name
}


def sign(secret: str, timestamp: str, body: str) -> str:
    """Slack's request signature: v0=HMAC_SHA256(secret, "v0:{ts}:{body}")."""
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class FakeSlack(FakeServer):
    def __init__(self, *, bot_token: str = "xoxb-fake-bot", app_token: str = "xapp-fake-app",
                 signing_secret: str = "fake-signing-secret", bot_user_id: str = "U0BOT",
                 bot_id: str = "B0BOT", users: dict[str, dict[str, Any]] | None = None,
                 echo_own_messages: bool = True):
        super().__init__()
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.echo_own_messages = echo_own_messages
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.statuses: list[dict[str, Any]] = []
        self.reactions: list[dict[str, Any]] = []
        self.history: dict[str, list[dict[str, Any]]] = {}  # channel -> messages
        self.acks: list[str] = []
        self.lose_acks = False  # acknowledgements "lost in transit": Slack will redeliver
        self.lost_acks: list[str] = []
        self.envelopes_sent: list[dict[str, Any]] = []
        self.rate_limit: dict[str, int] = {}
        self.fail: dict[str, str] = {}
        self.refuse_streaming: str | None = None
        self._fail_at: dict[str, dict[int, str]] = {}  # method -> call number -> error
        self.method_calls: dict[str, int] = {}
        # (time, ts, text) each time a message's text changed: what a reader could have seen
        self.shown: list[tuple[float, str, str]] = []
        self.connections = 0  # websocket connections accepted so far
        self._pending: dict[str, dict[str, Any]] = {}  # envelope_id -> envelope, not yet acked
        self._sockets: list[web.WebSocketResponse] = []
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=4 * 2**20)
        app.router.add_route("*", "/api/{method}", self._web_api)
        app.router.add_get("/link/", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    # -- waiting --------------------------------------------------------------------------
    async def wait_acked(self, event_id: str, timeout: float = 5.0) -> None:
        """Until the latest delivery of `event_id` is acknowledged."""
        def done() -> bool:
            ids = [e["envelope_id"] for e in self.envelopes_sent
                   if e["payload"].get("event_id") == event_id]
            return bool(ids) and ids[-1] in self.acks
        await self.wait_for(done, timeout)

    async def wait_connected(self, n: int = 1, timeout: float = 5.0) -> None:
        await self.wait_for(lambda: self.connections >= n and bool(self._sockets), timeout)

    # -- payload builders -----------------------------------------------------------------
    def next_ts(self) -> str:
        return f"{1_760_000_000 + next(self._ts)}.{next(self._ts):06d}"

    def message_event(self, channel: str, user: str, text: str, *,
                      thread_ts: str | None = None, ts: str | None = None,
                      channel_type: str | None = None) -> dict[str, Any]:
        """A `message` event as Slack sends it for a person's message (and its history entry)."""
        ts = ts or self.next_ts()
        ev: dict[str, Any] = {
            "client_msg_id": str(uuid.uuid4()), "type": "message", "text": text, "user": user,
            "ts": ts, "team": TEAM, "channel": channel, "event_ts": ts,
            "channel_type": channel_type or ("im" if channel.startswith("D") else "channel"),
            "blocks": [{"type": "rich_text", "block_id": "b1", "elements": [
                {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}]}],
        }
        if thread_ts:
            ev["thread_ts"] = thread_ts
            ev["parent_user_id"] = self._author_of(channel, thread_ts)
        self._record(channel, {k: v for k, v in ev.items()
                               if k not in ("channel", "event_ts", "channel_type")})
        return ev

    def _author_of(self, channel: str, ts: str) -> str:
        for m in self.history.get(channel, []):
            if m["ts"] == ts:
                return str(m.get("user", ""))
        return ""

    def _record(self, channel: str, msg: dict[str, Any]) -> None:
        self.history.setdefault(channel, []).append(msg)

    def callback_body(self, event: dict[str, Any], event_id: str | None = None
                      ) -> dict[str, Any]:
        return {
            "token": "legacy-verification-token", "team_id": TEAM, "context_team_id": TEAM,
            "api_app_id": APP, "event": event, "type": "event_callback",
            "event_id": event_id or "Ev" + uuid.uuid4().hex[:10].upper(),
            "event_time": int(time.time()),
            "authorizations": [{"enterprise_id": None, "team_id": TEAM,
                                "user_id": self.bot_user_id, "is_bot": True,
                                "is_enterprise_install": False}],
            "is_ext_shared_channel": False, "event_context": "4-fake",
        }

    # -- driving the client over Socket Mode ----------------------------------------------
    async def send_event(self, event: dict[str, Any], *, event_id: str | None = None,
                         retry_attempt: int = 0) -> str:
        """Deliver one event in an `events_api` envelope; returns its event_id. With no
        connection open it waits in the queue and goes out on the next one."""
        body = self.callback_body(event, event_id)
        env = {"envelope_id": str(uuid.uuid4()), "payload": body, "type": "events_api",
               "accepts_response_payload": False, "retry_attempt": retry_attempt,
               "retry_reason": "" if retry_attempt == 0 else "timeout"}
        self._pending[env["envelope_id"]] = env
        ws = self._sockets[-1] if self._sockets else None
        if ws is not None and not ws.closed:
            await self._send_envelope(ws, env)
        return str(body["event_id"])

    async def user_says(self, channel: str, user: str, text: str, *,
                        thread_ts: str | None = None) -> str:
        """A person posts: the `message` event, plus `app_mention` when the bot is @-mentioned
        (Slack sends both, with different event ids). Returns the message ts."""
        ev = self.message_event(channel, user, text, thread_ts=thread_ts)
        await self.send_event(ev)
        if f"<@{self.bot_user_id}>" in text and not channel.startswith("D"):
            mention = {k: v for k, v in ev.items() if k != "channel_type"}
            mention["type"] = "app_mention"
            await self.send_event(mention)
        return str(ev["ts"])

    async def _send_envelope(self, ws: web.WebSocketResponse, env: dict[str, Any]) -> None:
        self.envelopes_sent.append(env)
        await ws.send_str(json.dumps(env))

    async def disconnect(self, *, polite: bool = False) -> None:
        """Drop every Socket Mode connection: `polite` sends Slack's disconnect message
        (refresh_requested) first; otherwise the server just closes the websocket."""
        for ws in list(self._sockets):
            if polite:
                await ws.send_str(json.dumps({"type": "disconnect", "reason":
                                              "refresh_requested",
                                              "debug_info": {"host": "fake"}}))
            else:
                await ws.close(code=1001, message=b"going away")

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)  # pings from the SDK get pongs
        await ws.prepare(request)
        self.connections += 1
        self._sockets.append(ws)
        await ws.send_str(json.dumps({
            "type": "hello", "num_connections": len(self._sockets),
            "debug_info": {"host": "fake-slack", "build_number": 1,
                           "approximate_connection_time": 18060},
            "connection_info": {"app_id": APP}}))
        # Envelopes nobody acknowledged are redelivered on the new connection, as retries.
        for env in list(self._pending.values()):
            if env in self.envelopes_sent:
                env = dict(env, retry_attempt=env["retry_attempt"] + 1, retry_reason="timeout")
                self._pending[env["envelope_id"]] = env
            await self._send_envelope(ws, env)
        await self._notify()
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                eid = data.get("envelope_id")
                if eid and self.lose_acks:
                    self.lost_acks.append(eid)
                    await self._notify()
                elif eid:
                    self.acks.append(eid)
                    self._pending.pop(eid, None)
                    await self._notify()
        finally:
            self._sockets.remove(ws)
            await self._notify()
        return ws

    # -- driving the app over the HTTP Events API -----------------------------------------
    async def deliver_http(self, url: str, payload: dict[str, Any], *,
                           retry_num: int | None = None, secret: str | None = None,
                           timestamp: int | None = None) -> tuple[int, str]:
        """POST a signed Events API request to the app as Slack does; returns (status, body)."""
        body = json.dumps(payload)
        ts = str(int(time.time()) if timestamp is None else timestamp)
        headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": ts,
                   "X-Slack-Signature": sign(secret or self.signing_secret, ts, body)}
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        async with aiohttp.ClientSession() as s, s.post(url, data=body.encode(),
                                                         headers=headers) as r:
            return r.status, await r.text()

    # -- the Web API ----------------------------------------------------------------------
    async def _web_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                args.update(await request.json())
            else:
                args.update(await request.post())
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        token = token or str(args.pop("token", ""))
        self.calls.append((method, args))
        n = self.method_calls[method] = self.method_calls.get(method, 0) + 1
        if self.rate_limit.get(method, 0) > 0:
            self.rate_limit[method] -= 1
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": "0"})
        want = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != want:
            return self._ok_false("invalid_auth" if token else "not_authed")
        if method in self.fail:
            return self._ok_false(self.fail[method])
        if n in self._fail_at.get(method, {}):
            return self._ok_false(self._fail_at[method].pop(n))
        if self.refuse_streaming and method in ("chat.startStream", "chat.appendStream",
                                                "chat.stopStream"):
            return self._ok_false(self.refuse_streaming)
        handler = getattr(self, "api_" + method.replace(".", "_"), None)
        if handler is None:
            return self._ok_false("unknown_method")
        result = await handler(args)
        await self._notify()
        if isinstance(result, str):
            return self._ok_false(result)
        return web.json_response({"ok": True, **result})

    def fail_nth(self, method: str, n: int = 1, error: str = "internal_error") -> None:
        """The n-th call of `method` from now answers ok=false with `error`."""
        self._fail_at.setdefault(method, {})[self.method_calls.get(method, 0) + n] = error

    def message(self, ts: str) -> dict[str, Any]:
        """The bot's message `ts` as it is now (an entry of `posts`)."""
        return next(p for p in self.posts if p["ts"] == ts)

    def live(self, channel: str | None = None) -> list[dict[str, Any]]:
        """The bot's messages still there (not deleted), in the order they were made."""
        return [p for p in self.posts
                if not p.get("deleted") and (channel is None or p["channel"] == channel)]

    @staticmethod
    def _ok_false(error: str) -> web.Response:
        return web.json_response({"ok": False, "error": error})

    async def api_auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"url": "https://fake.slack.test/", "team": "Fake Team", "user": "assistant",
                "team_id": TEAM, "user_id": self.bot_user_id, "bot_id": self.bot_id,
                "is_enterprise_install": False}

    async def api_apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"url": f"ws://127.0.0.1:{self.port}/link/?ticket={uuid.uuid4().hex}"}

    async def api_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any] | str:
        channel = str(args.get("channel") or "")
        if not channel:
            return "channel_not_found"
        text = str(args.get("text") or args.get("markdown_text") or "")
        if not text:
            return "no_text"
        if len(text) > 40_000:
            return "msg_too_long"
        return {"channel": channel, **await self._new_message(channel, text, args)}

    async def _new_message(self, channel: str, text: str, args: dict[str, Any],
                           **extra: Any) -> dict[str, Any]:
        """A message by the bot: in `posts` (as it will be shown), in the channel's history,
        and echoed back as a `message` event, as Slack does."""
        ts = self.next_ts()
        self.posts.append(dict(args, text=text, ts=ts, **extra))
        self.shown.append((time.monotonic(), ts, text))
        msg: dict[str, Any] = {"type": "message", "text": text,
                               "user": self.bot_user_id, "bot_id": self.bot_id, "ts": ts,
                               "app_id": APP, "team": TEAM,
                               "bot_profile": {"id": self.bot_id, "name": "assistant",
                                               "app_id": APP}}
        if args.get("thread_ts"):
            msg["thread_ts"] = str(args["thread_ts"])
        self._record(channel, msg)
        if self.echo_own_messages:
            ev = dict(msg, channel=channel, event_ts=ts,
                      channel_type="im" if channel.startswith("D") else "channel")
            await self.send_event(ev)
        return {"ts": ts, "message": msg}

    def _own_message(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | str:
        """(the post, its history entry) of the bot's message `args["ts"]`, or the error."""
        channel, ts = str(args.get("channel") or ""), str(args.get("ts") or "")
        post = next((p for p in self.posts if p["ts"] == ts and p["channel"] == channel),
                    None)
        entry = next((m for m in self.history.get(channel, []) if m["ts"] == ts), None)
        if post is None or entry is None or post.get("deleted"):
            return "message_not_found"
        return post, entry

    async def _set_text(self, channel: str, post: dict[str, Any], entry: dict[str, Any],
                        text: str, *, echo: bool) -> None:
        previous = dict(entry)
        post["text"] = entry["text"] = text
        self.shown.append((time.monotonic(), post["ts"], text))
        if echo and self.echo_own_messages:  # chat.update: Slack says message_changed
            await self.send_event({
                "type": "message", "subtype": "message_changed", "hidden": True,
                "channel": channel, "ts": self.next_ts(), "event_ts": self.next_ts(),
                "channel_type": "im" if channel.startswith("D") else "channel",
                "message": dict(entry, edited={"user": self.bot_user_id, "ts": self.next_ts()}),
                "previous_message": previous})

    @staticmethod
    def _stream_text(args: dict[str, Any]) -> str | None:
        """The text of a stream call: `markdown_text`, or the `markdown_text` chunks the SDK's
        chat_stream helper sends; None when both are given (Slack refuses that)."""
        chunks = args.get("chunks")
        if isinstance(chunks, str):  # a form-encoded call
            chunks = json.loads(chunks)
        if chunks and args.get("markdown_text"):
            return None
        if chunks:
            return "".join(str(c.get("text") or "") for c in chunks
                           if isinstance(c, dict) and c.get("type") == "markdown_text")
        return str(args.get("markdown_text") or "")

    async def api_chat_startStream(self, args: dict[str, Any]) -> dict[str, Any] | str:
        channel = str(args.get("channel") or "")
        if not channel:
            return "channel_not_found"
        if not args.get("thread_ts"):
            return "invalid_arguments"  # Slack's docs say optional; it is not in practice
        # A bot token must name who the stream is for, in a DM too.
        if not args.get("recipient_user_id"):
            return "missing_recipient_user_id"
        if not args.get("recipient_team_id"):
            return "missing_recipient_team_id"
        text = self._stream_text(args)
        if text is None:
            return "cannot_provide_both_markdown_text_and_chunks"
        if len(text) > 12_000:
            return "msg_too_long"
        fields = {k: v for k, v in args.items() if k not in ("markdown_text", "chunks")}
        return {"channel": channel, **await self._new_message(
            channel, text, fields, stream=True, streaming=True)}

    def _open_stream(self, args: dict[str, Any]) -> tuple[Any, Any, str] | str:
        """The streaming message `args` name and the text they add, or Slack's error."""
        found = self._own_message(args)
        if isinstance(found, str):
            return found
        post, entry = found
        if not post.get("streaming"):
            return "message_not_in_streaming_state"
        text = self._stream_text(args)
        if text is None:
            return "cannot_provide_both_markdown_text_and_chunks"
        if len(text) > 12_000:
            return "msg_too_long"
        return post, entry, text

    async def api_chat_appendStream(self, args: dict[str, Any]) -> dict[str, Any] | str:
        opened = self._open_stream(args)
        if isinstance(opened, str):
            return opened
        post, entry, text = opened
        if not text:
            return "no_text"
        await self._set_text(post["channel"], post, entry, post["text"] + text, echo=False)
        return {"channel": post["channel"], "ts": post["ts"]}

    async def api_chat_stopStream(self, args: dict[str, Any]) -> dict[str, Any] | str:
        opened = self._open_stream(args)
        if isinstance(opened, str):
            return opened
        post, entry, text = opened
        post["streaming"] = False
        if text:
            await self._set_text(post["channel"], post, entry, post["text"] + text,
                                 echo=False)
        return {"channel": post["channel"], "ts": post["ts"],
                "message": dict(entry)}

    async def api_chat_update(self, args: dict[str, Any]) -> dict[str, Any] | str:
        found = self._own_message(args)
        if isinstance(found, str):
            return "cant_update_message" if found == "message_not_found" and any(
                m["ts"] == args.get("ts") for m in self.history.get(
                    str(args.get("channel") or ""), [])) else found
        post, entry = found
        text = str(args.get("text") or args.get("markdown_text") or "")
        if not text:
            return "no_text"
        if len(text) > 40_000:
            return "msg_too_long"
        await self._set_text(post["channel"], post, entry, text, echo=True)
        return {"channel": post["channel"], "ts": post["ts"], "text": text}

    async def api_chat_delete(self, args: dict[str, Any]) -> dict[str, Any] | str:
        found = self._own_message(args)
        if isinstance(found, str):
            return found
        post, entry = found
        post["deleted"] = True
        post["streaming"] = False
        channel = post["channel"]
        self.history[channel].remove(entry)
        self.shown.append((time.monotonic(), post["ts"], ""))
        if self.echo_own_messages:
            await self.send_event({
                "type": "message", "subtype": "message_deleted", "hidden": True,
                "channel": channel, "ts": self.next_ts(), "deleted_ts": post["ts"],
                "event_ts": self.next_ts(),
                "channel_type": "im" if channel.startswith("D") else "channel",
                "previous_message": entry})
        return {"channel": channel, "ts": post["ts"]}

    async def api_users_info(self, args: dict[str, Any]) -> dict[str, Any] | str:
        uid = str(args.get("user") or "")
        u = self.users.get(uid)
        if u is None:
            return "user_not_found"
        return {"user": {"id": uid, "team_id": TEAM, "name": u["name"], "deleted": False,
                         "real_name": u["real_name"], "is_bot": False,
                         "profile": {"real_name": u["real_name"],
                                     "display_name": u["display_name"]}}}

    async def api_conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        ch = str(args.get("channel") or "")
        im = ch.startswith("D")
        return {"channel": {"id": ch, "name": None if im else f"chan-{ch.lower()}",
                            "is_channel": not im, "is_im": im, "is_member": True}}

    async def api_conversations_replies(self, args: dict[str, Any]) -> dict[str, Any] | str:
        ch, ts = str(args.get("channel") or ""), str(args.get("ts") or "")
        msgs = [m for m in self.history.get(ch, [])
                if m["ts"] == ts or m.get("thread_ts") == ts]
        if not msgs:
            return "thread_not_found"
        limit = int(args.get("limit") or 1000)
        return {"messages": sorted(msgs, key=lambda m: float(m["ts"]))[:limit],
                "has_more": False}

    async def api_reactions_add(self, args: dict[str, Any]) -> dict[str, Any]:
        self.reactions.append(dict(args))
        return {}

    async def api_assistant_threads_setStatus(self, args: dict[str, Any]) -> dict[str, Any]:
        self.statuses.append(dict(args))
        return {}
