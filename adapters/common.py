"""Pieces shared by the platform adapters (standard library only).

`split_text` cuts a long answer into posts under a platform's limit, at the most natural
boundary that fits: a paragraph break, then a line break, then the end of a sentence, then a
space; only a single unbroken run longer than the limit is cut mid-word.
"""

from __future__ import annotations

import abc
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Self

from bot.errors import ChimeinError

# Sentence ends: Latin punctuation followed by a space, or CJK full stops (no space follows).
_SENTENCE_END = re.compile(r"[.!?…](?=\s)|[。！？]")
_SPACE = re.compile(r"\s")


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units: how Discord counts its 2,000-character limit (an emoji
    outside the BMP counts twice)."""
    return len(text.encode("utf-16-le")) // 2


def _longest_prefix(text: str, limit: int, measure: Callable[[str], int]) -> int:
    """The largest n with measure(text[:n]) <= limit (measure grows with the prefix)."""
    if measure(text) <= limit:
        return len(text)
    lo, hi = 0, min(len(text), limit)  # no measure counts fewer units than code points
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if measure(text[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _cut_point(window: str) -> int:
    """Where to cut `window` (a prefix that fits): after the best boundary in its second half,
    so no piece comes out tiny; the whole window when it has no boundary there."""
    floor = len(window) // 2
    for sep in ("\n\n", "\n"):
        i = window.rfind(sep, floor)
        if i != -1:
            return i + len(sep)
    ends = [m.end() for m in _SENTENCE_END.finditer(window, floor)]
    if ends:
        return ends[-1]
    spaces = [m.end() for m in _SPACE.finditer(window, floor)]
    if spaces:
        return spaces[-1]
    return len(window)


def split_text(text: str, limit: int, measure: Callable[[str], int] = len) -> list[str]:
    """Split `text` into pieces whose `measure` is at most `limit` each.

    Whitespace at a cut is dropped; nothing else is lost. Empty or blank text gives `[]`.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    text = text.strip()
    pieces: list[str] = []
    while text:
        n = _longest_prefix(text, limit, measure)
        if n >= len(text):
            pieces.append(text)
            break
        if n == 0:  # one character is over the limit on its own: cannot happen for sane limits
            n = 1
        cut = _cut_point(text[:n])
        # A hard cut must not split one visible character (an emoji with its skin tone or
        # variation selector, a zero-width-joiner family, a letter and its accent).
        while 0 < cut < len(text) and (_is_joiner(text[cut]) or text[cut - 1] == "\u200d"):
            cut -= 1
        if cut == 0:
            cut = n
        piece = text[:cut].rstrip()
        if piece:
            pieces.append(piece)
        text = text[cut:].lstrip()
    return pieces


def _is_joiner(ch: str) -> bool:
    """Characters that bind to the one before them (variation selectors, ZWJ, skin tones,
    combining marks): a cut right before one would split a visible character."""
    cp = ord(ch)
    return (ch == "\u200d" or 0xFE00 <= cp <= 0xFE0F or 0x1F3FB <= cp <= 0x1F3FF
            or 0x0300 <= cp <= 0x036F or 0xE0020 <= cp <= 0xE007F)


class AdapterError(ChimeinError, RuntimeError):
    """A platform refused the bot's credentials or setup; the message says what to change."""


class Lifecycle(abc.ABC):
    """`async with adapter:` starts it and closes it; the adapter defines start and close."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect (or start listening)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect and release everything start() took."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SeenSet:
    """The last `size` ids seen: drops redelivered events without growing forever."""

    def __init__(self, size: int = 10_000):
        self.size = size
        self._d: OrderedDict[Any, None] = OrderedDict()

    def add(self, item: Any) -> bool:
        """True if `item` is new (and remembers it); False if it was seen already."""
        if item in self._d:
            self._d.move_to_end(item)
            return False
        self._d[item] = None
        while len(self._d) > self.size:
            self._d.popitem(last=False)
        return True

    def discard(self, item: Any) -> None:
        self._d.pop(item, None)

    def __contains__(self, item: object) -> bool:
        return item in self._d


class LRU(OrderedDict[Any, Any]):
    """A dict that forgets its least recently written keys beyond `size`."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
