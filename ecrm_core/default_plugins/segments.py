"""Live segments (plugin ``core.segments``).

After every committed change — interactions recorded, customers created,
updated or merged — re-evaluates lifecycle stages and segments for the
customers concerned only (incremental refresh), so that membership is
current as events arrive.

``CRM(live_segments=True)`` (the default) refreshes synchronously, right
after the commit, in the thread that wrote.  ``CRM(live_segments="background")``
queues the customers concerned instead; one worker thread per CRM coalesces
them and refreshes every :data:`INTERVAL` seconds, so that writers do not
wait (membership is current a fraction of a second after the commit;
``crm.segments.flush()`` waits for it, ``crm.close()`` drains the queue).
``CRM(live_segments=False)`` or ``crm.segments.paused()`` turn this off
(bulk loads); a full ``crm.segments.refresh()`` then catches up.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from ecrm_core.hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM
    from ecrm_core.domain import Customer, CustomerChange, InteractionBatch, MergeRecord

#: Seconds the background worker waits to gather changes before a refresh.
INTERVAL = 0.1
#: Queued customer ids beyond which writers wait for the worker (back-pressure).
MAX_PENDING = 200_000


class _Pending:
    """What one workspace's next refresh covers (the union of the queued changes)."""

    __slots__ = ("changed", "crm", "ids", "kinds")

    def __init__(self, crm: CRM) -> None:
        self.crm = crm
        self.ids: set[int] = set()
        self.kinds: set[str] | None = set()
        self.changed = False


class LiveWorker:
    """The background refresher of ``CRM(live_segments="background")`` (one per CRM)."""

    def __init__(self, interval: float = INTERVAL, max_pending: int = MAX_PENDING) -> None:
        self.interval = interval
        self.max_pending = max_pending
        self._cond = threading.Condition()
        self._pending: dict[str, _Pending] = {}
        self._size = 0
        self._queued = 0  # changes queued so far
        self._done = 0  # changes refreshed (or failed) so far
        self._stopping = False
        self._hurry = False
        self._thread: threading.Thread | None = None

    def submit(self, crm: CRM, ids: Collection[int], kinds: Collection[str] | None, changed: bool) -> None:
        ids = [i for i in ids if i]
        if not ids:
            return
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                if self._stopping:
                    return
                self._thread = threading.Thread(target=self._run, name="ecrm-live-segments", daemon=True)
                self._thread.start()
            if threading.current_thread() is not self._thread:
                while self._size >= self.max_pending and not self._stopping:
                    self._cond.wait()
            p = self._pending.get(crm.workspace)
            if p is None:
                # Refresh on the CRM's own engine, never on a host's connection.
                p = self._pending[crm.workspace] = _Pending(crm._view(db=crm._shared.root_db))
            before = len(p.ids)
            p.ids.update(ids)
            self._size += len(p.ids) - before
            if kinds is None or p.kinds is None:
                p.kinds = None
            else:
                p.kinds.update(kinds)
            p.changed = p.changed or changed
            self._queued += 1
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every change queued so far is refreshed; False on timeout."""
        with self._cond:
            if threading.current_thread() is self._thread:
                return False
            target = self._queued
            self._hurry = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._done >= target or not self._alive(), timeout)

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Refresh what is queued, then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending) or self._stopping)
                if not self._pending:
                    return
                # Gather what arrives meanwhile: one refresh for many commits
                # (unless flush() or close() is waiting).
                self._cond.wait_for(lambda: self._stopping or self._hurry, self.interval)
                self._hurry = False
                work, self._pending, self._size = self._pending, {}, 0
                target = self._queued
                self._cond.notify_all()
            for p in work.values():
                _refresh(p)
            with self._cond:
                self._done = target
                self._cond.notify_all()


def _refresh(p: _Pending) -> None:
    crm = p.crm
    try:
        crm.segments.refresh(customer_ids=sorted(p.ids), kinds=p.kinds, customers_changed=p.changed)
    except Exception as exc:
        crm.plugins._record("core.segments", "live refresh (background)", exc)


def worker(crm: CRM) -> LiveWorker:
    """The CRM's background worker (created on first use)."""
    shared = crm._shared
    w: LiveWorker | None = shared.live_worker
    if w is None:
        with shared.lock:
            w = shared.live_worker
            if w is None:
                w = shared.live_worker = LiveWorker()
    return w


def _live(crm: CRM, ids: Sequence[int], kinds: Collection[str] | None, changed: bool) -> None:
    mode = crm._shared.live_segments
    if not mode:
        return
    if mode == "background":
        worker(crm).submit(crm, ids, kinds, changed)
    elif kinds is None:
        crm.segments.refresh(customer_ids=ids)
    else:
        crm.segments.refresh(customer_ids=ids, kinds=kinds, customers_changed=changed)


@hookimpl
def ecrm_interactions_recorded(crm: CRM, batch: InteractionBatch) -> None:
    _live(crm, sorted(batch.customer_ids), batch.kinds, False)


@hookimpl
def ecrm_customers_created(crm: CRM, customers: Sequence[Customer]) -> None:
    _live(crm, [c.id for c in customers if c.id], (), True)


@hookimpl
def ecrm_customers_updated(crm: CRM, changes: Sequence[CustomerChange]) -> None:
    _live(crm, [ch.after.id for ch in changes if ch.after.id], (), True)


@hookimpl
def ecrm_customers_merged(crm: CRM, merge: MergeRecord) -> None:
    # The target received the source's interactions: any rule may change.
    _live(crm, [merge.target_id, merge.source_id], None, True)


@hookimpl
def ecrm_shutdown(crm: CRM) -> None:
    w: LiveWorker | None = crm._shared.live_worker
    if w is not None:
        w.close()
