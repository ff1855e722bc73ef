"""Discord: a discord.py client on the gateway with the Message Content intent.

The adapter only translates and delivers. discord.py parses the gateway payloads into its own
objects; pure functions here (`conversation_key`, `render_content`, `translate_message`) turn
those into `bot.message` types (tested on recorded gateway payloads fed through discord.py's
own parsers), and `DiscordAdapter` hands them to `core.handle` and posts the core's replies.

- Guild text channels and threads are each their own conversation (a thread is
  `ConversationKey(channel=<parent>, thread=<thread>)`); DMs use the DM mode. When a thread is
  new to the bot, the core asks `history` for its starter and earlier messages as context.
- Addressed: a mention of the bot user or of its managed role, or a reply to one of its
  messages; wake words are the core's business.
- Replies are Discord replies to the triggering message, split under 2,000 characters, with
  mentions disabled except (for answers) the person asked; a typing indicator runs while the
  answer is generated. With `[generation] stream` an answer is posted as it is written and
  edited as it grows (`open_stream`). Rate limits are handled by discord.py.
- Slash commands (`discord.slash_commands`) go through `core.command`, in the conversation's
  order like typed ones, and are answered only to the asker (deferred when they wait).
- `discord.api_base_url` / `discord.gateway_url` (API proxies) are applied before connecting.
- A refused Message Content intent (close code 4014) stops start-up with what to switch on.

Why one module of ~580 lines: it is all of one platform (translation tested on recorded
payloads, gateway events, slash commands, delivery), read together when Discord changes; the
platform-neutral part of streaming is adapters/streaming.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import weakref
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from adapters.common import (
    LRU,
    AdapterError,
    Lifecycle,
    SeenSet,
    split_text,
    utf16_len,
)
from adapters.streaming import EditedStream
from bot.config import BotSettings, DiscordSettings
from bot.core import Core
from bot.message import (
    ConversationKey,
    Deletion,
    Edit,
    Message,
    Reaction,
    Reply,
    Turn,
    assistant,
    clean_text,
    user,
)

log = logging.getLogger(__name__)

PLATFORM = "discord"
MAX_POST_UNITS = 1990  # Discord's limit is 2,000 (UTF-16 units); a little room for safety
THREAD_CONTEXT_MESSAGES = 20
# Discord drops an interaction not answered in 3 s: a slash command still waiting for its turn
# in the conversation after this long is deferred ("thinking…") and answered as a follow-up.
INTERACTION_DEADLINE = 2.0
INTENT_HELP = (
    "Discord refused the Message Content intent (gateway close code 4014). Open the Discord "
    "Developer Portal (https://discord.com/developers/applications) -> your application -> "
    "Bot -> Privileged Gateway Intents, switch on \"Message Content Intent\", save, and start "
    "chimein again.")
SLASH_COMMANDS = {
    "optin": "Let the bot keep your messages for improving it",
    "optout": "Stop the bot keeping your new messages (forget deletes the old ones)",
    "forget": "Delete everything the bot kept of yours",
    "status": "What the bot keeps and how it behaves here",
    "help": "What the bot does and its commands",
}
_CONVERSATION_TYPES = {discord.MessageType.default, discord.MessageType.reply,
                       discord.MessageType.chat_input_command,
                       discord.MessageType.context_menu_command}
_TOKEN = re.compile(r"<(@!?|@&|#|a?:\w+:|t:|/[\w -]+:)(\d+)(:[tTdDfFR])?>")


@dataclass(frozen=True)
class DiscordIdentity:
    bot_user_id: int
    bot_name: str = "assistant"


# -- pure translation -------------------------------------------------------------------------
def conversation_key(channel: Any) -> ConversationKey:
    """A thread is its own conversation under its parent channel; anything else is one."""
    if isinstance(channel, discord.Thread) and channel.parent_id:
        return ConversationKey(PLATFORM, str(channel.parent_id), str(channel.id))
    return ConversationKey(PLATFORM, str(channel.id))


def is_dm(channel: Any) -> bool:
    return isinstance(channel, discord.DMChannel) or (
        isinstance(channel, discord.PartialMessageable)
        and channel.type == discord.ChannelType.private)


def render_content(content: str, ident: DiscordIdentity, *,
                   users: Mapping[int, str] | None = None, roles: Mapping[int, str] | None = None,
                   channels: Mapping[int, str] | None = None,
                   bot_role_ids: Collection[int] = ()) -> tuple[str, bool]:
    """Discord markup -> what people read; returns (text, mentions the bot).

    `<@id>` -> `@Name`, the bot's own user or role mention -> `@{bot_name}`, `<@&id>` ->
    `@role`, `<#id>` -> `#channel`, `<:emoji:id>` -> `:emoji:`, `<t:unix:R>` -> a UTC time,
    `</cmd:id>` -> `/cmd`; the result is `clean_text` (no control characters, valid Unicode).
    """
    users, roles, channels = users or {}, roles or {}, channels or {}
    bot_roles = set(bot_role_ids)
    mentions_bot = False

    def sub(m: re.Match[str]) -> str:
        nonlocal mentions_bot
        kind, num = m.group(1), int(m.group(2))
        if kind in ("@", "@!"):
            if num == ident.bot_user_id:
                mentions_bot = True
                return f"@{ident.bot_name}"
            return "@" + users.get(num, "unknown-user")
        if kind == "@&":
            if num in bot_roles:
                mentions_bot = True
                return f"@{ident.bot_name}"
            return "@" + roles.get(num, "unknown-role")
        if kind == "#":
            return "#" + channels.get(num, "unknown-channel")
        if kind == "t:":
            try:
                when = dt.datetime.fromtimestamp(num, dt.UTC)
            except (OverflowError, OSError, ValueError):
                return m.group(0)
            return when.strftime("%Y-%m-%d %H:%M UTC")
        if kind.startswith("/"):
            return kind[:-1]
        return ":" + kind.rstrip(":").split(":")[1] + ":"  # custom emoji

    text = _TOKEN.sub(sub, content or "")
    return clean_text(text), mentions_bot


def translate_message(msg: discord.Message, ident: DiscordIdentity,
                      key: ConversationKey | None = None) -> Message | None:
    """A discord.py Message -> Message, or None for system messages (joins, pins, ...).

    `key` overrides the conversation when the adapter resolved a channel discord.py had not
    cached (a thread it never saw created)."""
    if msg.type not in _CONVERSATION_TYPES:
        return None
    guild = msg.guild
    bot_roles: set[int] = set()
    if guild is not None and guild.self_role is not None:
        bot_roles.add(guild.self_role.id)
    users = {u.id: u.display_name for u in msg.mentions}
    roles = {r.id: r.name for r in msg.role_mentions}
    channels: dict[int, str] = {c.id: c.name for c in msg.channel_mentions}
    if guild is not None:  # <#id> of channels discord.py did not list as mentioned
        for cid in msg.raw_channel_mentions:
            ch = guild.get_channel_or_thread(cid)
            if ch is not None:
                channels.setdefault(cid, ch.name)
    text, mentions_bot = render_content(msg.content, ident, users=users, roles=roles,
                                        channels=channels, bot_role_ids=bot_roles)
    ref = msg.reference
    resolved = ref.resolved if ref is not None else None
    if isinstance(resolved, discord.Message) and resolved.author.id == ident.bot_user_id:
        mentions_bot = True  # a reply to the bot is addressed to it
    author = msg.author
    is_self = author.id == ident.bot_user_id
    return Message(
        key=key or conversation_key(msg.channel),
        author_id=str(author.id),
        author_name=author.display_name,
        text=text,
        message_id=str(msg.id),
        ts=msg.created_at.timestamp(),
        is_bot=not is_self and (author.bot or msg.webhook_id is not None),
        is_self=is_self,
        mentions_bot=mentions_bot,
        is_dm=is_dm(msg.channel),
        attachments=tuple(a.filename for a in msg.attachments),
        reply_to=str(ref.message_id) if ref is not None and ref.message_id else None,
    )


def _split(text: str) -> list[str]:
    return split_text(text, MAX_POST_UNITS, measure=utf16_len)


class _AnswerMessages:
    """The messages of one answer (adapters.streaming.Messages): the first is a Discord reply
    to the triggering message; none may ping anyone but (for an answer) the person asked."""

    def __init__(self, adapter: DiscordAdapter, reply: Reply):
        self._adapter = adapter
        self._key = reply.key
        self._target = adapter._target(reply.key)
        self._ref = None
        if reply.in_reply_to and reply.in_reply_to.isdigit():
            self._ref = discord.MessageReference(message_id=int(reply.in_reply_to),
                                                 channel_id=self._target.id,
                                                 fail_if_not_exists=False)
        # Never let model output ping @everyone, roles or people; an answer pings only the
        # person it answers (through the reply itself).
        self._mentions = discord.AllowedMentions(everyone=False, users=False, roles=False,
                                                 replied_user=reply.addressed)
        self._sent: dict[str, discord.Message] = {}

    async def post(self, text: str, first: bool) -> str:
        sent = await self._target.send(text, reference=self._ref if first else None,
                                       allowed_mentions=self._mentions)
        self._adapter._own.put(sent.id, self._key)
        self._sent[str(sent.id)] = sent
        return str(sent.id)

    async def edit(self, message_id: str, text: str) -> None:
        self._sent[message_id] = await self._sent[message_id].edit(
            content=text, allowed_mentions=self._mentions)

    async def delete(self, message_id: str) -> None:
        self._adapter._deleted.add(int(message_id))  # its MESSAGE_DELETE is no news
        await self._sent[message_id].delete()
        del self._sent[message_id]


# -- the adapter ------------------------------------------------------------------------------
class DiscordAdapter(Lifecycle):
    """Discord <-> core. `async with DiscordAdapter(...)` or `await start()` / `await close()`."""

    platform = PLATFORM

    def __init__(self, core: Core, settings: DiscordSettings, bot: BotSettings, *, token: str,
                 guild_ready_timeout: float = 2.0):
        self.core = core
        self.settings = settings
        self.bot = bot
        self._token = token
        # The bot never joins voice: don't warn that voice libraries are missing.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        intents = discord.Intents.default()  # guilds, messages, reactions, DMs...
        intents.message_content = True  # privileged: without it message text is empty
        self.client = discord.Client(intents=intents, guild_ready_timeout=guild_ready_timeout,
                                     allowed_mentions=discord.AllowedMentions.none())
        for name in ("on_ready", "on_resumed", "on_message", "on_raw_message_edit",
                     "on_raw_message_delete", "on_raw_reaction_add", "on_raw_reaction_remove"):
            setattr(self.client, name, getattr(self, "_" + name))
        self.tree: app_commands.CommandTree[discord.Client] | None = None
        if settings.slash_commands:
            self.tree = app_commands.CommandTree(self.client)
            self._add_slash_commands(self.tree)
        self.identity = DiscordIdentity(0, bot.name)
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._saved: tuple[str, yarl.URL] | None = None
        self._seen = SeenSet()
        self._own: LRU = LRU(5000)  # ids of the bot's posts -> conversation
        self._deleted = SeenSet(1000)  # ids of partial answers the bot took down itself
        self._threads: LRU = LRU(5000)  # thread id -> parent id, for uncached channels
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary())
        self.duplicates = 0
        self.handled = 0
        self.reconnects = 0

    # -- lifecycle ------------------------------------------------------------------------
    def _apply_urls(self) -> None:
        """discord.py reads its REST base from `Route.BASE` and its gateway from
        `DiscordWebSocket.DEFAULT_GATEWAY` (it does not ask /gateway/bot for one shard): set
        both before logging in; `close()` puts them back."""
        self._saved = (discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
        if self.settings.api_base_url:
            base = self.settings.api_base_url.rstrip("/")
            if not re.search(r"/v\d+$", base):
                base += f"/v{discord.http.INTERNAL_API_VERSION}"
            discord.http.Route.BASE = base
        if self.settings.gateway_url:
            DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.settings.gateway_url)

    def _restore_urls(self) -> None:
        if self._saved is not None:
            discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = self._saved
            self._saved = None

    async def start(self, timeout: float = 60.0) -> None:
        """Log in, connect, and return once the gateway says READY (or raise AdapterError)."""
        self._apply_urls()
        try:
            await self.client.login(self._token)
        except discord.LoginFailure:
            await self.close()
            raise AdapterError("Discord rejected DISCORD_TOKEN (401): copy the token from the "
                               "Developer Portal -> your application -> Bot -> Reset Token"
                               ) from None
        except BaseException:
            await self.close()
            raise
        if self.settings.api_base_url and not self.settings.gateway_url:
            # A proxied API serves its own gateway address: ask it instead of Discord's.
            try:
                _, url, _ = await self.client.http.get_bot_gateway()
            except discord.GatewayNotFound:
                await self.close()
                raise AdapterError(f"{self.settings.api_base_url} did not answer /gateway/bot: "
                                   "set discord.gateway_url to the proxy's gateway") from None
            DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
        user_ = self.client.user
        self.identity = DiscordIdentity(user_.id if user_ else 0, self.bot.name)
        self._task = asyncio.create_task(self.client.connect(reconnect=True),
                                         name="chimein:discord")
        ready = asyncio.create_task(self._ready.wait())
        try:
            await asyncio.wait({ready, self._task}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if self._task.done():
            await self._raise_failure()
        if not self._ready.is_set():
            await self.close()
            raise AdapterError(f"Discord gateway did not become ready in {timeout:.0f} s")
        log.info("discord: connected as %s (%s) in %d guild(s)", user_,
                 self.identity.bot_user_id, len(self.client.guilds))
        if self.tree is not None:
            try:
                synced = await self.tree.sync()
                log.info("discord: %d slash command(s) registered", len(synced))
            except discord.HTTPException as e:
                log.warning("discord: slash commands not registered (%s); the text commands "
                            "still work", e)

    async def _raise_failure(self) -> None:
        task = self._task
        exc = task.exception() if task is not None and not task.cancelled() else None
        await self.close()
        if isinstance(exc, discord.PrivilegedIntentsRequired):
            raise AdapterError(INTENT_HELP) from None
        if isinstance(exc, discord.ConnectionClosed) and exc.code == 4004:
            raise AdapterError("Discord rejected DISCORD_TOKEN on the gateway (4004)") from None
        if exc is not None:
            raise AdapterError(f"Discord connection failed: {exc!r}") from exc

    async def wait_closed(self) -> None:
        """Returns when the connection ends for good; raises AdapterError if it failed."""
        task = self._task
        if task is None:
            return
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            await self._raise_failure()

    async def close(self) -> None:
        try:
            if not self.client.is_closed():
                await self.client.close()
            if self._task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(self._task), 10)
        finally:
            self._restore_urls()

    # -- gateway events -------------------------------------------------------------------
    async def _on_ready(self) -> None:
        self._ready.set()

    async def _on_resumed(self) -> None:
        self.reconnects += 1
        log.info("discord: gateway session resumed")

    def _lock(self, channel_id: int) -> asyncio.Lock:
        lock = self._locks.get(str(channel_id))
        if lock is None:
            lock = self._locks[str(channel_id)] = asyncio.Lock()
        return lock

    async def _key_for(self, channel: Any) -> ConversationKey:
        """conversation_key, resolving a channel discord.py does not know (an uncached thread)
        through the API once."""
        if not isinstance(channel, discord.PartialMessageable) or channel.guild_id is None:
            return conversation_key(channel)
        parent = self._threads.get(channel.id)
        if parent is None:
            try:
                full = await self.client.fetch_channel(channel.id)
                parent = getattr(full, "parent_id", None) if isinstance(full, discord.Thread) \
                    else 0
            except discord.HTTPException:
                parent = 0
            self._threads.put(channel.id, parent)
        if parent:
            return ConversationKey(PLATFORM, str(parent), str(channel.id))
        return ConversationKey(PLATFORM, str(channel.id))

    async def _on_message(self, message: discord.Message) -> None:
        # A RESUME replays what was missed; the id makes a replay (or a duplicate) harmless.
        if not self._seen.add(message.id):
            self.duplicates += 1
            return
        try:
            async with self._lock(message.channel.id):
                key = await self._key_for(message.channel)
                ev = translate_message(message, self.identity, key)
                if ev is None or ev.is_self:
                    return
                self.handled += 1
                await self.core.handle(ev)
        except BaseException:
            self._seen.discard(message.id)
            raise

    async def history(self, key: ConversationKey, before: Message) -> list[Turn]:
        """A thread new to the bot: the message it was started from and the thread's latest
        messages before `before` become context for the model. The core calls this once, when
        it makes the thread's session."""
        before_id = before.message_id or ""
        if key.thread is None or not key.thread.isdigit() or not before_id.isdigit():
            return []
        thread = self._target(key)
        earlier: dict[int, discord.Message] = {}
        try:
            parent = self.client.get_channel(int(key.channel))
            if isinstance(parent, discord.TextChannel):
                with contextlib.suppress(discord.NotFound):
                    # A thread started from a message has that message's id (a forum post's
                    # first message is inside the thread and comes with its history).
                    starter = await parent.fetch_message(int(key.thread))
                    earlier[starter.id] = starter
            async for m in thread.history(limit=THREAD_CONTEXT_MESSAGES,
                                          before=discord.Object(int(before_id))):
                earlier[m.id] = m
        except (discord.Forbidden, discord.HTTPException) as e:
            log.info("discord: thread context for %s unavailable (%s)", key, e)
        turns: list[Turn] = []
        for m in sorted(earlier.values(), key=lambda m: m.id)[-THREAD_CONTEXT_MESSAGES:]:
            t = translate_message(m, self.identity, key)
            if t is not None:
                turns.append(assistant(t.text) if t.is_self else user(t.author_name, t.text))
        return turns

    async def _on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        msg = payload.message
        if msg.edited_at is None:
            return  # an embed was resolved: no new text
        if payload.cached_message is not None and payload.cached_message.content == msg.content:
            return
        # Under the channel's lock, like new messages: an edit or deletion must not overtake
        # the message it is about while that one still awaits a thread lookup.
        async with self._lock(payload.channel_id):
            key = await self._key_for(msg.channel)
            ev = translate_message(msg, self.identity, key)
            if ev is None or ev.is_self:
                return
            await self.core.handle(Edit(key, str(msg.id), str(msg.author.id), ev.text))

    async def _on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        if payload.message_id in self._deleted:
            return  # a streamed answer's message the bot replaced: nothing the core knew
        channel = self.client.get_channel(payload.channel_id) or \
            self.client.get_partial_messageable(payload.channel_id, guild_id=payload.guild_id)
        async with self._lock(payload.channel_id):
            key = await self._key_for(channel)
            await self.core.handle(Deletion(key, str(payload.message_id)))

    async def _reaction(self, payload: discord.RawReactionActionEvent, added: bool) -> None:
        if payload.user_id == self.identity.bot_user_id:
            return
        own = self._own.get(payload.message_id)
        if own is None and payload.message_author_id != self.identity.bot_user_id:
            return  # feedback is reactions on the bot's own messages only
        async with self._lock(payload.channel_id):
            if own is None:
                channel = self.client.get_channel(payload.channel_id) or \
                    self.client.get_partial_messageable(payload.channel_id,
                                                        guild_id=payload.guild_id)
                own = await self._key_for(channel)
            await self.core.handle(Reaction(own, str(payload.message_id), str(payload.user_id),
                                            str(payload.emoji), added=added))

    async def _on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reaction(payload, True)

    async def _on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reaction(payload, False)

    # -- slash commands -------------------------------------------------------------------
    def _add_slash_commands(self, tree: app_commands.CommandTree[discord.Client]) -> None:
        def make(name: str) -> Any:
            async def callback(interaction: discord.Interaction) -> None:
                await self._run_command(interaction, name)
            return callback

        for name, description in SLASH_COMMANDS.items():
            tree.add_command(app_commands.Command(name=name, description=description,
                                                  callback=make(name)))

        async def chimein(interaction: discord.Interaction, command: str) -> None:
            await self._run_command(interaction, command)

        tree.add_command(app_commands.Command(
            name="chimein", description="Run a chimein command (admins: logging, mode, ...)",
            callback=chimein))

    async def _run_command(self, interaction: discord.Interaction, text: str) -> None:
        """Slash commands go through the core like typed ones (in the conversation's order);
        the answer is visible only to the person who asked."""
        commands = self.core.commands
        if commands is None:
            await interaction.response.send_message(
                "Commands need the message store: set store.path in the config.",
                ephemeral=True)
            return
        channel = interaction.channel
        key = conversation_key(channel) if channel is not None else ConversationKey(
            PLATFORM, str(interaction.channel_id))
        who = interaction.user
        msg = Message(key, str(who.id), who.display_name, text, message_id=str(interaction.id),
                      is_dm=channel is not None and is_dm(channel), mentions_bot=True)
        task = asyncio.ensure_future(self.core.command(msg, text))
        done, _ = await asyncio.wait({task}, timeout=INTERACTION_DEADLINE)
        if not done:  # waiting its turn behind an answer: Discord wants a reply within 3 s
            await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            answer = await task
        except Exception:
            log.exception("discord: command %r failed", text)
            answer = None
        if answer is None:  # the core's error boundary answers None for a failed command
            answer = "Sorry, that command failed on my side." if commands.recognises(
                msg, text) else f"Unknown command {text!r}; try /help."
        if interaction.response.is_done():
            await interaction.followup.send(answer, ephemeral=True)
        else:
            await interaction.response.send_message(answer, ephemeral=True)

    # -- delivery -------------------------------------------------------------------------
    def _target(self, key: ConversationKey) -> Any:
        cid = int(key.thread or key.channel)
        return self.client.get_channel(cid) or self.client.get_partial_messageable(cid)

    async def send(self, reply: Reply) -> str | None:
        """Post a reply as a Discord reply to the triggering message (split if long);
        returns the id of its first part."""
        out = _AnswerMessages(self, reply)
        first: str | None = None
        for part in _split(reply.text):
            first = first or await out.post(part, first is None)
        return first

    def open_stream(self, reply: Reply) -> EditedStream:
        """The answer as it is written: its first part posted as the reply (like `send`), then
        edited as it grows (at most every generation.stream_interval_ms), continued in a new
        message past 2,000 characters. Rate limits are discord.py's business."""
        return EditedStream(_AnswerMessages(self, reply), _split)

    @contextlib.asynccontextmanager
    async def typing(self, key: ConversationKey) -> AsyncIterator[None]:
        """"assistant is typing…" while the answer is generated (renewed every 5 s by
        discord.py); a channel that refuses it just gets no indicator."""
        cm = self._target(key).typing()
        try:
            await cm.__aenter__()
        except discord.HTTPException as e:
            log.debug("discord: no typing indicator in %s (%s)", key, e)
            yield
            return
        try:
            yield
        finally:
            await cm.__aexit__(None, None, None)
