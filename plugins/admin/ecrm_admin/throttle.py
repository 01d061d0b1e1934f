"""Throttling of failed logins: :class:`LoginThrottle`.

Failed password logins are counted per account (the user name as typed,
known or not) and per client address, over a sliding window.  Once either
count reaches its limit, further logins for that account or from that
address are refused **without checking the password** (no scrypt spent, no
guess tested) until the oldest counted failure leaves the window; the login
page says so and the answer is ``429`` with ``Retry-After``.  A successful
login clears its account's failures (not its address's: an attacker holding
one account cannot reset the address count with it).

The counts live in memory, in two bounded LRU maps (``max_keys`` each, at
most ``limit`` timestamps per key), so a flood of made-up names or addresses
costs a fixed amount of memory: the least recently failing keys are
forgotten first.  They are per process: with several server processes each
keeps its own counts (the limits then apply per process).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from attrs import frozen

__all__ = ["LoginThrottle", "Refusal"]


@frozen
class Refusal:
    """Why a login is refused for now: ``scope`` ``"account"`` or ``"address"``, and
    ``retry_after`` in whole seconds (at least 1)."""

    scope: str
    retry_after: int


class _Counter:
    """Failure timestamps per key: a bounded LRU map of bounded deques."""

    def __init__(self, limit: int, window: float, max_keys: int) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self.keys: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        times = self.keys.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self.keys[key]
            return 0.0
        if len(times) < self.limit:
            return 0.0
        return times[0] + self.window - now

    def add(self, key: str, now: float) -> None:
        times = self.keys.get(key)
        if times is None:
            times = self.keys[key] = deque(maxlen=self.limit)
            while len(self.keys) > self.max_keys:
                self.keys.popitem(last=False)
        else:
            self.keys.move_to_end(key)
        times.append(now)

    def clear(self, key: str) -> None:
        self.keys.pop(key, None)


class LoginThrottle:
    """Counts failed logins; refuses logins past ``per_account`` failures of one
    account, or ``per_address`` failures from one client address, within
    ``window`` seconds.  Thread-safe; memory bounded by ``max_keys`` per map.

    ::

        throttle = LoginThrottle(per_account=5, per_address=50, window=900)
        refusal = throttle.check("ada", "203.0.113.9")   # None: may try
        throttle.failed("ada", "203.0.113.9")            # after a wrong password
        throttle.succeeded("ada")                        # after a right one
    """

    def __init__(
        self,
        *,
        per_account: int = 5,
        per_address: int = 50,
        window: float = 900.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (("per_account", per_account), ("per_address", per_address), ("max_keys", max_keys)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LoginThrottle: {name} must be a whole number >= 1, not {value!r}")
        if not window > 0:
            raise ValueError(f"LoginThrottle: window must be > 0 seconds, not {window!r}")
        self.accounts = _Counter(per_account, float(window), max_keys)
        self.addresses = _Counter(per_address, float(window), max_keys)
        self.clock = clock
        self._lock = threading.Lock()

    @staticmethod
    def _account(username: str) -> str:
        return username[:200]

    def check(self, username: str, address: str | None) -> Refusal | None:
        """``None`` if a login for ``username`` from ``address`` may be tried now, else why not."""
        now = self.clock()
        with self._lock:
            by_account = self.accounts.wait(self._account(username), now)
            by_address = self.addresses.wait(address, now) if address else 0.0
        if by_account <= 0 and by_address <= 0:
            return None
        scope, wait = ("account", by_account) if by_account >= by_address else ("address", by_address)
        return Refusal(scope, max(1, math.ceil(wait)))

    def failed(self, username: str, address: str | None) -> None:
        """Count a failed login (wrong password, unknown or disabled account)."""
        now = self.clock()
        with self._lock:
            self.accounts.add(self._account(username), now)
            if address:
                self.addresses.add(address, now)

    def succeeded(self, username: str) -> None:
        """A right password: forget the account's failures."""
        with self._lock:
            self.accounts.clear(self._account(username))

    def __len__(self) -> int:
        """Keys held (accounts + addresses): bounded by ``2 * max_keys``."""
        with self._lock:
            return len(self.accounts.keys) + len(self.addresses.keys)
