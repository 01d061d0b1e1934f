"""Group commit: one thread commits what many requests hand it, a group per transaction.

The two writers of an app are this one component with their own COMMIT:
the inbox writer (:class:`ecrm_api.inbox.InboxWriter`: the accepted
messages of each request as an inbox row) and the interactions writer
(:class:`ecrm_api.writer.GroupWriter`: ``?sync=true``, the events stored
with ``track_many``).  A request hands an item over with :meth:`submit` and
awaits it on its event loop; the thread takes every item waiting (up to
``max_group`` by :meth:`GroupCommit._weight`, a request never split),
commits them in one transaction (:meth:`GroupCommit._commit`) and settles
each request with its own result or error.  The per-request work (reading,
checking, encoding) is done before the item is handed over: the thread only
writes.

``max_wait`` > 0 lets the thread, having work, wait that long at most for
requests announced with :meth:`GroupCommit.announce` (still being read and
checked) instead of committing without them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["GroupCommit", "Settle", "settler"]

log = logging.getLogger(__name__)

#: What the thread calls once per item: ``settle(result, error)``.
Settle = Callable[[Any, BaseException | None], None]

T = TypeVar("T")


def settler(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> Settle:
    """A thread-safe ``settle(result, error)`` for ``future`` (ignored once the
    request went away: what was committed stays committed)."""

    def settle_here(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def settle(result: Any, error: BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(settle_here, result, error)
        except RuntimeError:  # pragma: no cover - the loop is closed (shutdown)
            pass

    return settle


class GroupCommit(Generic[T]):
    """The shared machinery (see the module's text); subclasses commit."""

    thread_name = "ecrm-api-group-commit"

    def __init__(self, *, max_group: int, max_wait: float = 0.0) -> None:
        self.max_group = max_group
        self.max_wait = max_wait
        self._queue: deque[tuple[T, Settle]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._preparing = 0

    # -- what a subclass provides ---------------------------------------------
    def _weight(self, item: T) -> int:
        """An item's share of ``max_group`` (default 1: a request)."""
        return 1

    def _commit(self, group: list[T]) -> list[tuple[Any, BaseException | None]]:
        """Commit ``group`` (one transaction, or one per part); ``(result, error)`` per item."""
        raise NotImplementedError

    def _idle_every(self) -> float | None:
        """Seconds between :meth:`_idle` calls when nothing comes (None: never)."""
        return None

    def _idle(self) -> None:
        """Periodic work of the thread (e.g. reading the inbox's depth)."""

    def _stopped(self) -> None:
        """The thread is about to end (release its connection)."""

    # -- the request's side -------------------------------------------------------
    async def submit(self, item: T) -> Any:
        """Hand ``item`` over; returns its result once committed (or raises its error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.put(item, settler(loop, future))
        return await future

    def put(self, item: T, settle: Settle) -> None:
        """Hand ``item`` over from any thread; ``settle(result, error)`` is called once it is committed."""
        with self._cond:
            self._start()
            self._queue.append((item, settle))
            self._cond.notify_all()

    def announce(self) -> None:
        """A request is on its way (read, checked): with ``max_wait``, the thread may wait for it."""
        with self._cond:
            self._preparing += 1

    def arrived(self) -> None:
        """An announced request was handed over, or will not be."""
        with self._cond:
            self._preparing -= 1
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Items handed over and not taken into a group yet."""
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float | None = None) -> None:
        """Commit what was handed over, then stop the thread (a later item starts it again)."""
        with self._cond:
            thread = self._thread
            self._closing = True
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)

    def _start(self) -> None:
        """Start the thread if it is not running (with ``self._cond`` held)."""
        if self._thread is None or not self._thread.is_alive():
            self._closing = False
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()

    def ensure_thread(self) -> None:
        """Start the thread now (for its periodic work) if it is not running."""
        with self._cond:
            self._start()

    # -- the thread ---------------------------------------------------------------
    _last_idle = 0.0

    def _idle_due(self) -> float | None:
        every = self._idle_every()
        if every is None:
            return None
        return max(0.0, every - (time.monotonic() - self._last_idle))

    def _take(self) -> list[tuple[T, Settle]] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    self._thread = None
                    return None
                due = self._idle_due()
                if due == 0.0:
                    return []
                self._cond.wait(due)
            group = [self._queue.popleft()]
            size = self._weight(group[0][0])
            deadline = time.monotonic() + self.max_wait
            while size < self.max_group:
                if self._queue:
                    nxt = self._weight(self._queue[0][0])
                    if size + nxt > self.max_group:
                        break
                    group.append(self._queue.popleft())
                    size += nxt
                    continue
                left = deadline - time.monotonic()
                if self._preparing <= 0 or self._closing or left <= 0:
                    break
                self._cond.wait(left)
            return group

    def _run(self) -> None:
        while True:
            group = self._take()
            if group is None:
                self._stopped()
                return
            if group:
                items = [item for item, _ in group]
                try:
                    results = self._commit(items)
                except BaseException as exc:  # pragma: no cover - a bug: answer, never hang a request
                    log.exception("ecrm-api: a group commit failed unexpectedly")
                    results = [(None, exc)] * len(items)
                for (_, settle), (result, error) in zip(group, results, strict=True):
                    settle(result, error)
            if self._idle_due() == 0.0:
                self._last_idle = time.monotonic()
                self._idle()
