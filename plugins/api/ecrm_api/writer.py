"""Group commit for the tracking endpoints (``/v1/*``): one writer per app.

A request to ``/v1/batch`` (or a single call) is read, decoded, validated
and mapped on the event loop; then its messages go to the app's
:class:`GroupWriter`, and the request waits.  The writer is one thread: it
takes every request waiting for it, up to ``max_group_events`` messages,
and stores their events with **one** ``crm.interactions.track_many`` in one
transaction (:func:`ecrm_api.tracking.store_events`), then answers each
request with its own counts and rejected messages.  A transaction's fixed
costs (the COMMIT and its random index pages, the customer lookups, the
live segment refresh the core runs after each committed batch) are paid
once per group instead of once per request.

What a 200 means is unchanged: the request's rows are committed (durable)
before it is answered.  Per request:

* counts and ``rejected`` entries are its own (the index of the message in
  *its* batch);
* dedupe on ``messageId`` is exact: two requests of one group with the same
  id store it once (the later one counts a duplicate, or is rejected as a
  conflict when the payload differs);
* when the group's transaction fails, nothing of it is stored and each
  request is retried alone, so one bad request fails only itself.

``identify``, ``group`` and ``alias`` messages change customers; the writer
applies them one by one, before the group's events (as a batch always
did).

By default the writer does not wait: a group is what queued up while the
previous group was committed (reading and parsing the next requests
overlaps the commit; measured faster than waiting).  With ``max_wait`` > 0
it also waits, that long at most and only while requests are still being
read and parsed (announced with :meth:`GroupWriter.slot`).  It is per
process (per app): several server processes each group their own requests,
and SQLite still serialises their transactions.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import attrs

from .events import store_events
from .groupcommit import GroupCommit, settler
from .messages import Outcome, Parsed
from .tracking import Tracker

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["GroupWriter", "WriterStats"]

log = logging.getLogger(__name__)


@attrs.define
class WriterStats:
    """What a :class:`GroupWriter` did (for tests, benchmarks and monitoring)."""

    groups: int = 0
    requests: int = 0
    events: int = 0
    largest: int = 0
    retried: int = 0


@attrs.define(eq=False)
class _Work:
    tracker: Tracker
    parsed: Parsed
    failed: BaseException | None = None

    @property
    def crm(self) -> CRM:
        return self.tracker.crm


class Slot:
    """A request on its way to the writer: counted while it is read and parsed,
    so the writer waits for it instead of committing without it."""

    def __init__(self, writer: GroupWriter) -> None:
        self._writer = writer
        self._open = True

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """No more work will come through this slot (idempotent)."""
        if self._open:
            self._open = False
            self._writer.arrived()

    async def submit(self, tracker: Tracker, parsed: Parsed) -> Outcome:
        """Hand the request's messages to the writer; returns once they are stored (durable)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        # In the queue before the slot is released: the writer never commits without it.
        self._writer.put(_Work(tracker, parsed), settler(loop, future))
        self.release()
        return await future


class GroupWriter(GroupCommit[_Work]):
    """The group-commit writer of one app (see the module's text).

    :param max_group_events: messages stored in one transaction at most
        (a request is never split: one larger than this is a group alone).
    :param max_wait: how long (seconds) the writer, having work, may wait
        for requests that are still being read or parsed before it commits
        without them (0: not at all).

    The thread starts with the first request and stops at :meth:`close`
    (the app's shutdown), after storing everything handed to it.
    """

    thread_name = "ecrm-api-writer"

    def __init__(self, *, max_group_events: int = 5000, max_wait: float = 0.0) -> None:
        super().__init__(max_group=max_group_events, max_wait=max_wait)
        self.stats = WriterStats()

    @property
    def max_group_events(self) -> int:
        return self.max_group

    def slot(self) -> Slot:
        """Announce a request: use as ``with writer.slot() as slot: ... await slot.submit(...)``."""
        self.announce()
        return Slot(self)

    def _weight(self, work: _Work) -> int:
        return work.parsed.events

    def _commit(self, group: list[_Work]) -> list[tuple[Any, BaseException | None]]:
        try:
            self._store(group)
        except BaseException as exc:  # pragma: no cover - a bug: answer, never hang a request
            log.exception("ecrm-api writer: a group failed unexpectedly")
            for work in group:
                if work.failed is None:
                    work.failed = exc
        return [(None, w.failed) if w.failed is not None else (w.parsed.outcome(), None) for w in group]

    def _store(self, group: list[_Work]) -> None:
        st = self.stats
        st.groups += 1
        st.requests += len(group)
        events = sum(w.parsed.events for w in group)
        st.events += events
        st.largest = max(st.largest, events)
        # Customer changes first, request by request (the events of a batch
        # land on the customers its identify/alias messages stitched).
        for work in group:
            if work.parsed.slow:
                try:
                    work.tracker.store_slow(work.parsed)
                except Exception as exc:
                    work.failed = exc
        # Then the events: one transaction per workspace in the group.
        by_workspace: dict[str, list[_Work]] = {}
        for work in group:
            if work.failed is None and work.parsed.fast:
                by_workspace.setdefault(work.crm.workspace, []).append(work)
        for works in by_workspace.values():
            try:
                store_events(works[0].crm, [w.parsed for w in works])
            except Exception as exc:
                if len(works) == 1:
                    works[0].failed = exc
                    continue
                # Nothing of the group was stored: each request alone, so
                # that a bad one fails only itself.
                st.retried += 1
                log.warning("ecrm-api writer: a group of %d requests failed (%s); storing each alone", len(works), exc)
                for work in works:
                    try:
                        store_events(work.crm, [work.parsed])
                    except Exception as alone:
                        work.failed = alone
