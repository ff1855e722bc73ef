"""Per-conversation state: turns, the token ids in the KV cache, and the cache itself.

Sessions live in an LRU bounded by count (the whole session goes) and by KV bytes (the least
recently used caches are dropped; their turns stay, and the next decision recomputes once).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bot.message import ConversationKey, Turn

log = logging.getLogger(__name__)


@dataclass
class Session:
    """What one conversation's model state holds. The engine owns `ids`, `cache`, `pending`."""

    key: ConversationKey
    turns: list[Turn] = field(default_factory=list)  # strictly alternating, silences included
    ids: list[int] = field(default_factory=list)  # the token ids whose KV state is in `cache`
    cache: Any = None  # backend-specific KV state
    pending: Any = None  # set by a speaking decision, consumed by respond()
    last_used: float = field(default_factory=time.monotonic)
    trims: int = 0  # how often the context overflowed and old turns were dropped
    recomputes: int = 0  # how often the cached prefix did not match and was rebuilt
    rebuilt: bool = False  # a rebuild began in prefill(): the next decision reports it
    warming: list[int] | None = None  # the ids a rebuild in chunks is filling the cache to

    def kv_bytes(self) -> int:
        return cache_bytes(self.cache)

    def drop_cache(self) -> None:
        self.cache = None
        self.ids = []
        self.pending = None
        self.warming = None


def cache_bytes(cache: Any) -> int:
    """Bytes held by a transformers cache (or any object exposing `nbytes`)."""
    if cache is None:
        return 0
    if hasattr(cache, "nbytes") and isinstance(cache.nbytes, int):
        return int(cache.nbytes)
    total = 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if t is not None and hasattr(t, "numel"):
                    total += t.numel() * t.element_size()
        return total
    for name in ("key_cache", "value_cache"):
        for t in getattr(cache, name, []) or []:
            if hasattr(t, "numel"):
                total += t.numel() * t.element_size()
    return total


class SessionStore:
    """LRU of sessions, bounded by count and by total KV bytes."""

    def __init__(self, max_sessions: int = 256, max_kv_bytes: int = 2 << 30):
        self.max_sessions = max_sessions
        self.max_kv_bytes = max_kv_bytes
        self._sessions: OrderedDict[ConversationKey, Session] = OrderedDict()

    def get(self, key: ConversationKey) -> Session:
        s = self._sessions.get(key)
        if s is None:
            s = Session(key)
            self._sessions[key] = s
            while len(self._sessions) > self.max_sessions:
                _, old = self._sessions.popitem(last=False)
                log.debug("evicting session %s (count bound %d)", old.key, self.max_sessions)
        else:
            self._sessions.move_to_end(key)
        s.last_used = time.monotonic()
        return s

    def peek(self, key: ConversationKey) -> Session | None:
        return self._sessions.get(key)

    def enforce_bytes(self, keep: ConversationKey | None = None) -> int:
        """Drop the least recently used caches until the total fits; returns bytes freed."""
        total = sum(s.kv_bytes() for s in self._sessions.values())
        freed = 0
        for s in list(self._sessions.values()):
            if total <= self.max_kv_bytes:
                break
            if s.key == keep or s.cache is None:
                continue
            b = s.kv_bytes()
            s.drop_cache()
            total -= b
            freed += b
            log.debug("dropped KV cache of %s (%d bytes) to respect the byte bound", s.key, b)
        return freed

    def total_kv_bytes(self) -> int:
        return sum(s.kv_bytes() for s in self._sessions.values())

    def clear(self) -> None:
        self._sessions.clear()

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def __contains__(self, key: object) -> bool:
        return key in self._sessions
