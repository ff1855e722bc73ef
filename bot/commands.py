"""Platform-neutral commands addressed to the bot: consent for everyone, settings for admins.

Everyone: `optin`, `optout`, `forget` (or `forget me`), `status`, `help`.
Admins (`bot.admins`, written `platform:user_id`, e.g. "slack:U012ABC", "console:admin"):
`logging on|off`, `mode mention|semi-active|always`, `threshold X` (0..1), `retrain`, `reload`.

The core passes a human's addressed message with the address stripped ("@assistant optin" ->
"optin"). A command is recognised only when the command word is the first word and the whole
message is that command (so "assistant, help me fix the build" goes to the model, not to
`help`), only from a human (never the bot's own text or another bot's), and never from quoted
text ("> @assistant logging off"). A recognised command is not conversation: the core asks
`recognises` before it stores a message, so a command is never stored (and the model never
sees it either).

`retrain` and `reload` call the optional async callbacks `on_retrain` / `on_reload`
(`async def cb(msg: Message) -> str | None`; the returned text is the answer), which a running
bot's admin services (adapters/admin.py) provide; unset, the answer says so.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bot.config import Settings
from bot.message import ConversationKey, Message
from bot.policy import MODES, Policy

log = logging.getLogger(__name__)

ADMIN_COMMANDS = ("logging", "mode", "threshold", "retrain", "reload")

# A quote, a code block or a forwarded snippet: someone is showing text, not saying it.
_QUOTED = re.compile(r"^\s*(?:>|&gt;|\|>|[\"“”„«»「『']|`)")
_ALIASES = {"opt-in": "optin", "opt_in": "optin", "optin": "optin", "opt-out": "optout",
            "opt_out": "optout", "optout": "optout", "commands": "help"}
_ON = {"on": True, "enable": True, "enabled": True, "true": True, "yes": True,
       "off": False, "disable": False, "disabled": False, "false": False, "no": False}

Callback = Callable[[Message], Awaitable[str | None]]
# posts a notice that is not conversation: (conversation, text, the message it follows)
Announce = Callable[[ConversationKey, str, Message], Awaitable[object]]


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


class CommandHandler:
    """Implements bot.core.Commands on top of the store and the policy."""

    def __init__(self, settings: Settings, store: Any, policy: Policy, *,
                 on_retrain: Callback | None = None, on_reload: Callback | None = None):
        self.settings = settings
        self.store = store
        self.policy = policy
        self.admins = frozenset(a.strip() for a in settings.bot.admins if a.strip())
        self.name = settings.bot.name or "assistant"
        self.on_retrain = on_retrain
        self.on_reload = on_reload
        self._followups: set[asyncio.Task[None]] = set()  # "removed from disk now" notices
        wake = [w for w in (*settings.bot.wake_words, self.name) if w]
        words = "|".join(re.escape(w) for w in sorted(set(wake), key=len, reverse=True))
        # "optin, assistant?" -> "optin": a trailing address is not part of the command.
        self._trailing = re.compile(rf"[\s,，:：]*@?(?:{words})\s*[.!?。！？]*\s*$",
                                    re.IGNORECASE) if words else None
        self._restore()

    def _restore(self) -> None:
        """Admins' mode/threshold changes persisted in the store survive a restart."""
        overrides = getattr(self.store, "channel_overrides", None)
        if overrides is None:
            return
        for (platform, channel), (mode, threshold) in overrides().items():
            try:
                self.policy.set_channel(ConversationKey(platform, channel), mode=mode,
                                        threshold=threshold)
            except ValueError as e:
                log.warning("ignoring the stored setting for %s:%s: %s", platform, channel, e)

    # -- parsing --------------------------------------------------------------------------
    def parse(self, text: str) -> tuple[str, list[str]] | None:
        """(command, arguments) if `text` (address already stripped) is a command, else None."""
        if not text or _QUOTED.match(text):
            return None
        line = text.strip()
        if "\n" in line or len(line) > 100:
            return None  # a command is one short line; anything longer is conversation
        if self._trailing is not None:
            line = self._trailing.sub("", line)
        line = re.sub(r"[.!?。！？]+$", "", line).strip()
        words = line.split()
        if not words:
            return None
        word = words[0].lower().lstrip("/")
        args = [w.lower() for w in words[1:]]
        if word == "opt" and args[:1] in (["in"], ["out"]):
            word, args = "opt" + args[0], args[1:]
        word = _ALIASES.get(word, word)
        if word in ("optin", "optout", "status", "help", "retrain", "reload"):
            return (word, []) if not args else None
        if word == "forget":
            return (word, []) if args in ([], ["me"]) else None
        if word in ("logging", "mode", "threshold"):
            # One value at most: "mode of transport?" is a question, not a command.
            return (word, args) if len(args) <= 1 else None
        return None

    def is_admin(self, msg: Message) -> bool:
        return f"{msg.key.platform}:{msg.author_id}" in self.admins

    # -- the seam -------------------------------------------------------------------------
    def recognises(self, msg: Message, text: str) -> bool:
        """Whether `text` (address stripped) from `msg` is a command: the core asks before it
        stores anything, so a command never enters the store (it is not conversation)."""
        return not (msg.is_self or msg.is_bot or _QUOTED.match(msg.text or "")) \
            and self.parse(text) is not None

    async def handle(self, msg: Message, text: str, announce: Announce | None = None
                     ) -> str | None:
        """The answer if `text` is a command from a human, else None (the model handles it).
        `announce(key, text, trigger)` posts a later notice (the end of a pending forget)."""
        if not self.recognises(msg, text):
            return None
        parsed = self.parse(text)
        assert parsed is not None  # recognises() said so
        word, args = parsed
        if word in ADMIN_COMMANDS and not self.is_admin(msg):
            log.info("refused admin command %r from %s:%s", word, msg.key.platform,
                     msg.author_id)
            return (f"Sorry, only this bot's admins can use `{word}`. Ask one of them; "
                    f"`@{self.name} help` lists what you can do.")
        if word == "forget":
            return await self._cmd_forget(msg, args, announce)
        return await getattr(self, f"_cmd_{word}")(msg, args)

    # -- everyone -------------------------------------------------------------------------
    async def _cmd_optin(self, msg: Message, args: list[str]) -> str:
        await self.store.set_consent(msg.key.platform, msg.author_id, True)
        here = await self.store.channel_logging(msg.key.platform, msg.key.channel)
        where = ("Logging is on in this channel, so that starts now." if here else
                 "Logging is off in this channel, so nothing of yours is kept here until an "
                 "admin turns it on.")
        return (f"You're opted in: I'll keep your messages in channels where logging is on, to "
                f"learn when to speak. {where} `optout` stops it, `forget` deletes what I "
                f"kept, `status` shows it.")

    async def _cmd_optout(self, msg: Message, args: list[str]) -> str:
        await self.store.set_consent(msg.key.platform, msg.author_id, False)
        st = await self.store.user_status(msg.key.platform, msg.author_id)
        kept = (f"The {st.messages} message(s) I already kept stay (and are not exported for "
                f"training while you're opted out) until you say `forget`."
                if st.messages else "I have nothing of yours stored.")
        return f"You're opted out: I keep nothing new of yours. {kept}"

    async def _cmd_forget(self, msg: Message, args: list[str],
                          announce: Announce | None = None) -> str:
        r = await self.store.forget(msg.author_id, msg.key.platform)
        if not r.total and not r.consent_removed and not r.export_errors:
            return "I had nothing of yours stored, so there was nothing to delete."
        parts = [f"{r.messages} message(s)", f"{r.reactions} reaction(s)"]
        if r.bot_turns:
            parts.append(f"{r.bot_turns} of my answers to you")
        # "Done" only once the bytes are gone too (bot.store, "erasure on disk").
        text = ("Done: I deleted " if r.on_disk else "I deleted ") + ", ".join(parts)
        if r.export_segments:
            text += (f", and removed {r.export_segments} conversation(s) from "
                     f"{len(r.export_files)} export file(s) not yet used for training")
        text += ". You're no longer opted in; say `optin` if you want to start again."
        if not r.on_disk:
            # Gone from what I keep, not yet from the file's bytes: the store finishes that in
            # the background, and the person hears when.
            text += (" The old copy in my storage file is overwritten as soon as the file is "
                     "free (another program is reading it right now); I'll say here when that "
                     "is done.")
            self._follow_up(msg, announce)
        if r.export_errors:
            log.error("forget %s:%s: export files not cleaned: %s", msg.key.platform,
                      msg.author_id, "; ".join(r.export_errors))
            text += (f" {len(r.export_errors)} export file(s) could not be cleaned; the admins "
                     "have been told in the log.")
        return text

    def _follow_up(self, msg: Message, announce: Announce | None) -> None:
        """Tell the person when a pending removal from disk has finished."""
        wait = getattr(self.store, "wait_erased", None)
        if wait is None or announce is None:
            return

        async def notice() -> None:
            if await wait():
                await announce(msg.key, "Your data is now also gone from my storage file on "
                               "disk.", msg)
            else:
                log.warning("forget %s:%s: removal from disk still pending at shutdown; the "
                            "next start finishes it", msg.key.platform, msg.author_id)

        task = asyncio.create_task(notice(), name="chimein:forget-followup")
        self._followups.add(task)
        task.add_done_callback(self._followups.discard)

    async def _cmd_status(self, msg: Message, args: list[str]) -> str:
        st = await self.store.user_status(msg.key.platform, msg.author_id)
        here = await self.store.channel_logging(msg.key.platform, msg.key.channel)
        consent = {True: "You're opted in.", False: "You're opted out.",
                   None: "You haven't opted in, so nothing you write is kept."}[st.opted_in]
        if st.messages:
            where = ", ".join(f"{n} in {ch}" for ch, n in sorted(st.channels.items()))
            kept = (f"I keep {st.messages} message(s) of yours ({where}; from "
                    f"{_when(st.first_ts)} to {_when(st.last_ts)})")
            kept += f" and {st.reactions} reaction(s)." if st.reactions else "."
        else:
            kept = "I keep no messages of yours."
        mode = self.policy.mode(msg.key, msg.is_dm)
        threshold = self.policy.threshold(msg.key)
        return (f"{consent} {kept} In this channel logging is {'on' if here else 'off'}, the "
                f"mode is {mode} and the threshold {threshold:g}.")

    async def _cmd_help(self, msg: Message, args: list[str]) -> str:
        at = f"@{self.name}"
        text = (f"I answer when you address me ({at} ...) and otherwise speak only when I have "
                f"something short and useful. I keep your messages only if you opt in and an "
                f"admin has turned logging on in the channel. Commands: `{at} optin` (let me "
                f"keep your messages to learn from), `{at} optout` (keep nothing new), "
                f"`{at} forget` (delete everything of yours), `{at} status` (what I keep), "
                f"`{at} help`.")
        if self.is_admin(msg):
            text += (f" Admin: `{at} logging on|off`, `{at} mode mention|semi-active|always`, "
                     f"`{at} threshold 0.5`, `{at} retrain`, `{at} reload`.")
        return text

    # -- admins ---------------------------------------------------------------------------
    def _admin_id(self, msg: Message) -> str:
        return f"{msg.key.platform}:{msg.author_id}"

    async def _cmd_logging(self, msg: Message, args: list[str]) -> str:
        if not args:
            on = await self.store.channel_logging(msg.key.platform, msg.key.channel)
            return (f"Logging is {'on' if on else 'off'} in this channel. "
                    f"`@{self.name} logging on|off` changes it.")
        if args[0] not in _ON:
            return "Say `logging on` or `logging off`."
        on = _ON[args[0]]
        await self.store.set_channel_logging(msg.key.platform, msg.key.channel, on,
                                             by=self._admin_id(msg))
        log.info("%s turned logging %s in %s:%s", self._admin_id(msg), "on" if on else "off",
                 msg.key.platform, msg.key.channel)
        if on:
            return ("Logging is on in this channel: I keep the messages of people who opted in "
                    f"(`@{self.name} optin`), nobody else's.")
        return "Logging is off in this channel: I keep nothing new here."

    async def _cmd_mode(self, msg: Message, args: list[str]) -> str:
        if not args:
            return (f"The mode here is {self.policy.mode(msg.key, msg.is_dm)}; choose one of "
                    f"{', '.join(MODES)}.")
        mode = args[0]
        if mode not in MODES:
            return f"Unknown mode {mode!r}; choose one of {', '.join(MODES)}."
        self.policy.set_channel(msg.key, mode=mode)
        await self.store.set_channel_policy(msg.key.platform, msg.key.channel, mode=mode,
                                            by=self._admin_id(msg))
        what = {"mention": "I answer only when addressed",
                "semi-active": "I answer when addressed and chime in when I have something "
                               "useful",
                "always": "I answer every message"}[mode]
        return f"Mode for this channel is now {mode}: {what}."

    async def _cmd_threshold(self, msg: Message, args: list[str]) -> str:
        if not args:
            return (f"The threshold here is {self.policy.threshold(msg.key):g} (I stay silent "
                    "when p(silence) is at least that; lower = quieter).")
        try:
            value = float(args[0].replace(",", "."))
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:  # also false for nan
            return f"The threshold must be a number from 0 to 1, not {args[0]!r}."
        self.policy.set_channel(msg.key, threshold=value)
        await self.store.set_channel_policy(msg.key.platform, msg.key.channel, threshold=value,
                                            by=self._admin_id(msg))
        return (f"Threshold for this channel is now {value:g}: I stay silent when p(silence) is "
                f"at least {value:g}.")

    async def _cmd_retrain(self, msg: Message, args: list[str]) -> str:
        return await self._callback(
            self.on_retrain, "Retraining", msg,
            "Retraining started; I'll switch to the new model if it passes the checks.",
            "Retraining from chat is not configured on this bot; run `chimein retrain` on the "
            "server.")

    async def _cmd_reload(self, msg: Message, args: list[str]) -> str:
        return await self._callback(
            self.on_reload, "Reloading the model", msg, "Reloading the model.",
            "Reloading from chat is not configured on this bot; restart it, or set "
            "model.registry_dir so that new versions are picked up by themselves.")

    async def _callback(self, cb: Callback | None, what: str, msg: Message, default: str,
                        unset: str) -> str:
        if cb is None:
            return unset
        log.info("%s asked by %s", what.lower(), self._admin_id(msg))
        try:
            answer = await cb(msg)
        except Exception as e:
            log.exception("%s failed", what.lower())
            return f"{what} failed: {e}"
        return answer or default
