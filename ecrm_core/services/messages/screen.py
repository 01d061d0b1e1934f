"""Screening: what ``send_many`` would decide for a set of customers, without writing anything.

``crm.messages.screen(channel, customer_ids, at=..., planned=...)`` runs the
pipeline's decision — address, consent and purpose, suppressions, frequency
caps, quiet hours, dedupe keys — for a moment ``at`` (now by default, or a
time in the future) and answers, per customer, *queue* (and when the message
would be handed to the channel), *block* (with the reason) or *duplicate*.
Nothing is rendered, stored or locked.  Messages the caller plans but has not
sent (a campaign simulation's earlier steps) are passed as ``planned`` and
count against the caps as if they were in the outbox.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Literal

import sqlalchemy as sa
from attrs import field, frozen

from ...errors import ValidationError
from .records import quiet_until
from .safety import _address_problem
from .send import _capped, _Sending

__all__ = ["Screened", "Screening"]

#: Customers screened per query batch.
_CHUNK = 500


@frozen(kw_only=True)
class Screened:
    """The decision for one customer.

    ``decision`` is ``"queue"`` (the message would go to the outbox; it would
    be handed to the channel at ``due_at``, later than asked when quiet hours
    moved it: ``scheduled``), ``"block"`` (``reason``: ``no_address``,
    ``no_consent``, ``opted_out``, ``suppressed``, ``frequency_cap``,
    ``invalid_address``, ``address_failed``) or ``"duplicate"`` (the
    ``dedupe_key`` is already in the outbox).
    """

    customer_id: int
    decision: Literal["queue", "block", "duplicate"]
    reason: str | None = None
    due_at: datetime | None = None
    scheduled: bool = False


@frozen(kw_only=True)
class Screening:
    """What ``send_many(channel, …, purpose=…)`` would decide at ``at``, per customer."""

    channel: str
    purpose: str
    at: datetime
    decisions: Mapping[int, Screened] = field(factory=dict)
    #: ids that are not live customers of the workspace (unknown or merged): send would skip them.
    unknown: tuple[int, ...] = ()

    @property
    def queued(self) -> int:
        return sum(1 for d in self.decisions.values() if d.decision == "queue")

    @property
    def scheduled(self) -> int:
        """Queued messages that quiet hours would hold back."""
        return sum(1 for d in self.decisions.values() if d.scheduled)

    @property
    def duplicates(self) -> int:
        return sum(1 for d in self.decisions.values() if d.decision == "duplicate")

    @property
    def blocked(self) -> dict[str, int]:
        """Blocked customers by reason."""
        out: dict[str, int] = {}
        for d in self.decisions.values():
            if d.decision == "block" and d.reason is not None:
                out[d.reason] = out.get(d.reason, 0) + 1
        return out

    def ids(self, decision: str = "queue") -> builtins.list[int]:
        """The customers with this decision, in id order."""
        return sorted(cid for cid, d in self.decisions.items() if d.decision == decision)


class _Screening(_Sending):
    """``screen``: the decision of ``send_many``, read-only."""

    def screen(
        self,
        channel: str,
        customer_ids: Iterable[int],
        *,
        purpose: str = "marketing",
        at: datetime | None = None,
        dedupe_key: str | None = None,
        planned: Mapping[int, Sequence[datetime]] | None = None,
    ) -> Screening:
        """What ``send_many`` would decide for these customers at ``at``, without writing.

        :param channel: a registered channel.
        :param purpose: a registered purpose (consent, caps and quiet hours
            depend on it, as for ``send``).
        :param at: the moment of the decision (aware; default now).  Caps
            count the outbox's messages made in each cap's window ending at
            ``at``; quiet hours are those of ``at`` in each customer's
            timezone.  Customers' consent, suppressions and addresses are
            today's (nobody can know tomorrow's).
        :param dedupe_key: as for ``send_many`` (``"…{customer_id}…"``):
            customers whose key is already in the outbox are ``duplicate``.
        :param planned: customer id → times of messages on this channel that
            are *not* in the outbox but should count against the caps (a
            simulation's earlier sends); only times inside a cap's window
            ending at ``at`` count.

        Returns a :class:`Screening`.  Nothing is rendered (template errors
        are not predicted), stored or locked.
        """
        self.ready()
        from ...validation import aware_datetime

        channels = self.crm.channels
        channels.spec(channel)
        chan = channels.get(channel)
        pol = channels.policy(channel)
        purp = self._purpose(purpose)
        at = aware_datetime(at, "at") if at is not None else self.crm.now()
        if dedupe_key is not None and "{customer_id}" not in dedupe_key:
            raise ValidationError(
                "dedupe_key", dedupe_key, "must contain {customer_id}", "use e.g. 'spring-sale-{customer_id}'"
            )
        ids: builtins.list[int] = []
        for i, cid in enumerate(dict.fromkeys(customer_ids)):
            if isinstance(cid, bool) or not isinstance(cid, int):
                raise ValidationError(f"customer_ids[{i}]", cid, "not a customer id", "pass whole numbers")
            ids.append(cid)
        decisions: dict[int, Screened] = {}
        unknown: builtins.list[int] = []
        counted = bool(pol.frequency_caps) and not purp.transactional
        t = self.t("messages")
        for k in range(0, len(ids), _CHUNK):
            part = ids[k : k + _CHUNK]
            customers = self._customers(part, False)
            unknown.extend(cid for cid in part if cid not in customers)
            addresses: dict[int, str | None] = {}
            for cid, c in customers.items():
                try:
                    address = chan.address(c)
                except Exception:
                    decisions[cid] = Screened(customer_id=cid, decision="block", reason="address_failed")
                    continue
                if address and _address_problem(address) is not None:
                    decisions[cid] = Screened(customer_id=cid, decision="block", reason="invalid_address")
                    continue
                addresses[cid] = address or None
            live = sorted(addresses)
            with self.db.read() as conn:
                suppressed = self._suppressed(conn, channel, [a for a in addresses.values() if a])
                caps = self._cap_counts(conn, channel, live, pol, now=at, lock=False) if counted else []
                existing: set[str] = set()
                if dedupe_key is not None and live:
                    keys = [dedupe_key.replace("{customer_id}", str(cid)) for cid in live]
                    existing = set(
                        conn.scalars(
                            sa.select(t.c.dedupe_key).where(
                                t.c.workspace_id == self.workspace, t.c.dedupe_key.in_(keys)
                            )
                        )
                    )
            if planned and caps:
                for (_limit, seconds), counts in zip(pol.frequency_caps, caps, strict=True):
                    since = at - timedelta(seconds=seconds)
                    for cid in live:
                        extra = sum(1 for when in planned.get(cid, ()) if since <= when <= at)
                        if extra:
                            counts[cid] = counts.get(cid, 0) + extra
            for cid in live:
                if dedupe_key is not None and dedupe_key.replace("{customer_id}", str(cid)) in existing:
                    decisions[cid] = Screened(customer_id=cid, decision="duplicate")
                    continue
                c = customers[cid]
                reason = self._block_reason(c, addresses[cid], channel, purp, suppressed)
                if reason is None and caps and _capped(caps, pol, cid):
                    reason = "frequency_cap"
                if reason is not None:
                    decisions[cid] = Screened(customer_id=cid, decision="block", reason=reason)
                    continue
                due, later = at, None
                if not purp.transactional:
                    later = quiet_until(at, c["timezone"] or pol.default_timezone, pol.quiet_start, pol.quiet_end)
                decisions[cid] = Screened(
                    customer_id=cid, decision="queue", due_at=later or due, scheduled=later is not None
                )
        return Screening(channel=channel, purpose=purp.name, at=at, decisions=decisions, unknown=tuple(unknown))
