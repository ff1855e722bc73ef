"""A fake Discord on 127.0.0.1 that the real discord.py client talks to.

It speaks the real protocols:
- REST under `/api/v10` with `Authorization: Bot <token>`: /gateway, /gateway/bot, /users/@me,
  /oauth2/applications/@me, /channels/{id} and its /messages (create, history, one message,
  edit with PATCH and delete, each echoed as MESSAGE_UPDATE / MESSAGE_DELETE), /typing,
  application command sync, interaction callbacks and follow-ups (/webhooks/{app}/{token}).
  `rate_limit[route] = n` answers the next n calls of a route (e.g. "POST
  /channels/{id}/messages") with HTTP 429 and a `retry_after`, as Discord's edge does (with a
  `Via` header: without one discord.py takes a 429 for a Cloudflare ban); `fail_nth(route, n)`
  fails only the n-th call of a route from now (403 Missing Permissions by default);
- `posts` holds every message the bot created as it is now (`content` follows its edits,
  `deleted` is set when it is deleted); `shown` logs every text a reader could have seen;
- the gateway websocket: HELLO, IDENTIFY -> READY + GUILD_CREATE, HEARTBEAT -> HEARTBEAT_ACK,
  RESUME -> the missed events replayed + RESUMED, an unknown session -> INVALID_SESSION, with
  `zlib-stream` transport compression when the client asks for it (one zlib context per
  connection, every payload ending in Z_SYNC_FLUSH; big payloads split over two frames).
  `refuse_intents=True` closes with 4014 when privileged intents are requested, as Discord does
  when the Message Content switch is off in the Developer Portal.

Messages the bot creates are echoed back as MESSAGE_CREATE, as Discord does.

Why one module of ~620 lines: one platform's fake server (REST routes, the zlib-stream gateway
with its heartbeats and resumes, interactions) is one protocol that tests drive through one
object; split, every test would import the parts.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time
import uuid
import zlib
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes import FakeServer

DISCORD_EPOCH = 1420070400000
MESSAGE_CONTENT = 1 << 15
PRIVILEGED = (1 << 1) | (1 << 8) | MESSAGE_CONTENT  # members, presences, message content

# Gateway opcodes
DISPATCH, HEARTBEAT, IDENTIFY, RESUME, RECONNECT, INVALID_SESSION, HELLO, HEARTBEAT_ACK = (
    0, 1, 2, 6, 7, 9, 10, 11)

_counter = itertools.count(1)


def snowflake() -> int:
    """A time-ordered id like Discord's (discord.py reads creation times from it)."""
    return ((int(time.time() * 1000) - DISCORD_EPOCH) << 22) | (next(_counter) % 4096)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None
          ) -> web.Response:
    """A JSON response typed exactly `application/json`, as Discord sends it (discord.py
    compares the header verbatim: with a charset parameter it would read the body as text)."""
    return web.Response(body=json.dumps(data).encode(), status=status,
                        headers={"Content-Type": "application/json", **(headers or {})})


def _iso(t: float | None = None) -> str:
    return dt.datetime.fromtimestamp(t or time.time(), dt.UTC).isoformat()


def user_obj(uid: int, username: str, global_name: str | None = None, *, bot: bool = False
             ) -> dict[str, Any]:
    u: dict[str, Any] = {"id": str(uid), "username": username, "global_name": global_name,
                         "avatar": None, "discriminator": "0", "public_flags": 0, "flags": 0,
                         "banner": None, "accent_color": None, "avatar_decoration_data": None,
                         "clan": None, "primary_guild": None}
    if bot:
        u["bot"] = True
    return u


class _Session:
    def __init__(self, sid: str):
        self.id = sid
        self.seq = 0
        self.events: list[dict[str, Any]] = []  # every dispatch, for RESUME replays


class FakeDiscord(FakeServer):
    def __init__(self, *, token: str = "fake.discord.token", refuse_intents: bool = False,
                 heartbeat_ms: int = 1000):
        super().__init__()
        self.token = token
        self.refuse_intents = refuse_intents
        self.heartbeat_ms = heartbeat_ms
        # On RESUME, also replay this many events the client already had (a gateway may send
        # an event twice; the client must not answer twice).
        self.replay_extra = 0
        self.bot_id = snowflake()
        self.app_id = self.bot_id
        self.guild_id = snowflake()
        self.general = snowflake()
        self.random = snowflake()
        self.thread = snowflake()
        self.dm = snowflake()
        self.bot_role = snowflake()
        self.mods_role = snowflake()
        self.bot_user = user_obj(self.bot_id, "chimein-bot", None, bot=True)
        self.people = {
            "ann": user_obj(snowflake(), "ann_l", "Ann"),
            "bob": user_obj(snowflake(), "bobby", "Bob"),
            "cy": user_obj(snowflake(), "cy", None),
            "otherbot": user_obj(snowflake(), "otherbot", "Other Bot", bot=True),
        }
        self.nicks = {"bob": "Bobby Tables"}  # a guild nickname wins over the global name
        self.messages: dict[int, list[dict[str, Any]]] = {}
        self.typing: list[int] = []
        self.callbacks: list[dict[str, Any]] = []
        self.synced_commands: list[dict[str, Any]] = []
        self.rest_calls: list[str] = []
        self.rate_limit: dict[str, int] = {}
        self.route_calls: dict[str, int] = {}
        self._fail_at: dict[str, dict[int, int]] = {}  # route -> call number -> HTTP status
        # (time, message id, content) each time a message's text changed ("" once deleted)
        self.shown: list[tuple[float, str, str]] = []
        self.followups: list[dict[str, Any]] = []
        self.identifies = 0
        self.resumes = 0
        self.heartbeats = 0
        self.connections = 0
        self.compressed_connections = 0
        self.close_codes: list[int] = []
        self._sessions: dict[str, _Session] = {}
        self._session: _Session | None = None
        self._ws: web.WebSocketResponse | None = None
        self._zlib: Any = None
        self._ready = False  # identified/resumed on the current connection
        self._runner: web.AppRunner | None = None
        self.port = 0
        starter = self._message_payload(self.general, "ann", "release checklist thread",
                                        mid=self.thread)
        self.messages[self.general] = [starter]

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=8 * 2**20)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def api_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # -- waiting --------------------------------------------------------------------------
    async def wait_ready(self, timeout: float = 5.0) -> None:
        await self.wait_for(lambda: self._ready, timeout)

    # -- payloads -------------------------------------------------------------------------
    def _member(self, who: str) -> dict[str, Any]:
        return {"roles": [], "nick": self.nicks.get(who), "avatar": None, "banner": None,
                "premium_since": None, "pending": False, "joined_at": _iso(1_700_000_000),
                "deaf": False, "mute": False, "flags": 0, "communication_disabled_until": None}

    def _author(self, who: str) -> dict[str, Any]:
        return self.bot_user if who == "bot" else self.people[who]

    def _message_payload(self, channel_id: int, who: str, content: str, *,
                         mid: int | None = None, mentions: list[str] = (),  # type: ignore[assignment]
                         mention_roles: list[int] = (),  # type: ignore[assignment]
                         reference: dict[str, Any] | None = None,
                         attachments: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
        in_guild = channel_id != self.dm
        msg: dict[str, Any] = {
            "type": 19 if reference else 0, "tts": False, "timestamp": _iso(),
            "pinned": False, "nonce": str(uuid.uuid4().int)[:18], "mention_everyone": False,
            "mentions": [dict(self._author(w), **({"member": self._member(w)} if in_guild
                                                   and w != "bot" else {}))
                         for w in mentions],
            "mention_roles": [str(r) for r in mention_roles], "id": str(mid or snowflake()),
            "flags": 0, "embeds": [], "edited_timestamp": None, "content": content,
            "components": [], "channel_id": str(channel_id), "author": self._author(who),
            "attachments": [{"id": str(snowflake()), "filename": f, "size": 10,
                             "url": f"https://cdn.fake/{f}", "proxy_url": f"https://cdn.fake/{f}"}
                            for f in attachments],
            "channel_type": 1 if not in_guild else 11 if channel_id == self.thread else 0,
        }
        if in_guild:
            msg["guild_id"] = str(self.guild_id)
            if who != "bot":
                msg["member"] = self._member(who)
            else:
                msg["member"] = dict(self._member("bot"), roles=[str(self.bot_role)])
        if reference:
            msg["message_reference"] = dict(reference, type=0)
            ref = self._find(int(reference["channel_id"]), int(reference["message_id"]))
            msg["referenced_message"] = ref
        return msg

    def _find(self, channel_id: int, mid: int) -> dict[str, Any] | None:
        for m in self.messages.get(channel_id, []):
            if int(m["id"]) == mid:
                return m
        return None

    def _channel(self, cid: int) -> dict[str, Any] | None:
        base = {"guild_id": str(self.guild_id), "permission_overwrites": [], "nsfw": False,
                "parent_id": None, "topic": None, "last_message_id": None,
                "rate_limit_per_user": 0, "flags": 0}
        if cid == self.general:
            return dict(base, id=str(cid), type=0, name="general", position=0)
        if cid == self.random:
            return dict(base, id=str(cid), type=0, name="random", position=1)
        if cid == self.thread:
            return {"id": str(cid), "type": 11, "guild_id": str(self.guild_id),
                    "parent_id": str(self.general), "owner_id": self.people["ann"]["id"],
                    "name": "release checklist", "message_count": 1, "member_count": 2,
                    "last_message_id": None, "rate_limit_per_user": 0, "flags": 0,
                    "total_message_sent": 1,
                    "thread_metadata": {"archived": False, "auto_archive_duration": 1440,
                                        "archive_timestamp": _iso(), "locked": False}}
        if cid == self.dm:
            return {"id": str(cid), "type": 1, "last_message_id": None, "flags": 0,
                    "recipients": [self.people["ann"]]}
        return None

    def _role(self, rid: int, name: str, position: int, *, bot: bool = False
              ) -> dict[str, Any]:
        r: dict[str, Any] = {"id": str(rid), "name": name, "color": 0, "hoist": False,
                             "icon": None, "unicode_emoji": None, "position": position,
                             "permissions": "2248473465835073", "managed": bot,
                             "mentionable": True, "flags": 0,
                             "colors": {"primary_color": 0, "secondary_color": None,
                                        "tertiary_color": None}}
        if bot:
            r["tags"] = {"bot_id": str(self.bot_id)}
        return r

    def guild_payload(self) -> dict[str, Any]:
        chans = [self._channel(self.general), self._channel(self.random)]
        for c in chans:
            c.pop("guild_id", None)  # type: ignore[union-attr]
        thread = self._channel(self.thread)
        return {
            "id": str(self.guild_id), "name": "Fake Guild", "icon": None, "description": None,
            "splash": None, "discovery_splash": None, "banner": None, "features": [],
            "owner_id": self.people["ann"]["id"], "application_id": None,
            "region": "deprecated", "afk_channel_id": None, "afk_timeout": 300,
            "system_channel_id": None, "system_channel_flags": 0, "widget_enabled": False,
            "verification_level": 0, "default_message_notifications": 0,
            "explicit_content_filter": 0, "mfa_level": 0, "nsfw_level": 0, "nsfw": False,
            "premium_tier": 0, "premium_subscription_count": 0, "preferred_locale": "en-US",
            "rules_channel_id": None, "public_updates_channel_id": None,
            "safety_alerts_channel_id": None, "max_members": 500000,
            "max_video_channel_users": 25, "max_stage_video_channel_users": 50,
            "premium_progress_bar_enabled": False, "vanity_url_code": None,
            "incidents_data": None, "joined_at": _iso(1_700_000_000), "large": False,
            "unavailable": False, "member_count": 5, "lazy": True,
            "roles": [self._role(self.guild_id, "@everyone", 0),
                      self._role(self.bot_role, "chimein-bot", 1, bot=True),
                      self._role(self.mods_role, "mods", 2)],
            "emojis": [], "stickers": [], "soundboard_sounds": [], "voice_states": [],
            "members": [dict(self._member("bot"), user=self.bot_user,
                             roles=[str(self.bot_role)])],
            "channels": chans, "threads": [thread], "presences": [], "stage_instances": [],
            "guild_scheduled_events": [], "embedded_activities": [], "version": 1,
        }

    # -- driving the client ---------------------------------------------------------------
    async def dispatch(self, name: str, data: dict[str, Any]) -> int:
        """Send one DISPATCH on the session (kept for RESUME); returns its sequence number.
        With no connection up it is delivered by the client's RESUME."""
        s = self._session
        if s is None:
            raise RuntimeError("no gateway session: the client never identified")
        s.seq += 1
        payload = {"op": DISPATCH, "t": name, "s": s.seq, "d": data}
        s.events.append(payload)
        if self._ws is not None and not self._ws.closed and self._ready:
            await self._send(payload)
        return s.seq

    async def user_says(self, who: str, content: str, *, channel: int | None = None,
                        mentions: list[str] = (),  # type: ignore[assignment]
                        mention_roles: list[int] = (),  # type: ignore[assignment]
                        reply_to: int | None = None,
                        attachments: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
        """Someone posts a message: MESSAGE_CREATE on the gateway. Returns the payload."""
        cid = channel or self.general
        ref = None
        if reply_to is not None:
            ref = {"message_id": str(reply_to), "channel_id": str(cid)}
            if cid != self.dm:
                ref["guild_id"] = str(self.guild_id)
        msg = self._message_payload(cid, who, content, mentions=list(mentions),
                                    mention_roles=list(mention_roles), reference=ref,
                                    attachments=list(attachments))
        self.messages.setdefault(cid, []).append(msg)
        await self.dispatch("MESSAGE_CREATE", msg)
        return msg

    async def edit(self, msg: dict[str, Any], content: str) -> None:
        msg["content"] = content
        msg["edited_timestamp"] = _iso()
        await self.dispatch("MESSAGE_UPDATE", dict(msg))

    async def delete(self, msg: dict[str, Any]) -> None:
        d = {"id": msg["id"], "channel_id": msg["channel_id"]}
        if "guild_id" in msg:
            d["guild_id"] = msg["guild_id"]
        await self.dispatch("MESSAGE_DELETE", d)

    async def react(self, who: str, msg: dict[str, Any], emoji: str = "👍",
                    added: bool = True) -> None:
        d: dict[str, Any] = {"user_id": self.people[who]["id"], "type": 0,
                             "message_id": msg["id"], "channel_id": msg["channel_id"],
                             "emoji": {"id": None, "name": emoji}, "burst": False,
                             "burst_colors": []}
        if added:
            d["message_author_id"] = msg["author"]["id"]
        if "guild_id" in msg:
            d["guild_id"] = msg["guild_id"]
            d["member"] = dict(self._member(who), user=self.people[who])
        await self.dispatch("MESSAGE_REACTION_ADD" if added else "MESSAGE_REACTION_REMOVE", d)

    async def slash(self, who: str, name: str, options: list[dict[str, Any]] | None = None,
                    channel: int | None = None) -> str:
        """A user runs a slash command: INTERACTION_CREATE. Returns the interaction id."""
        cid = channel or self.general
        iid = str(snowflake())
        data: dict[str, Any] = {
            "id": iid, "application_id": str(self.app_id), "type": 2, "token": "itok-" + iid,
            "version": 1, "locale": "en-US", "guild_locale": "en-US", "entitlements": [],
            "app_permissions": "2248473465835073", "authorizing_integration_owners": {"0": str(
                self.guild_id)}, "context": 0, "attachment_size_limit": 10485760,
            "channel_id": str(cid), "channel": self._channel(cid),
            "data": {"id": str(snowflake()), "name": name, "type": 1,
                     "options": options or []},
            "guild_id": str(self.guild_id),
            "member": dict(self._member(who), user=self.people[who],
                           permissions="2248473465835073"),
        }
        await self.dispatch("INTERACTION_CREATE", data)
        return iid

    async def drop(self, code: int = 4000) -> None:
        """The server closes the gateway connection (the client should RESUME)."""
        if self._ws is not None:
            await self._close(self._ws, code, b"fake drop")

    async def _close(self, ws: web.WebSocketResponse, code: int, why: bytes) -> None:
        self.close_codes.append(code)  # the codes the server closed with
        await ws.close(code=code, message=why)

    async def request_reconnect(self) -> None:
        """Discord's op 7 RECONNECT: the client closes and RESUMEs."""
        await self._send({"op": RECONNECT, "d": None, "s": None, "t": None})

    # -- gateway --------------------------------------------------------------------------
    async def _send(self, payload: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return
        data = json.dumps(payload).encode()
        if self._zlib is None:
            await ws.send_str(data.decode())
            return
        blob = self._zlib.compress(data) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
        if len(blob) > 512:  # a message may span frames: the client must buffer to the flush
            await ws.send_bytes(blob[:256])
            blob = blob[256:]
        await ws.send_bytes(blob)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        if self._ws is not None and not self._ws.closed:
            await self._ws.close(code=4000)
        self._ws = ws
        self._ready = False
        self.connections += 1
        compress = request.query.get("compress")
        if compress == "zlib-stream":
            self._zlib = zlib.compressobj()
            self.compressed_connections += 1
        elif compress:
            await ws.close(code=4000, message=b"unsupported compression")  # e.g. zstd
            return ws
        else:
            self._zlib = None
        await self._send({"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_ms,
                                             "_trace": ["fake-gateway"]}, "s": None, "t": None})
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                await self._on_client(ws, json.loads(msg.data))
        finally:
            if self._ws is ws:
                self._ready = False
            await self._notify()
        return ws

    async def _on_client(self, ws: web.WebSocketResponse, p: dict[str, Any]) -> None:
        op, d = p.get("op"), p.get("d")
        if op == HEARTBEAT:
            self.heartbeats += 1
            await self._send({"op": HEARTBEAT_ACK, "d": None, "s": None, "t": None})
        elif op == IDENTIFY:
            self.identifies += 1
            if d.get("token") != self.token:
                await self._close(ws, 4004, b"Authentication failed.")
                return
            if self.refuse_intents and int(d.get("intents") or 0) & PRIVILEGED:
                await self._close(ws, 4014, b"Disallowed intent(s).")
                return
            s = _Session(uuid.uuid4().hex)
            self._sessions[s.id] = s
            self._session = s
            self._ready = True
            await self.dispatch("READY", {
                "v": 10, "user": dict(self.bot_user, verified=True, mfa_enabled=False,
                                      email=None),
                "session_type": "normal", "session_id": s.id,
                "resume_gateway_url": self.gateway_url, "guilds": [
                    {"id": str(self.guild_id), "unavailable": True}],
                "private_channels": [], "relationships": [], "presences": [],
                "guild_join_requests": [], "geo_ordered_rtc_regions": ["fake"],
                "user_settings": {}, "shard": [0, 1],
                "application": {"id": str(self.app_id), "flags": MESSAGE_CONTENT << 4},
                "_trace": ["fake-gateway"]})
            await self.dispatch("GUILD_CREATE", self.guild_payload())
        elif op == RESUME:
            s = self._sessions.get(str(d.get("session_id")))
            if s is None or d.get("token") != self.token:
                await self._send({"op": INVALID_SESSION, "d": False, "s": None, "t": None})
                return
            self.resumes += 1
            self._session = s
            self._ready = True
            since = int(d.get("seq") or 0) - self.replay_extra
            missed = [e for e in s.events
                      if e["s"] > since and e["t"] not in ("READY", "GUILD_CREATE")]
            for e in missed:
                await self._send(e)
            await self.dispatch("RESUMED", {"_trace": ["fake-gateway"]})
        await self._notify()

    # -- REST -----------------------------------------------------------------------------
    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["path"]
        route = f"{request.method} {path}"
        self.rest_calls.append(route)
        # Interaction callbacks and follow-ups are authorised by the token in their URL, not
        # the bot token.
        if request.headers.get("Authorization") != f"Bot {self.token}" and \
                not path.startswith(("/interactions/", "/webhooks/")):
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        generic = "/".join("{id}" if part.isdigit() else part for part in route.split("/"))
        n = self.route_calls[generic] = self.route_calls.get(generic, 0) + 1
        status = self._fail_at.get(generic, {}).pop(n, None)
        if status is not None:
            return _json({"message": "Missing Permissions", "code": 50013} if status == 403
                         else {"message": "Unknown Message", "code": 10008} if status == 404
                         else {"message": "Bad Request", "code": 0}, status=status)
        if self.rate_limit.get(generic, 0) > 0:
            self.rate_limit[generic] -= 1
            return _json(
                {"message": "You are being rate limited.", "retry_after": 0.05,
                 "global": False}, status=429,
                headers={"Via": "1.1 google", "X-RateLimit-Limit": "5",
                         "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "0.05",
                         "X-RateLimit-Bucket": "fakebucket", "X-RateLimit-Scope": "user",
                         "Retry-After": "1"})
        parts = path.strip("/").split("/")
        body: Any = None
        if request.can_read_body:
            body = await request.json()
        result = await self._route(request.method, parts, body, request)
        await self._notify()
        if isinstance(result, web.StreamResponse):
            return result
        if result is None:
            return web.Response(status=204)
        return _json(result, headers={
            "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "4",
            "X-RateLimit-Reset-After": "1.0", "X-RateLimit-Bucket": "fakebucket"})

    async def _route(self, method: str, parts: list[str], body: Any,
                     request: web.Request) -> Any:
        not_found = _json({"message": "Unknown", "code": 10003}, status=404)
        if parts == ["gateway"]:
            return {"url": self.gateway_url}
        if parts == ["gateway", "bot"]:
            return {"url": self.gateway_url, "shards": 1, "session_start_limit": {
                "total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}}
        if parts == ["users", "@me"]:
            return dict(self.bot_user, verified=True, mfa_enabled=False, email=None)
        if parts == ["oauth2", "applications", "@me"]:
            return {"id": str(self.app_id), "name": "chimein", "icon": None,
                    "description": "", "summary": "", "type": None, "hook": True,
                    "bot_public": False, "bot_require_code_grant": False,
                    "verify_key": "0" * 64, "flags": MESSAGE_CONTENT << 4,
                    "owner": self.people["ann"], "team": None, "bot": self.bot_user,
                    "rpc_origins": [], "redirect_uris": [], "tags": [],
                    "interactions_endpoint_url": None, "role_connections_verification_url":
                    None, "approximate_guild_count": 1, "integration_types_config": {}}
        if parts[0] == "channels" and len(parts) >= 2 and parts[1].isdigit():
            cid = int(parts[1])
            if len(parts) == 2 and method == "GET":
                return self._channel(cid) or not_found
            if parts[2:] == ["typing"] and method == "POST":
                self.typing.append(cid)
                return None
            if parts[2:] == ["messages"] and method == "POST":
                return await self._create_message(cid, body)
            if parts[2:] == ["messages"] and method == "GET":
                limit = int(request.query.get("limit", "50"))
                before = int(request.query.get("before", str(1 << 63)))
                msgs = [m for m in self.messages.get(cid, []) if int(m["id"]) < before]
                return list(reversed(msgs))[:limit]  # newest first, as Discord returns them
            if len(parts) == 4 and parts[2] == "messages" and method == "GET":
                return self._find(cid, int(parts[3])) or not_found
            if len(parts) == 4 and parts[2] == "messages" and method == "PATCH":
                return await self._edit_message(cid, int(parts[3]), body)
            if len(parts) == 4 and parts[2] == "messages" and method == "DELETE":
                return await self._delete_message(cid, int(parts[3]))
        if parts[0] == "webhooks" and len(parts) == 3 and method == "POST":
            # an interaction follow-up (after a deferred response)
            self.followups.append({"interaction_token": parts[2], **(body or {})})
            msg = self._message_payload(int(request.query.get("channel", self.general)), "bot",
                                        str((body or {}).get("content") or ""))
            msg["flags"] = int((body or {}).get("flags") or 0)
            msg["webhook_id"] = parts[1]
            return msg
        if parts[0] == "applications" and parts[2:] == ["commands"]:
            if method == "PUT":
                self.synced_commands = [dict(c, id=str(snowflake()),
                                             application_id=str(self.app_id), version="1")
                                        for c in body]
                return self.synced_commands
            return self.synced_commands
        if parts[0] == "interactions" and parts[-1] == "callback":
            self.callbacks.append({"interaction": parts[1], **(body or {})})
            return {"interaction": {"id": parts[1], "type": 2,
                                    "activity_instance_id": None,
                                    "response_message_id": None,
                                    "response_message_loading": False,
                                    "response_message_ephemeral": True},
                    "resource": {"type": (body or {}).get("type", 4)}}
        return not_found

    async def _create_message(self, cid: int, body: dict[str, Any]) -> Any:
        content = str(body.get("content") or "")
        if self._channel(cid) is None:
            return _json({"message": "Unknown Channel", "code": 10003},
                                     status=404)
        if not content or len(content) > 2000:
            return _json({"message": "Invalid Form Body", "code": 50035,
                                      "errors": {"content": {"_errors": [{
                                          "code": "BASE_TYPE_MAX_LENGTH",
                                          "message": "Must be 2000 or fewer in length."}]}}},
                                     status=400)
        ref = body.get("message_reference")
        msg = self._message_payload(cid, "bot", content, reference=ref)
        self.posts.append(dict(body, channel_id=cid, id=msg["id"]))
        self.shown.append((time.monotonic(), msg["id"], content))
        self.messages.setdefault(cid, []).append(msg)
        if self._session is not None:
            await self.dispatch("MESSAGE_CREATE", msg)
        return msg

    def fail_nth(self, route: str, n: int = 1, status: int = 403) -> None:
        """The n-th call of `route` (e.g. "PATCH /channels/{id}/messages/{id}") from now fails
        with `status` (403 Missing Permissions, 404 Unknown Message...)."""
        self._fail_at.setdefault(route, {})[self.route_calls.get(route, 0) + n] = status

    def live(self, channel_id: int | None = None) -> list[dict[str, Any]]:
        """The bot's messages still there (not deleted), in the order they were made."""
        return [p for p in self.posts if not p.get("deleted")
                and (channel_id is None or p["channel_id"] == channel_id)]

    async def _edit_message(self, cid: int, mid: int, body: dict[str, Any]) -> Any:
        msg = self._find(cid, mid)
        if msg is None:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        if msg["author"]["id"] != self.bot_user["id"]:
            return _json({"message": "Cannot edit a message authored by another user",
                          "code": 50005}, status=403)
        if "content" in body:
            content = str(body.get("content") or "")
            if not content or len(content) > 2000:
                return _json({"message": "Invalid Form Body", "code": 50035}, status=400)
            msg["content"] = content
            for p in self.posts:
                if p["id"] == msg["id"]:
                    p["content"] = content
            self.shown.append((time.monotonic(), msg["id"], content))
        msg["edited_timestamp"] = _iso()
        if self._session is not None:
            await self.dispatch("MESSAGE_UPDATE", dict(msg))
        return msg

    async def _delete_message(self, cid: int, mid: int) -> Any:
        msg = self._find(cid, mid)
        if msg is None:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        self.messages[cid].remove(msg)
        for p in self.posts:
            if p["id"] == msg["id"]:
                p["deleted"] = True
        self.shown.append((time.monotonic(), msg["id"], ""))
        if self._session is not None:
            await self.delete(msg)
        return None
