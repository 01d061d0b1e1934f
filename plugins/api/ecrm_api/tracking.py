"""Segment Tracking API messages mapped to ecrm customers and interactions.

No HTTP here: :class:`Tracker` takes decoded JSON messages (the bodies of
``/v1/identify`` … ``/v1/alias``, or the items of a ``/v1/batch``) and
stores what they say through the ``CRM`` facade.  The routes in
:mod:`ecrm_api.routes.tracking` read, decompress and decode the request and
hand the messages over.

=========  ===================================================================
call       what ecrm does
=========  ===================================================================
identify   upserts the customer by ``userId`` (external id) with the traits
           (``email``, ``phone``, ``name`` or ``firstName`` + ``lastName``;
           other traits merged into ``attributes``), links ``anonymousId`` as
           an alias of kind ``anonymous`` (merging the anonymous prospect into
           the identified customer), records an ``identify`` interaction
track      an interaction: the event name mapped through
           ``ApiConfig.event_kinds`` (``Order Completed`` -> ``purchase`` with
           ``amount`` from ``properties.revenue`` or ``properties.total``),
           else kind ``event``; ``properties["event"]`` is the event name
page       a ``page_view`` interaction (``name``/``category`` kept)
screen     a ``screen_view`` interaction (``name``/``category`` kept)
group      sets ``attributes["group"] = {"id", "traits"}`` on the customer and
           records an ``event`` interaction named ``group``
alias      merges the customer known by ``previousId`` into the one with
           ``userId`` (or links ``previousId`` as an ``anonymous`` alias)
=========  ===================================================================

``messageId`` becomes the interaction's idempotency key ``segment:<id>``:
a retry stores nothing new, the same id with another payload is a conflict.
Client clocks are corrected as Segment does:
``timestamp = receivedAt - (sentAt - originalTimestamp)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ecrm_core.domain import Alias
from ecrm_core.errors import Conflict, ValidationError

from .events import store_events
from .messages import (
    _IDENTITY_TRAITS,
    BATCH_MAX_MESSAGES,
    CALL_TYPES,
    KEY_PREFIX,
    MESSAGE_MAX_BYTES,
    MessageError,
    MessageReader,
    Outcome,
    Parsed,
    Rejected,
    _Message,
    corrected_time,
    parse_time,
)

__all__ = [
    "BATCH_MAX_MESSAGES",
    "CALL_TYPES",
    "KEY_PREFIX",
    "MESSAGE_MAX_BYTES",
    "MessageError",
    "Outcome",
    "Parsed",
    "Rejected",
    "Tracker",
    "corrected_time",
    "parse_time",
    "store_events",
]


class Tracker(MessageReader):
    """Stores Segment messages in ``crm`` (one workspace's CRM view): the checks
    and the mapping of :class:`~ecrm_api.messages.MessageReader`, then the
    customer changes one by one (here) and the events set-based
    (:func:`~ecrm_api.events.store_events`).
    """

    def store_slow(self, parsed: Parsed) -> None:
        """Apply the customer-changing messages (identify, group, alias) one by
        one, counting into ``parsed``; the events (:attr:`Parsed.fast`) are left
        for :func:`store_events`."""
        for m in parsed.slow:
            try:
                stored, more = self._one(m)
            except MessageError as exc:
                parsed.rejected.append(Rejected(m.index, m.message_id, exc.field, exc.problem, exc.fix, exc.conflict))
                continue
            parsed.accepted += stored
            parsed.duplicates += 1 - stored
            parsed.notes += more
        parsed.slow = []

    def ingest(
        self,
        messages: Sequence[Any],
        *,
        path: str = "body.batch",
        sent_at: datetime | None = None,
        call: str | None = None,
    ) -> Outcome:
        """Store a batch: each valid message is stored, each invalid one reported.

        ``track``/``page``/``screen`` go through one set-based
        ``crm.interactions.track_many``; ``identify``, ``group`` and
        ``alias`` change customers and are handled one by one first (so the
        events of the same batch land on the stitched customer).  The HTTP
        endpoints do the same through the app's group-commit writer
        (:mod:`ecrm_api.writer`), which stores the events of many requests in
        one transaction.
        """
        parsed = self.parse(messages, path=path, sent_at=sent_at, call=call)
        self.store_slow(parsed)
        if parsed.fast:
            store_events(self.crm, [parsed])
        return parsed.outcome()

    def ingest_one(self, message: Any, *, call: str) -> Outcome:
        """Store one message (a single-call endpoint); raises :class:`MessageError` when rejected."""
        parsed = self.parse_one(message, call=call)
        self.store_slow(parsed)
        if parsed.fast:
            store_events(self.crm, [parsed])
        return parsed.single()

    # set-based: track, page, screen (and the interaction of the others)
    def _many(self, msgs: list[_Message]) -> tuple[int, int, list[Rejected]]:
        parsed = Parsed(fast=msgs)
        store_events(self.crm, [parsed])
        return parsed.accepted, parsed.duplicates, parsed.rejected

    # one by one: identify, group, alias
    def _one(self, m: _Message) -> tuple[int, list[str]]:
        """Store one customer-changing message; ``(1, notes)`` stored, ``(0, [])`` a duplicate."""
        key = m.row.get("idempotency_key")
        if key is not None and self.crm.interactions.by_key(key) is not None:
            # A retry (or a reuse): the customer changes were made the first
            # time; the interaction decides duplicate or conflict.
            a, _d, errs = self._many([m])
            if errs:
                e = errs[0]
                raise MessageError(e.field, e.problem, e.fix, conflict=e.conflict)
            return a, []
        notes: list[str] = []
        try:
            if m.type == "identify":
                cid = self._stitch(m.user_id, m.anonymous_id, notes)
                self._apply_traits(cid, m.customer, notes)
            elif m.type == "alias":
                assert m.user_id is not None and m.previous_id is not None
                self._alias(m.user_id, m.previous_id)
            else:  # group
                cid = self._stitch(m.user_id, m.anonymous_id if m.user_id is None else None, notes)
                self.crm.customers.update(cid, attributes={"group": m.group})
        except Conflict as exc:
            raise MessageError(m.path, "conflicts with stored customers", str(exc), conflict=True) from None
        except ValidationError as exc:
            field = exc.field
            if field.startswith("attributes.group.traits"):  # group: name what was sent
                field = "traits" + field[len("attributes.group.traits") :]
            raise MessageError(f"{m.path}.{field}", exc.problem, exc.fix) from None
        a, _d, errs = self._many([m])
        if errs:
            e = errs[0]
            raise MessageError(e.field, e.problem, e.fix, conflict=e.conflict)
        return a, [f"{m.path}: {n}" for n in notes]

    def _stitch(self, user_id: str | None, anonymous_id: str | None, notes: list[str]) -> int:
        """The customer of ``userId`` (created if new), with ``anonymousId`` linked to it."""
        customers = self.crm.customers
        anon = Alias("anonymous", anonymous_id) if anonymous_id else None
        if user_id is None:
            assert anon is not None
            found = customers.find(alias=anon)
            if found is not None:
                assert found.id is not None
                return found.id
            created = customers.upsert(aliases=[anon])
            assert created.id is not None
            return created.id
        by_user = customers.find(external_id=user_id)
        by_anon = customers.find(alias=anon) if anon is not None else None
        if by_anon is not None and by_anon.external_id not in (None, user_id):
            notes.append(
                f"anonymousId {anonymous_id!r} belongs to another identified customer ({by_anon.id}); not linked"
            )
            anon, by_anon = None, None
        if by_user is not None and by_anon is not None and by_user.id != by_anon.id:
            assert by_user.id is not None and by_anon.id is not None
            customers.merge(by_anon.id, into=by_user.id, actor="segment", reason="identify: anonymousId -> userId")
            return by_user.id
        if by_user is not None and (anon is None or by_anon is not None):
            assert by_user.id is not None
            return by_user.id
        c = customers.upsert(external_id=user_id, aliases=[anon] if anon is not None else None)
        assert c.id is not None
        return c.id

    def _apply_traits(self, cid: int, fields: dict[str, Any], notes: list[str]) -> None:
        if not fields:
            return
        try:
            self.crm.customers.update(cid, **fields)
        except Conflict:
            # The e-mail or phone belongs to someone else: keep the rest.
            rest = {k: v for k, v in fields.items() if k not in _IDENTITY_TRAITS}
            dropped = sorted(set(fields) - set(rest))
            notes.append(f"traits {', '.join(dropped)} belong to another customer; not applied")
            if rest:
                self.crm.customers.update(cid, **rest)

    def _alias(self, user_id: str, previous_id: str) -> None:
        customers = self.crm.customers
        previous = customers.find(external_id=previous_id) or customers.find(alias=Alias("anonymous", previous_id))
        target = customers.find(external_id=user_id)
        if target is None:
            target = customers.upsert(external_id=user_id)
        assert target.id is not None
        if previous is None:
            customers.upsert(external_id=user_id, aliases=[Alias("anonymous", previous_id)])
        elif previous.id != target.id:
            assert previous.id is not None
            customers.merge(previous.id, into=target.id, actor="segment", reason="alias: previousId -> userId")
