"""Who is addressing the bot, which mode a channel is in, thresholds and cooldowns.

Addressed = a platform mention of the bot, or a wake word used as an address ("assistant, ...",
"hey assistant", "@assistant", "助手，...", "..., assistant?"), not the word in passing ("my
assistant manager", "Google Assistant"). Addressed messages are always answered.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bot.config import PolicySettings
from bot.message import ConversationKey, Message

MODES = ("mention", "semi-active", "always")

_GREETING = r"(?:hey|hi|hello|ok|okay|yo|oi|dear|please|so|well|and|but|嘿|喂|哈喽|你好|请问|请)"
# Words that, right after a sentence-initial wake word and a space, make it an address:
# "assistant what's ...", "assistant can you ...", "assistant, ..." is covered by punctuation.
_ADDRESS_NEXT = (r"(?:what|what's|whats|how|why|when|where|who|which|whose|can|could|would|"
                 r"will|should|shall|do|does|did|is|are|was|were|have|has|please|pls|tell|give|"
                 r"didn't|doesn't|isn't|wasn't|aren't|won't|can't|couldn't|wouldn't|"
                 r"show|help|translate|convert|summari[sz]e|remind|explain|find|check|list|"
                 r"write|calculate|compute|define|i|we|you|quick|any|any1|thoughts|thanks|"
                 r"thank)\b")
_ZH_NEXT = r"(?:帮|请|给|你|能|可以|可不可以|说|查|算|告诉|问|翻译|解释|看|来|在吗|在不在|知道|怎么|什么|多少|几|是不是)"
_PUNCT = r"[,，:：;；!！?？。.、~\-—]"
_ZH_ASK = r"(?:问下|问一下|问问|请教|召唤|叫)"


def _wake_patterns(word: str) -> list[re.Pattern[str]]:
    w = re.escape(word)
    cjk = bool(re.search(r"[\u3000-\u9fff\uac00-\ud7af]", word))
    # Latin words need word boundaries; CJK words have none.
    b0, b1 = ("", "") if cjk else (r"(?<![\w@])", r"(?![\w'’-])")
    pats = [
        rf"@{w}{b1}",  # @assistant anywhere
        rf"^\s*(?:{_GREETING}\s*[,，]?\s*)?{b0}{w}{b1}\s*{_PUNCT}",  # "assistant, ..." / "hey assistant: ..."
        rf"^\s*{_GREETING}\s*[,，]?\s*{b0}{w}{b1}",  # "hey assistant ..." / "ok assistant what's"
        rf"^\s*{b0}{w}{b1}\s+{_ADDRESS_NEXT}",  # "assistant what's ..."
        # a new sentence that is an address: "ok, real question. assistant, how ..."
        rf"[.!?。！？…]\s*(?:{_GREETING}\s*[,，]?\s*)?{b0}{w}{b1}\s*{_PUNCT}",
        rf"[.!?。！？…]\s*{b0}{w}{b1}\s+{_ADDRESS_NEXT}",  # "... right? assistant what's 60?"
        rf"^\s*{b0}{w}{b1}\s+and\b.*[?？]\s*$",  # a follow-up: "assistant and the integral?"
        rf"{_PUNCT}\s*(?:{_GREETING}\s+)?{b0}{w}{b1}\s*[?？!！.。]*\s*$",  # "..., assistant?"
        rf"(?:^|[.!?。！？…]\s*)(?:hey|hi|hello|ok|okay|yo)\s+{b0}{w}{b1}",  # "... hey assistant"
        rf"(?<!\w)(?:hey|hi|hello|yo)\s+{b0}{w}{b1}\s*{_PUNCT}",  # "so... hey assistant, q"
        rf"(?<!\w)(?:thanks|thank you|thx|ty|cheers)\s*[,，]?\s*{b0}{w}{b1}\s*[?？!！.。]*\s*$",
    ]
    if cjk:
        pats += [
            rf"^\s*(?:{_GREETING}\s*)?{w}\s*{_ZH_NEXT}",  # "助手帮我..." / "嘿助手你..."
            rf"{_ZH_ASK}\s*{w}",  # "问下助手：..."
        ]
    return [re.compile(p, re.IGNORECASE) for p in pats]


class Addressing:
    """Decides whether a message addresses the bot."""

    def __init__(self, wake_words: Iterable[str]):
        words = sorted({w.strip() for w in wake_words if w and w.strip()}, key=len, reverse=True)
        self.wake_words = words
        self._patterns = [p for w in words for p in _wake_patterns(w)]
        alts = "|".join(re.escape(w) for w in words)
        self._leading = re.compile(rf"^\s*@?(?:{alts})(?![\w'’-])", re.IGNORECASE) \
            if words else None

    def is_addressed(self, text: str, mentions_bot: bool = False) -> bool:
        if mentions_bot:
            return True
        head = text[:2000]  # an address is at the start or the end: never scan megabytes
        tail = text[-300:] if len(text) > 2000 else ""
        return any(p.search(head) or (tail and p.search(tail)) for p in self._patterns)

    def leads_with_wake_word(self, text: str) -> bool:
        """The message starts with a wake word ("assistant optin"), address or not: where the
        rest is exactly a command, it is one (the command parser decides)."""
        return bool(self._leading and self._leading.match(text))

    def strip_address(self, text: str) -> str:
        """The message without its leading address: "assistant, optin" -> "optin"."""
        for w in self.wake_words:
            m = re.match(rf"^\s*(?:{_GREETING}\s*[,，]?\s*)?@?{re.escape(w)}\s*{_PUNCT}?\s*",
                         text, re.IGNORECASE)
            if m:
                return text[m.end():].strip()
        return text.strip()


@dataclass
class ChannelState:
    mode: str | None = None
    threshold: float | None = None


class Policy:
    """Channel modes, thresholds and the chime-in cooldown, from config plus admin changes."""

    def __init__(self, settings: PolicySettings, wake_words: Iterable[str],
                 clock: Callable[[], float] | None = None):
        self.settings = settings
        self.addressing = Addressing(wake_words)
        self._overrides: dict[str, ChannelState] = defaultdict(ChannelState)
        self._chimeins: dict[str, deque[float]] = defaultdict(deque)
        self._clock: Callable[[], float] = clock or time.monotonic

    @staticmethod
    def channel_id(key: ConversationKey) -> str:
        return f"{key.platform}:{key.channel}"

    def set_channel(self, key: ConversationKey, *, mode: str | None = None,
                    threshold: float | None = None) -> None:
        """An admin's runtime change (mode / threshold) for a channel and its threads."""
        st = self._overrides[self.channel_id(key)]
        if mode is not None:
            if mode not in MODES:
                raise ValueError(f"mode must be one of {', '.join(MODES)}")
            st.mode = mode
        if threshold is not None:
            if not 0.0 <= threshold <= 1.0:
                raise ValueError("threshold must be between 0 and 1")
            st.threshold = threshold

    def mode(self, key: ConversationKey, is_dm: bool = False) -> str:
        cid = self.channel_id(key)
        over = self._overrides.get(cid)
        if over and over.mode:
            return over.mode
        conf = self.settings.channels.get(cid)
        if conf and conf.mode:
            return conf.mode
        return self.settings.dm_mode if is_dm else self.settings.mode

    def threshold(self, key: ConversationKey) -> float:
        cid = self.channel_id(key)
        over = self._overrides.get(cid)
        if over and over.threshold is not None:
            return over.threshold
        conf = self.settings.channels.get(cid)
        if conf and conf.threshold is not None:
            return conf.threshold
        return self.settings.threshold

    def is_addressed(self, msg: Message) -> bool:
        return self.addressing.is_addressed(msg.text, msg.mentions_bot)

    # -- cooldown on unprompted chime-ins ------------------------------------------------
    def allow_chimein(self, key: ConversationKey) -> bool:
        cap = self.settings.cooldown_max_chimeins
        window = self.settings.cooldown_window_seconds
        if window <= 0:
            return True
        q = self._chimeins[self.channel_id(key)]
        now = self._clock()
        while q and now - q[0] > window:
            q.popleft()
        return len(q) < cap

    def record_chimein(self, key: ConversationKey) -> None:
        self._chimeins[self.channel_id(key)].append(self._clock())
