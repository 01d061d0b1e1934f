"""A deleted person's messages leave the ingest inbox and the rejected table.

The inbox and ``ingest_rejected`` hold messages, keyed by *identity*
(``userId``, ``anonymousId``, ``previousId``, e-mails and phones in the
traits), not by customer id: ``ON DELETE CASCADE`` cannot reach them.  The
plugin erases them with the identities the core read before the customer
rows went, in two parts:

* **in the delete's transaction** (``ecrm_customers_deleting``, hook API
  1.8; :func:`erase_in_transaction`): the tombstones and the rejected
  entries.  They commit with the deletion or not at all, so a process
  killed right after the COMMIT leaves no rejected message of the person
  behind, and its waiting messages are already condemned by the
  tombstones;
* **after the commit** (``ecrm_customers_deleted``): the inbox rows are
  searched and rewritten in chunks of their own transactions (a large
  inbox must not hold the write lock the gateway appends under).  If the
  process dies before, the processor drops those messages anyway when it
  reaches them (tombstones below).

:func:`erase_identities` does all three in transactions of its own (for a
host that erases identities without deleting a customer).  In detail:

* **inbox**: every waiting row of the workspace is read; the messages that
  name one of the identities are taken out of it -- the row is rewritten
  with the others (same id: the order of what is left is kept, ``count``
  follows) or deleted when nothing is left.  The processor re-checks a
  row's ``count`` under its write lock, so a row rewritten after it read
  it is read again, never stored from the old copy;
* **rejected**: the entries that name them are found through
  ``ingest_rejected_ids`` (the identities of each rejected message, written
  with it; for an ``unreadable`` entry those its bytes seem to name,
  :func:`raw_identities`) and deleted; an ``unreadable`` entry is also
  deleted when one of the values occurs in its bytes.

**Tombstones** close the race with a processor that holds a claimed batch
(it read its rows before the erasure rewrote them, or, on PostgreSQL, has
them locked): the deleted identities are recorded in ``ingest_tombstones``
with the time, *before* the inbox is searched, and the processor, in its
write transaction right before it stores, drops every message received
before that time which names one of them (:func:`dead_identities`; also
its rejected entries).  A message received after the deletion is a new one
and is stored.  Tombstones are forgotten once no inbox row older than them
waits (and at least :data:`TOMBSTONE_KEEP` after).

A merge needs nothing here: it moves the identities (aliases) to the
surviving customer, and the processor resolves each message's identities
when it stores it, so what waits for the merged-away identity lands on the
survivor -- replayed messages too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs
import msgspec
import sqlalchemy as sa

from .inbox import INBOX, REJECTED, REJECTED_IDS, TOMBSTONES

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM
    from ecrm_core.domain import Alias

__all__ = [
    "ErasureResult",
    "erase_identities",
    "erase_in_transaction",
    "erase_inbox",
    "message_identities",
    "raw_identities",
]

#: Inbox rows read (and rewritten) per transaction.
CHUNK = 500


@attrs.frozen
class ErasureResult:
    """What :func:`erase_identities` removed: inbox ``messages`` (from
    ``rows_rewritten`` rows rewritten and ``rows_deleted`` rows deleted) and
    ``rejected`` entries."""

    messages: int = 0
    rows_rewritten: int = 0
    rows_deleted: int = 0
    rejected: int = 0


def _normal(kind: str, value: str) -> str | None:
    """``value`` as the core keeps an alias of ``kind`` (None: not a valid one)."""
    from ecrm_core.validation import normalize_email, normalize_phone

    try:
        if kind == "email":
            return normalize_email(value, field="email")
        if kind == "phone":
            return normalize_phone(value, field="phone")
    except Exception:
        return None
    return value


def _ident(value: Any) -> str | None:
    """An id as the tracking routes read it (a string, or an integer sent as one; stripped)."""
    if type(value) is int:
        return str(value)
    if type(value) is str:
        return value.strip() or None
    return None


def message_identities(message: Any) -> set[tuple[str, str]]:
    """The identities a Segment message names, as ``(alias kind, value)``:
    ``userId`` (``external``), ``anonymousId`` (``anonymous``),
    ``previousId`` (both: it may be either), ``traits``/``context.traits``
    ``email`` and ``phone`` (normalised as the core keeps them)."""
    out: set[tuple[str, str]] = set()
    if type(message) is not dict:
        return out
    user = _ident(message.get("userId"))
    if user:
        out.add(("external", user))
    anon = _ident(message.get("anonymousId"))
    if anon:
        out.add(("anonymous", anon))
    previous = _ident(message.get("previousId"))
    if previous:
        out.update((("external", previous), ("anonymous", previous)))
    context = message.get("context")
    for traits in (message.get("traits"), context.get("traits") if type(context) is dict else None):
        if type(traits) is not dict:
            continue
        for kind in ("email", "phone"):
            raw = traits.get(kind)
            if type(raw) is str and raw.strip():
                normal = _normal(kind, raw)
                if normal:
                    out.add((kind, normal))
    return out


#: A JSON member naming an identity, found in bytes that are not JSON as a
#: whole (an ``unreadable`` inbox row): the key and its string or integer value.
_RAW_IDENTITY = re.compile(
    rb'"(userId|anonymousId|previousId|email|phone)"[ \t\r\n]*:[ \t\r\n]*(?:"((?:[^"\\]|\\.){1,400})"|(-?[0-9]{1,40}))'
)
_RAW_KINDS = {
    b"userId": ("external",),
    b"anonymousId": ("anonymous",),
    b"previousId": ("external", "anonymous"),
    b"email": ("email",),
    b"phone": ("phone",),
}


def raw_identities(raw: bytes) -> set[tuple[str, str]]:
    """The identities that bytes which are not a readable message seem to
    name: each ``"userId"``, ``"anonymousId"``, ``"previousId"``, ``"email"``
    or ``"phone"`` member found in them (as :func:`message_identities` reads
    them), so that an ``unreadable`` rejected entry is found by the same
    index as the others when its person is deleted."""
    out: set[tuple[str, str]] = set()
    for match in _RAW_IDENTITY.finditer(raw):
        key, text, number = match.groups()
        if text is not None:
            try:
                value = msgspec.json.decode(b'"' + text + b'"')
            except msgspec.DecodeError:
                continue
        else:
            value = number.decode()
        value = _ident(value)
        if not value:
            continue
        for kind in _RAW_KINDS[key]:
            normal = _normal(kind, value) if kind in ("email", "phone") else value
            if normal:
                out.add((kind, normal))
    return out


#: The longest identity value kept as it is in ``ingest_rejected_ids`` and
#: ``ingest_tombstones`` (their ``value`` columns); a longer one is kept as
#: :func:`identity_key` says.
MAX_KEPT = 200


def identity_key(value: str) -> str:
    """How an identity value is kept and looked up in ``ingest_rejected_ids``
    and ``ingest_tombstones``: as it is up to :data:`MAX_KEPT` characters,
    else its first 135 characters, ``~`` and its SHA-256 (hex): never cut to
    a prefix, which would miss the value (or match another one) when a
    deletion looks for it."""
    if len(value) <= MAX_KEPT:
        return value
    import hashlib

    return value[:135] + "~" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _wanted(aliases: Iterable[Alias]) -> set[tuple[str, str]]:
    """The deleted identities as ``(kind, value)``."""
    return {(a.kind, str(a.value)) for a in aliases}


#: Shorter values are not looked for in the bytes of an unreadable row (they
#: would match nearly anything).
MIN_RAW_MATCH = 3


def _in_bytes(raw: bytes, wanted: set[tuple[str, str]]) -> bool:
    return any(len(value) >= MIN_RAW_MATCH and value.encode() in raw for _kind, value in wanted)


def erase_identities(crm: CRM, aliases: Sequence[Alias]) -> ErasureResult:
    """Remove from the inbox and the rejected table (``crm``'s workspace) every
    message that names one of ``aliases``; see the module's text."""
    wanted = _wanted(aliases)
    if not wanted:
        return ErasureResult()
    with crm.db.write() as conn:
        rejected = _erase_in(crm, conn, wanted)
    messages, rewritten, deleted = _erase_inbox(crm, wanted)
    return ErasureResult(messages, rewritten, deleted, rejected)


def erase_in_transaction(crm: CRM, conn: sa.Connection, aliases: Sequence[Alias]) -> int:
    """The part of the erasure that commits with the deletion (``conn``): the
    tombstones of ``aliases`` and the rejected entries naming them (their
    number is returned)."""
    wanted = _wanted(aliases)
    return _erase_in(crm, conn, wanted) if wanted else 0


def erase_inbox(crm: CRM, aliases: Sequence[Alias]) -> ErasureResult:
    """The part after the commit: the waiting inbox messages naming ``aliases``
    (in chunks, each its own transaction)."""
    wanted = _wanted(aliases)
    if not wanted:
        return ErasureResult()
    return ErasureResult(*_erase_inbox(crm, wanted))


def _erase_in(crm: CRM, conn: sa.Connection, wanted: set[tuple[str, str]]) -> int:
    record_tombstones(crm, conn, wanted)
    return _erase_rejected(crm, conn, wanted)


def record_tombstones(crm: CRM, conn: sa.Connection, wanted: set[tuple[str, str]]) -> None:
    """Record the deleted identities, now (committed before the inbox is
    searched): a processor holding a claimed batch drops the messages that
    name one of them and were received before (:func:`dead_identities`)."""
    tt = crm.db.tables[TOMBSTONES]
    now = crm.now()
    rows = [
        {"workspace_id": crm.workspace, "kind": kind[:64], "value": identity_key(value), "deleted_at": now}
        for kind, value in sorted(wanted)
    ]
    for start in range(0, len(rows), 500):
        conn.execute(tt.insert(), rows[start : start + 500])


#: Tombstones are kept while inbox rows received before them may wait, and at
#: least this long (a request being checked or appended when its person was
#: deleted).
TOMBSTONE_KEEP = timedelta(minutes=10)


def dead_identities(crm: CRM, conn: sa.Connection, since: datetime) -> dict[tuple[str, str], datetime]:
    """The identities of ``crm``'s workspace deleted at or after ``since``,
    with when (the latest time each was deleted); usually none: one indexed
    look-up.  The values are keys (:func:`identity_key`): look an identity
    ``(kind, value)`` up as ``(kind, identity_key(value))``."""
    tt = crm.db.tables[TOMBSTONES]
    recent = sa.and_(tt.c.workspace_id == crm.workspace, tt.c.deleted_at >= since)
    if conn.execute(sa.select(tt.c.id).where(recent).limit(1)).first() is None:
        return {}
    out: dict[tuple[str, str], datetime] = {}
    for kind, value, at in conn.execute(sa.select(tt.c.kind, tt.c.value, tt.c.deleted_at).where(recent)):
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
        before = out.get((kind, value))
        if before is None or at > before:
            out[(kind, value)] = at
    return out


def forget_tombstones(crm: CRM, conn: sa.Connection) -> None:
    """Delete the tombstones no waiting inbox row can need any more: older than
    :data:`TOMBSTONE_KEEP` and than the oldest row of the inbox (all workspaces)."""
    tt, t = crm.db.tables[TOMBSTONES], crm.db.tables[INBOX]
    limit = crm.now() - TOMBSTONE_KEEP
    if conn.execute(sa.select(tt.c.id).where(tt.c.deleted_at < limit).limit(1)).first() is None:
        return
    oldest = conn.execute(sa.select(sa.func.min(t.c.received_at))).scalar()
    if oldest is not None:
        oldest = oldest.replace(tzinfo=UTC) if oldest.tzinfo is None else oldest
        limit = min(limit, oldest)
    conn.execute(tt.delete().where(tt.c.deleted_at < limit))


def _names(message: Any, wanted: set[tuple[str, str]]) -> bool:
    return not wanted.isdisjoint(message_identities(message))


def _erase_inbox(crm: CRM, wanted: set[tuple[str, str]]) -> tuple[int, int, int]:
    t = crm.db.tables[INBOX]
    messages = rewritten = deleted = 0
    last = 0
    while True:
        with crm.db.write() as conn:
            q = (
                sa.select(t.c.id, t.c.call, t.c.count, t.c.payload)
                .where(t.c.workspace_id == crm.workspace, t.c.id > last)
                .order_by(t.c.id)
                .limit(CHUNK)
            )
            if conn.dialect.name == "postgresql":
                q = q.with_for_update()  # a processor's claimed rows: wait for its tick (then they are gone)
            rows = conn.execute(q).all()
            if not rows:
                break
            last = rows[-1].id
            for row in rows:
                outcome = _without(row.call, bytes(row.payload), wanted)
                if outcome is None:
                    continue
                payload, left, removed = outcome
                messages += removed
                if left == 0:
                    conn.execute(t.delete().where(t.c.id == row.id))
                    deleted += 1
                else:
                    conn.execute(t.update().where(t.c.id == row.id).values(payload=payload, count=left))
                    rewritten += 1
    return messages, rewritten, deleted


def _without(call: str | None, payload: bytes, wanted: set[tuple[str, str]]) -> tuple[bytes, int, int] | None:
    """The row without the messages that name ``wanted``: ``(payload, left, removed)``,
    or None when it names none of them."""
    try:
        doc = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        # Unreadable (the processor rejects it whole): taken out if a value occurs in it.
        return (b"", 0, 1) if _in_bytes(payload, wanted) else None
    if call is not None:
        return (b"", 0, 1) if _names(doc, wanted) else None
    batch = doc.get("batch") if type(doc) is dict else None
    if type(batch) is not list:
        return (b"", 0, 1) if _in_bytes(payload, wanted) else None
    keep = [m for m in batch if not _names(m, wanted)]
    removed = len(batch) - len(keep)
    if not removed:
        return None
    if not keep:
        return b"", 0, removed
    return msgspec.json.encode({**doc, "batch": keep}), len(keep), removed


def _erase_rejected(crm: CRM, conn: sa.Connection, wanted: set[tuple[str, str]]) -> int:
    rt, it = crm.db.tables[REJECTED], crm.db.tables[REJECTED_IDS]
    by_kind: dict[str, list[str]] = {}
    for kind, value in wanted:
        by_kind.setdefault(kind, []).append(identity_key(value))
    ids: set[int] = set()
    for kind, values in by_kind.items():
        for start in range(0, len(values), 500):
            ids.update(
                conn.execute(
                    sa.select(it.c.rejected_id).where(
                        it.c.workspace_id == crm.workspace,
                        it.c.kind == kind,
                        it.c.value.in_(values[start : start + 500]),
                    )
                ).scalars()
            )
    # Entries no identity could be read from: look for the values in their bytes.
    unreadable = conn.execute(
        sa.select(rt.c.id, rt.c.message).where(rt.c.workspace_id == crm.workspace, rt.c.reason == "unreadable")
    ).all()
    for row in unreadable:
        if _in_bytes(bytes(row.message), wanted):
            ids.add(row.id)
    done = sorted(ids)
    for start in range(0, len(done), 500):
        part = done[start : start + 500]
        conn.execute(it.delete().where(it.c.rejected_id.in_(part)))
        conn.execute(rt.delete().where(rt.c.id.in_(part)))
    return len(done)


def identity_rows(workspace: str, rejected_id: int, message: Any, raw: bytes | None = None) -> list[dict[str, Any]]:
    """The ``ingest_rejected_ids`` rows of one rejected message (``raw``: its
    bytes, read by :func:`raw_identities` when they are not a message)."""
    found = message_identities(message) if type(message) is dict or raw is None else raw_identities(raw)
    return [
        {"rejected_id": rejected_id, "workspace_id": workspace, "kind": kind, "value": identity_key(value)}
        for kind, value in sorted(found)
    ]
