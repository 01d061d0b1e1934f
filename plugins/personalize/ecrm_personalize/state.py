"""What one CRM keeps in memory for personalization: caches with short lifetimes.

Shared by every view of a CRM (keyed by its plugin manager), per workspace:
placements (5 s), active offers (5 s), compiled eligibility rules, the
prepared statements and the strategy objects.  Nothing here is needed for correctness: a cache miss
reads the database.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["State", "state"]

_STATES: weakref.WeakKeyDictionary[Any, State] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cache: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self.strategies: dict[tuple[int, str], Any] = {}

    def cached(self, key: tuple[Any, ...], ttl: float, load: Callable[[], Any]) -> Any:
        hit = self.cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        with self.lock:
            if len(self.cache) > 10_000:
                self.cache.clear()
            self.cache[key] = (now + ttl, value)
        return value

    def forget(self, *prefix: Any) -> None:
        with self.lock:
            for key in [k for k in self.cache if k[: len(prefix)] == prefix]:
                del self.cache[key]


def state(crm: Any) -> State:
    """The state of ``crm`` (made on first use)."""
    owner = crm.plugins
    found = _STATES.get(owner)
    if found is None:
        with _LOCK:
            found = _STATES.get(owner)
            if found is None:
                found = _STATES[owner] = State()
    return found
