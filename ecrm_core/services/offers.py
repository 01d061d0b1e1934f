"""Offers: what to give a customer, and when it is live."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs
import sqlalchemy as sa

from ..domain import OFFER_WRITABLE, Offer
from ..errors import Conflict, NotFound, ValidationError
from ..validation import aware_datetime, thaw
from ._base import Service
from .customers._common import _unknown

__all__ = ["Offers"]


class Offers(Service):
    """``crm.offers``: create, read, change and query offers."""

    def _from_row(self, m: Mapping[Any, Any]) -> Offer:
        return Offer(
            id=m["id"],
            workspace=m["workspace_id"],
            code=m["code"],
            name=m["name"],
            kind=m["kind"],
            content=m["content"],
            valid_from=m["valid_from"],
            valid_until=m["valid_until"],
            priority=m["priority"],
            channels=m["channels"],
            eligibility=m["eligibility"],
            status=m["status"],
            created_at=m["created_at"],
            updated_at=m["updated_at"],
        )

    def _row(self, o: Offer) -> dict[str, Any]:
        return {
            "workspace_id": self.workspace,
            "code": o.code,
            "name": o.name,
            "kind": o.kind,
            "content": thaw(o.content),
            "valid_from": o.valid_from,
            "valid_until": o.valid_until,
            "priority": o.priority,
            "channels": list(o.channels),
            "eligibility": thaw(o.eligibility),
            "status": o.status,
            "created_at": o.created_at,
            "updated_at": o.updated_at,
        }

    def _eligibility(self, fields: dict[str, Any]) -> None:
        """Validate an eligibility rule (text or tree) into its canonical tree, in place."""
        rule = fields.get("eligibility")
        if rule is not None:
            try:
                fields["eligibility"] = dict(self.crm.segments.compile(rule).tree)
            except ValidationError as exc:
                raise exc.at("eligibility") from None

    def create(self, code: str, name: str, **fields: Any) -> Offer:
        """Store a new offer; ``code`` must be unused in this workspace.

        ``eligibility`` is a rule (text or tree, see docs/rules.md) saying
        who the offer is for; it is validated and stored as a tree.
        """
        _unknown(fields, OFFER_WRITABLE)
        self.ready()
        self._eligibility(fields)
        now = self.crm.now()
        offer = Offer(code=code, name=name, workspace=self.workspace, created_at=now, updated_at=now, **fields)
        t = self.t("offers")

        def check_free(conn: sa.Connection) -> None:
            taken = conn.execute(
                sa.select(t.c.id).where(t.c.workspace_id == self.workspace, t.c.code == offer.code)
            ).first()
            if taken is not None:
                raise Conflict(f"offer code {offer.code!r} is already used by offer {taken.id}; choose another code")

        try:
            with self.db.write() as conn:
                check_free(conn)
                oid = conn.execute(sa.insert(t).values(self._row(offer))).inserted_primary_key[0]  # type: ignore[index]
        except sa.exc.IntegrityError:
            # Another transaction took the code between our check and our
            # insert (PostgreSQL: no database-wide write lock): same Conflict.
            with self.db.read() as conn:
                check_free(conn)
            raise
        return attrs.evolve(offer, id=oid)

    def get(self, ref: int | str) -> Offer:
        """An offer by id or by code."""
        self.ready()
        t = self.t("offers")
        where = t.c.code == ref if isinstance(ref, str) else t.c.id == ref
        with self.db.read() as conn:
            row = conn.execute(sa.select(t).where(t.c.workspace_id == self.workspace, where)).first()
        if row is None:
            raise NotFound("offer", ref)
        return self._from_row(row._mapping)

    def update(self, ref: int | str, **changes: Any) -> Offer:
        """Change fields of an offer (any of its writable fields)."""
        _unknown(changes, OFFER_WRITABLE)
        self._eligibility(changes)
        current = self.get(ref)
        after = attrs.evolve(current, **changes, updated_at=self.crm.now())
        t = self.t("offers")
        row = self._row(after)
        del row["created_at"]
        with self.db.write() as conn:
            conn.execute(sa.update(t).where(t.c.workspace_id == self.workspace, t.c.id == current.id).values(row))
        return after

    def delete(self, ref: int | str) -> None:
        """Delete an offer for good (use ``update(status='archived')`` to keep its history)."""
        current = self.get(ref)
        t = self.t("offers")
        with self.db.write() as conn:
            conn.execute(sa.delete(t).where(t.c.workspace_id == self.workspace, t.c.id == current.id))

    def list(self, *, status: str | None = None, limit: int = 1000) -> builtins.list[Offer]:
        """Offers by priority (highest first), then code."""
        self.ready()
        t = self.t("offers")
        q = sa.select(t).where(t.c.workspace_id == self.workspace).order_by(t.c.priority.desc(), t.c.code).limit(limit)
        if status is not None:
            q = q.where(t.c.status == status)
        with self.db.read() as conn:
            return [self._from_row(r._mapping) for r in conn.execute(q)]

    def active(self, at: datetime | None = None, *, channel: str | None = None) -> builtins.list[Offer]:
        """Offers live at ``at`` (default now), optionally on ``channel``; highest priority first."""
        when = self.crm.now() if at is None else aware_datetime(at, "at")
        if channel is not None and not isinstance(channel, str):
            raise ValidationError("channel", channel, "not a channel name", "send e.g. 'email'")
        self.ready()
        t = self.t("offers")
        q = (
            sa.select(t)
            .where(
                t.c.workspace_id == self.workspace,
                t.c.status == "active",
                sa.or_(t.c.valid_from.is_(None), t.c.valid_from <= when),
                sa.or_(t.c.valid_until.is_(None), t.c.valid_until > when),
            )
            .order_by(t.c.priority.desc(), t.c.code)
        )
        with self.db.read() as conn:
            offers = [self._from_row(r._mapping) for r in conn.execute(q)]
        # Channel lists are short JSON arrays; filtering here keeps the SQL portable.
        return [o for o in offers if channel is None or not o.channels or channel in o.channels]

    def eligible(
        self, customer_id: int, at: datetime | None = None, *, channel: str | None = None
    ) -> builtins.list[Offer]:
        """The active offers this customer is eligible for, highest priority first.

        An offer without an eligibility rule is for everyone.  Rules are
        evaluated in memory against one load of the customer's data.
        Raises :class:`~ecrm_core.errors.NotFound` for a customer that is not
        in this workspace (a merged id answers for the survivor).
        """
        customer_id = self.crm.customers.get(customer_id).id or customer_id
        offers = self.active(at, channel=channel)
        rules = {o.code: self.crm.segments.compile(o.eligibility) for o in offers if o.eligibility is not None}
        if not rules:
            return offers
        kinds: set[str] | None = set()
        for r in rules.values():
            if r.kinds is None or kinds is None:
                kinds = None
            else:
                kinds |= r.kinds
        ctx = self.crm.segments.context(customer_id, kinds=kinds, at=at)
        return [o for o in offers if o.code not in rules or rules[o.code].evaluate(ctx)]

    def audience(self, ref: int | str, *, sample: int = 10) -> Any:
        """Who an offer's eligibility rule selects now (a segments ``Preview``)."""
        offer = self.get(ref)
        return self.crm.segments.preview(offer.eligibility or {"field": "created_at", "op": "exists"}, sample=sample)
