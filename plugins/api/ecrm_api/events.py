"""Storing the events of one or many tracking requests in one transaction.

:func:`store_events` is the set-based half of storing Segment messages
(``track``, ``page``, ``screen`` and the interaction of the others): one
``crm.interactions.track_many`` for the events of many requests (the group
commit of :mod:`ecrm_api.writer`, and each step of the ingest processor),
with exact per-request counts, ``messageId`` dedupe and conflicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from ecrm_core.errors import EcrmError, IdempotencyConflict, ValidationError

from .messages import RETRY_TOLERANCE, Parsed, Rejected, _Message

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["store_events"]


class _Recount(Exception):
    """Internal: the group's counts cannot be split per request exactly (roll back, store each alone)."""


class _Retries(Exception):
    """Internal: the group has retried messages (roll back, store it again looking at stored keys first)."""


def store_events(crm: CRM, parts: Sequence[Parsed]) -> None:
    """Store the :attr:`~Parsed.fast` messages of ``parts`` (one request each)
    in one ``track_many`` transaction and count into each part.

    This is the group commit of :mod:`ecrm_api.writer`; with one part it is
    a plain batch.  Each part gets its own stored, duplicate and rejected
    messages.  Raises what ``track_many`` raises (the caller decides what to
    retry); nothing is stored or counted then.

    The common case, no message stored before, costs one ``track_many``.
    When the core reports a duplicate (with several parts: which part's?) or
    a ``messageId`` conflict (maybe a retry with a re-corrected time), the
    transaction is rolled back and the group stored again, reading first,
    in the write transaction (on SQLite ``BEGIN IMMEDIATE``: nobody writes in
    between), which keys are stored already: a retry whose time is within
    :data:`RETRY_TOLERANCE` of the stored one gets the stored time back (a
    duplicate, not a conflict), the same goes for one ``messageId`` sent by
    two requests of the group, and duplicates are told apart per part.
    Should the core's totals still not match that split (another process
    wrote the same key meanwhile, or a row failed after its key was seen),
    each part is stored on its own.
    """
    msgs: list[_Message] = []
    owner: list[int] = []
    for n, part in enumerate(parts):
        msgs += part.fast
        owner += [n] * len(part.fast)
    if not msgs:
        return
    try:
        split, errors = _store_group(crm, msgs, owner, len(parts), look_first=False)
    except _Retries:
        try:
            split, errors = _store_group(crm, msgs, owner, len(parts), look_first=True)
        except _Recount:
            for part in parts:
                store_events(crm, [part])
            return
    for n, (accepted, duplicates) in enumerate(split):
        parts[n].accepted += accepted
        parts[n].duplicates += duplicates
    for index, error in errors.items():
        parts[owner[index]].rejected.append(_row_rejected(msgs[index], error))
    for part in parts:
        part.fast = []


def _store_group(
    crm: CRM, msgs: list[_Message], owner: list[int], parts: int, *, look_first: bool
) -> tuple[list[tuple[int, int]], dict[int, EcrmError]]:
    rows = [m.row for m in msgs]
    with crm.db.write() as conn:
        stored: dict[str, datetime] = {}
        if look_first:
            stored = _stored_keys(crm, conn, rows)
            _keep_stored_times(rows, owner, stored)
        result = crm.using(conn).interactions.track_many(rows, on_error="skip", atomic=True, batch_size=len(rows))
        errors = {e.index: e.error for e in result.errors}
        if not look_first and (
            (result.duplicates and parts > 1)
            or any(isinstance(e, IdempotencyConflict) and rows[i].get("occurred_at") for i, e in errors.items())
        ):
            raise _Retries()  # rolls back: nothing stored, no event
        if parts == 1:
            split = [(result.stored, result.duplicates)]
        elif not look_first:  # nothing was stored before, no key twice: each part's rows, less its errors
            counts = [0] * parts
            for n in owner:
                counts[n] += 1
            for i in errors:
                counts[owner[i]] -= 1
            if sum(counts) != result.stored:  # pragma: no cover - defensive: the careful way
                raise _Retries()
            split = [(c, 0) for c in counts]
        else:
            split = _split(rows, owner, errors, stored, parts, result.stored, result.duplicates)
    return split, errors


def _stored_keys(crm: CRM, conn: sa.Connection, rows: list[dict[str, Any]]) -> dict[str, datetime]:
    """The rows' idempotency keys that are stored already, with their stored times."""
    unique = list(dict.fromkeys(r["idempotency_key"] for r in rows if "idempotency_key" in r))
    stored: dict[str, datetime] = {}
    if not unique:
        return stored
    i = crm.db.tables["interactions"]
    for start in range(0, len(unique), 900):
        q = sa.select(i.c.idempotency_key, i.c.occurred_at).where(
            i.c.workspace_id == crm.workspace, i.c.idempotency_key.in_(unique[start : start + 900])
        )
        stored.update((k, at) for k, at in conn.execute(q))
    return stored


def _keep_stored_times(rows: list[dict[str, Any]], owner: list[int], stored: Mapping[str, datetime]) -> None:
    """A retried message gets the time of the stored one (or of the same
    messageId sent by another request of the group) when its own is within
    :data:`RETRY_TOLERANCE`: the SDK corrected it with a new ``sentAt``.

    Rows are replaced, not changed (a retry of the group stores the rows as
    sent).  Rows without a time of their own are hashed without one: nothing
    to keep.
    """
    first: dict[str, tuple[int, datetime]] = {}
    for n, row in enumerate(rows):
        key = row.get("idempotency_key")
        at = row.get("occurred_at")
        if key is None or at is None:
            continue
        target = stored.get(key)
        if target is None:
            earlier = first.get(key)
            if earlier is None:
                first[key] = (owner[n], at)
                continue
            if earlier[0] == owner[n]:  # one request, two payloads for one id: a conflict
                continue
            target = earlier[1]
        if target.tzinfo is None:
            target = target.replace(tzinfo=UTC)
        if at != target and abs(at - target) <= RETRY_TOLERANCE:
            rows[n] = {**row, "occurred_at": target.astimezone(UTC)}


def _split(
    rows: list[dict[str, Any]],
    owner: list[int],
    errors: Mapping[int, EcrmError],
    existing: Mapping[str, Any],
    parts: int,
    stored: int,
    duplicates: int,
) -> list[tuple[int, int]]:
    """``(accepted, duplicates)`` per part: a keyed row is a duplicate when its
    key was stored before the group or by an earlier row of it.  Raises
    :class:`_Recount` when that does not add up to the core's totals."""
    seen: set[str] = set()
    accepted_by = [0] * parts
    duplicate_by = [0] * parts
    for n, row in enumerate(rows):
        key = row.get("idempotency_key")
        if n in errors:
            continue
        if key is None or (key not in seen and key not in existing):
            accepted_by[owner[n]] += 1
            if key is not None:
                seen.add(key)
        else:
            duplicate_by[owner[n]] += 1
    if sum(accepted_by) != stored or sum(duplicate_by) != duplicates:
        raise _Recount()
    return list(zip(accepted_by, duplicate_by, strict=True))


_FIELD_NAMES = {
    "occurred_at": "timestamp",
    "external_id": "userId",
    "anonymous_id": "anonymousId",
    "idempotency_key": "messageId",
    "amount": "properties.revenue",
    "currency": "properties.currency",
    "customer_id": "userId",
}


def _row_rejected(m: _Message, error: EcrmError) -> Rejected:
    if isinstance(error, IdempotencyConflict):
        return Rejected(
            m.index,
            m.message_id,
            f"{m.path}.messageId",
            "messageId reused with a different payload",
            "send a retry unchanged, or give a new event a new messageId",
            conflict=True,
        )
    if isinstance(error, ValidationError):
        head, _, rest = error.field.partition(".")
        name = _FIELD_NAMES.get(head, head)
        field = f"{m.path}.{name}{'.' + rest if rest else ''}"
        if error.field.startswith("alias."):
            field = f"{m.path}.{'anonymousId' if 'anonymous' in error.field else 'userId'}"
        return Rejected(m.index, m.message_id, field, error.problem, error.fix)
    return Rejected(m.index, m.message_id, m.path, str(error), "fix or remove this message")
