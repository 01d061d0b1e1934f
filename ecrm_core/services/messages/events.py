"""Feedback: inbound events (receipts, bounces, complaints, unsubscribes, opens, clicks,
replies) matched to the message and customer they are about, checked, and applied."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from ...channels import (
    EVENT_KINDS,
    MESSAGE_EVENTS,
    ChannelConfigError,
    MessageEvent,
    normalize_address,
)
from ...errors import EcrmError, IdempotencyConflict
from .deliver import _Delivering
from .records import EventReport, IgnoredEvent
from .safety import _address_problem, _clean, _clean_opt, _plausible_uid

log = logging.getLogger("ecrm.messages")


class _Feedback(_Delivering):
    """``apply``/``apply_events`` and how an event finds its customer."""

    # -- feedback --------------------------------------------------------
    def apply_events(self, events: Iterable[MessageEvent]) -> builtins.list[MessageEvent]:
        """Apply what came back from a channel; return the events that were applied.

        The same as :meth:`apply` (read it for what is checked); this returns
        only ``applied``.  Ignored events are logged with the reason.
        """
        return builtins.list(self.apply(events).applied)

    def apply(self, events: Iterable[MessageEvent]) -> EventReport:
        """Apply what came back from a channel: applied, duplicates, ignored.

        What each event type does is in ``docs/channels.md`` ("Event types"):
        bounces suppress the message's address on the channel (``all``);
        complaints suppress it for non-transactional messages and deny the
        channel's consent; ``unsubscribed``/``resubscribed`` change consent
        for the purpose (or the channel); every applied event goes on the
        customer's timeline.  An event whose ``key`` was applied before is a
        duplicate: a replayed webhook or link changes nothing.

        Nothing is taken on trust:

        * an event naming a ``message_id`` is applied only in that message's
          workspace, to that message's customer, and only if its ``address``
          (when given) is that message's recipient (both normalised by the
          channel's :meth:`~ecrm_core.channels.Channel.normalize_address`),
          its ``channel`` the message's, its ``customer_id``/``workspace``
          (when given) the message's; a ``message_id`` that names no message
          is ignored;
        * the types in :data:`~ecrm_core.channels.MESSAGE_EVENTS` (bounces,
          complaints, deliveries, opens, clicks) need such a message;
        * ``unsubscribed``/``resubscribed``/``replied`` without a message go
          to ``customer_id`` (in the customer's workspace) or to the customer
          who has ``address`` as a stored identity (the channel's
          :attr:`~ecrm_core.registry.ChannelSpec.identities`), else the
          latest message sent to that address, in the event's ``workspace``
          (default: this view's).

        Anything else is ignored, logged with the reason and listed in
        :attr:`EventReport.ignored`; nothing here raises for a bad event (a
        database failure does raise: the sender should try again).
        """
        self.ready()
        events = builtins.list(events)
        if not events:
            return EventReport()
        t = self.t("messages")
        uids = {e.message_id for e in events if e.message_id is not None and _plausible_uid(e.message_id)}
        by_uid: dict[str, Mapping[str, Any]] = {}
        with self.db.read() as conn:
            ordered = sorted(uids)
            for i in range(0, len(ordered), 500):
                q = sa.select(t.c.uid, t.c.workspace_id, t.c.customer_id, t.c.address, t.c.purpose, t.c.channel).where(
                    t.c.uid.in_(ordered[i : i + 500])
                )
                by_uid.update({r.uid: r._mapping for r in conn.execute(q)})
        applied: builtins.list[MessageEvent] = []
        duplicates: builtins.list[MessageEvent] = []
        ignored: builtins.list[IgnoredEvent] = []

        def ignore(e: MessageEvent, reason: str) -> None:
            log.warning(
                "%s event on channel %s ignored: %s (message %s, address %s, key %s)",
                e.type,
                _clean(e.channel, 64),
                reason,
                _clean_opt(e.message_id, 80),
                _clean_opt(e.address, 120),
                _clean_opt(e.key, 120),
            )
            ignored.append(IgnoredEvent(event=e, reason=reason))

        for e in events:
            try:
                resolved = self._resolve_event(e, by_uid)
            except EcrmError as exc:
                ignore(e, f"could not be matched: {_clean(exc, 300)}")
                continue
            if isinstance(resolved, str):
                ignore(e, resolved)
                continue
            event, msg = resolved
            assert event.workspace is not None
            view = self.crm if event.workspace == self.workspace else self.crm.in_workspace(event.workspace)
            try:
                new = view.messages._apply_one(event, msg)
            except EcrmError as exc:
                ignore(e, f"could not be applied: {_clean(exc, 300)}")
                continue
            (applied if new else duplicates).append(event)
        if applied:
            self.crm.emit("ecrm_message_events", events=applied)
        return EventReport(applied=tuple(applied), duplicates=tuple(duplicates), ignored=tuple(ignored))

    def _resolve_event(
        self, e: MessageEvent, by_uid: Mapping[str, Mapping[str, Any]]
    ) -> tuple[MessageEvent, Mapping[str, Any] | None] | str:
        """The event completed with its workspace, customer and address, and its
        message; or why it is ignored."""
        import attrs

        if e.channel not in self.crm.registry.channels:
            return f"no channel is registered as {_clean(e.channel, 64)!r}"
        if e.message_id is not None:
            msg = by_uid.get(e.message_id) if _plausible_uid(e.message_id) else None
            if msg is None:
                return "no message has this message_id"
            if e.channel != msg["channel"]:
                return f"the message was sent on channel {msg['channel']!r}, not {e.channel!r}"
            if e.workspace is not None and e.workspace != msg["workspace_id"]:
                return "the event names another workspace than its message's"
            if e.customer_id is not None and e.customer_id != msg["customer_id"]:
                return "the event names another customer than its message's"
            if e.address is not None:
                recipient = msg["address"]
                if not isinstance(e.address, str) or recipient is None:
                    return "the address is not the message's recipient"
                norm = self._normalizer(e.channel)
                if norm(e.address) != norm(recipient):
                    return "the address is not the message's recipient"
            event = attrs.evolve(
                e, workspace=msg["workspace_id"], customer_id=msg["customer_id"], address=msg["address"]
            )
            return event, msg
        if e.type in MESSAGE_EVENTS:
            return f"a {e.type} event needs the message it is about (message_id)"
        if e.customer_id is not None:
            if isinstance(e.customer_id, bool) or not isinstance(e.customer_id, int):
                return "customer_id is not an integer"
            c = self.t("customers")
            with self.db.read() as conn:
                row = conn.execute(
                    sa.select(c.c.workspace_id, sa.func.coalesce(c.c.merged_into, c.c.id)).where(
                        c.c.id == e.customer_id
                    )
                ).first()
            if row is None:
                return "no customer has this customer_id"
            workspace, live = row[0], row[1]
            if e.workspace is not None and e.workspace != workspace:
                return "the customer is not in the event's workspace"
            return attrs.evolve(e, workspace=workspace, customer_id=live), None
        if e.address is None:
            return "the event names no message, customer or address"
        if not isinstance(e.address, str) or not e.address.strip() or _address_problem(e.address):
            return "the address is not an address"
        workspace = e.workspace or self.workspace
        view = self if workspace == self.workspace else self.crm.in_workspace(workspace).messages
        customer_id = view._customer_by_address(e.channel, e.address)
        if customer_id is None:
            return f"no customer of workspace {workspace!r} has this address"
        return attrs.evolve(e, workspace=workspace, customer_id=customer_id), None

    def _normalizer(self, channel: str) -> Callable[[str], str]:
        """The channel's ``normalize_address`` (the default one when the channel
        is unknown here or cannot be built)."""
        try:
            if channel in self.crm.registry.channels:
                return self.crm.channels.get(channel).normalize_address
        except ChannelConfigError:
            pass
        return normalize_address

    def identity_kinds(self, channel: str, address: str) -> tuple[str, ...]:
        """The identity (alias) kinds an address of ``channel`` is looked up as:
        the ChannelSpec's ``identities``, else ``email`` for an address with
        ``@`` and ``phone`` for any other."""
        spec = self.crm.registry.channels.get(channel)
        kinds = getattr(spec, "identities", None)
        if kinds is not None:
            return tuple(kinds)
        return ("email",) if "@" in address else ("phone",)

    def _customer_by_address(self, channel: str, address: str) -> int | None:
        """The customer reached at ``address`` on ``channel`` in this workspace:
        first through stored identities (see :meth:`identity_kinds`), then
        through the latest message sent there; ``None`` if nobody."""
        from ...domain import Alias

        aliases: builtins.list[Alias] = []
        for kind in self.identity_kinds(channel, address):
            try:
                aliases.append(Alias(kind, address))
            except (EcrmError, ValueError):
                continue  # not an address of that kind
        if aliases:
            found = self.crm.customers._resolve(None, aliases)
            for al in aliases:
                if al in found:
                    return found[al]
        candidates = {address, address.strip(), self._normalizer(channel)(address)}
        t, c = self.t("messages"), self.t("customers")
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(sa.func.coalesce(c.c.merged_into, c.c.id))
                .join(c, c.c.id == t.c.customer_id)
                .where(t.c.workspace_id == self.workspace, t.c.channel == channel, t.c.address.in_(sorted(candidates)))
                .order_by(t.c.id.desc())
                .limit(1)
            ).first()
        return int(row[0]) if row else None

    def _apply_one(self, e: MessageEvent, msg: Mapping[str, Any] | None) -> bool:
        """Apply one resolved event (its customer and workspace known, this
        view in that workspace); ``False`` for a replay."""
        kind = EVENT_KINDS[e.type]
        if e.type == "opened" and e.channel == "email":
            kind = "email_open"
        now = self.crm.now()
        with self.db.write() as conn:
            if e.customer_id is not None:
                props: dict[str, Any] = dict(e.properties)
                for k in ("message_id", "purpose", "url", "detail"):
                    v = getattr(e, k)
                    if v:
                        props["message" if k == "message_id" else k] = _clean(v, 2000)
                try:
                    _, created = self.crm.using(conn).interactions.track_status(
                        kind,
                        customer_id=e.customer_id,
                        channel=e.channel,
                        occurred_at=e.occurred_at or now,
                        idempotency_key=f"event:{e.channel}:{_clean(e.key, 150)}" if e.key else None,
                        properties=props,
                    )
                except IdempotencyConflict:
                    return False  # the same event key, told differently: still a replay
                if not created:
                    return False  # a replay: nothing changes
            detail = _clean(e.detail, 1000) if e.detail else None
            if msg is not None and e.type == "bounced" and e.address:
                self._suppress(conn, [(e.channel, e.address, "all", "hard_bounce", detail)])
            elif msg is not None and e.type == "complained" and e.address:
                self._suppress(conn, [(e.channel, e.address, "marketing", "complaint", detail)])
            # consent changes commit with the event: a crash cannot keep one without the other
            view = self.crm.using(conn)
            if e.customer_id is not None and e.type in ("complained", "unsubscribed", "resubscribed"):
                target = e.channel if (e.type == "complained" or not e.purpose) else f"{e.channel}:{e.purpose}"
                granted = e.type == "resubscribed"
                current = view.customers.get(e.customer_id)
                state = current.consent.get(target)
                if state is None or state.granted != granted:
                    view.customers.set_consent(
                        e.customer_id,
                        target,
                        granted,
                        source=f"{e.channel} {e.type}" + (f" ({e.message_id})" if e.message_id else ""),
                    )
        return True
