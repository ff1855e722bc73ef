"""The privacy memory: what a bot turn must not repeat. Pure: no SQLite, no asyncio.

A bot turn may carry what others wrote (an answer quotes, translates or sums up), so its text
is kept only if it repeats no message the model may have seen that was not kept (the package
docstring, "unkept"). `quotes` says whether an answer repeats a text; `PrivacyMemory` holds, per
conversation and in this process only, the fingerprints of the texts not kept; export applies
the same `QuoteIndex` again at export time.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from bot.message import ConversationKey

log = logging.getLogger(__name__)

# -- quotes ------------------------------------------------------------------------------------
# A bot turn may repeat what someone wrote. Text is compared as letters and digits only,
# case-folded; a shared run of QUOTE_CHARS such characters counts as a quote (a message shorter
# than that counts if it appears whole and has at least QUOTE_MIN_CHARS).
QUOTE_CHARS = 12
QUOTE_MIN_CHARS = 6
_NON_WORD = re.compile(r"[\W_]+")
# Of each message: twice what the model sees of one (runtime.max_message_chars, 8,000 by
# default; casefolding may lengthen text).
FINGERPRINT_CHARS = 16_000


def fingerprint(text: str) -> str:
    """What quotes are compared on: letters and digits, case-folded, FINGERPRINT_CHARS at most."""
    return _NON_WORD.sub("", text.casefold())[:FINGERPRINT_CHARS]


def _grams(norm: str) -> set[str]:
    return {norm[i:i + QUOTE_CHARS] for i in range(max(0, len(norm) - QUOTE_CHARS + 1))}


class QuoteIndex:
    """Texts an answer must not repeat, indexed once (export checks every bot turn of a
    conversation against everything before it)."""

    def __init__(self) -> None:
        self.grams: set[str] = set()
        self.short: list[str] = []

    def add(self, text: str) -> None:
        norm = fingerprint(text)
        if len(norm) >= QUOTE_CHARS:
            self.grams |= _grams(norm)
        elif len(norm) >= QUOTE_MIN_CHARS:
            self.short.append(norm)

    def repeated_in(self, answer: str) -> bool:
        a = fingerprint(answer)
        if self.grams and not self.grams.isdisjoint(_grams(a)):
            return True
        return any(s in a for s in self.short)


def quotes(answer: str, others: Iterable[str]) -> bool:
    """Whether `answer` repeats a stretch of any of `others` (see QUOTE_CHARS)."""
    index = QuoteIndex()
    for other in others:
        index.add(other)
    return index.repeated_in(answer)


# -- unkept texts ------------------------------------------------------------------------------
# What a bot turn must not repeat (see the package docstring, "unkept"). Entries are never
# dropped while they may still be in the model's context: a conversation whose memory would
# pass UNKEPT_CHARS (or that is evicted to keep all of them under UNKEPT_TOTAL_CHARS) is marked
# "overflowed" instead, and its bot turns are withheld until the process restarts (the model's
# context is in memory too, so it starts empty then). Past MAX_OVERFLOWED such conversations,
# every bot turn is withheld until restart. Memory stays bounded either way.
UNKEPT_CHARS = 64_000  # per conversation (the default 2,048-token context holds ~8,000 chars)
UNKEPT_TOTAL_CHARS = 8_000_000
MAX_OVERFLOWED = 100_000


@dataclass
class _Unkept:
    """Per conversation, in memory only: fingerprints of texts that were not kept."""

    texts: deque[str] = field(default_factory=deque)
    chars: int = 0


def _memory_key(key: ConversationKey) -> ConversationKey:
    return ConversationKey(key.platform, key.channel, key.thread or None)


class PrivacyMemory:
    """Per conversation, in memory only: fingerprints of the texts that were not kept but may
    be in the model's context. Bounded per conversation (`conversation_chars`) and in total
    (`total_chars`); past a bound a conversation is "overflowed" rather than forgetting
    anything, and past `max_overflowed` such conversations the memory has lost track: every
    bot turn is withheld until the process restarts."""

    def __init__(self, *, conversation_chars: int = UNKEPT_CHARS,
                 total_chars: int = UNKEPT_TOTAL_CHARS,
                 max_overflowed: int = MAX_OVERFLOWED) -> None:
        self.conversation_chars = conversation_chars
        self.total_chars = total_chars
        self.max_overflowed = max_overflowed
        self._unkept: OrderedDict[ConversationKey, _Unkept] = OrderedDict()
        self._unkept_chars = 0
        self._overflowed: set[ConversationKey] = set()
        self._lost_track = False  # more than max_overflowed overflowed: withhold every bot turn

    def remember(self, key: ConversationKey, text: object) -> None:
        """A text that was not kept (or no longer is) but may be in the model's context: bot
        turns of this conversation that repeat it are withheld. Never forgotten silently: see
        UNKEPT_CHARS."""
        key = _memory_key(key)
        if self._lost_track or key in self._overflowed:
            return
        norm = fingerprint(text if isinstance(text, str) else str(text))
        if len(norm) < QUOTE_MIN_CHARS:
            return
        mem = self._unkept.get(key)
        if mem is None:
            mem = self._unkept[key] = _Unkept()
        else:
            self._unkept.move_to_end(key)
        if mem.chars + len(norm) > self.conversation_chars:
            self._overflow(key)
            return
        mem.texts.append(norm)
        mem.chars += len(norm)
        self._unkept_chars += len(norm)
        while self._unkept_chars > self.total_chars and self._unkept:
            self._overflow(next(iter(self._unkept)))  # the least recently active

    def _overflow(self, key: ConversationKey) -> None:
        mem = self._unkept.pop(key, None)
        if mem is not None:
            self._unkept_chars -= mem.chars
        if len(self._overflowed) >= self.max_overflowed:
            if not self._lost_track:
                log.warning("store: too many conversations to remember what was not kept; "
                            "the bot's turns are withheld until chimein restarts")
            self._lost_track = True
            self._overflowed.clear()
            self._unkept.clear()
            self._unkept_chars = 0
            return
        self._overflowed.add(key)
        log.info("store: %s: more text that was not kept than the store remembers; the bot's "
                 "turns there are withheld until chimein restarts", key)

    def unkept_texts(self, key: ConversationKey) -> list[str] | None:
        """What a bot turn in this conversation must not repeat (a thread's also what its
        channel holds: a thread's context may start with it); None: not known, withhold."""
        keys = [_memory_key(key)]
        if key.thread:
            keys.append(ConversationKey(key.platform, key.channel))
        if self._lost_track or any(k in self._overflowed for k in keys):
            return None
        texts: list[str] = []
        for k in keys:
            mem = self._unkept.get(k)
            if mem is not None:
                texts += mem.texts
        return texts

    def must_withhold(self, key: ConversationKey, answer: str) -> bool:
        """Whether a bot turn in this conversation may carry a text that was not kept: it
        repeats one, or the memory cannot tell any more (overflowed)."""
        unkept = self.unkept_texts(key)
        return unkept is None or quotes(answer, unkept)

    def chars(self, key: ConversationKey | None = None) -> int:
        """Characters remembered for a conversation (its own, not its channel's), or in all."""
        if key is None:
            return self._unkept_chars
        mem = self._unkept.get(_memory_key(key))
        return 0 if mem is None else mem.chars
