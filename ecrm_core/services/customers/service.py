"""``crm.customers``: the reads and writes, plus the two identity lifecycle operations, merge and delete."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ...domain import Alias, Customer, CustomerChange, MergeRecord, evolve_stored
from ...errors import Conflict, NotFound, ValidationError
from ...validation import check_text, thaw
from ._common import IDENTITY_FIELDS
from .indexes import AttributeIndexes
from .writes import CustomerWrites


class Customers(CustomerWrites):
    """``crm.customers``: the people the business knows."""

    @property
    def indexes(self) -> AttributeIndexes:
        """Attribute indexes (:class:`~ecrm_core.services.customers.indexes.AttributeIndexes`):
        ``crm.customers.indexes.create("country")`` makes rules on that attribute read only
        the matching customers."""
        return AttributeIndexes(self.db, self.t("customers").name)

    # ------------------------------------------------------------------
    # merge
    # ------------------------------------------------------------------
    def merge(self, source_id: int, *, into: int, actor: str | None = None, reason: str | None = None) -> MergeRecord:
        """Merge customer ``source_id`` into ``into``; return the audit record.

        Every interaction, alias and consent record of the source moves to
        the target; fields the target lacks are filled from the source;
        the source stays as a tombstone (``merged_into``) so old ids keep
        resolving.  One transaction: all of it happens or none; plugins move
        their rows in it (``ecrm_customers_merging``), and
        ``ecrm_customers_merged`` fires after the commit.
        """
        if source_id == into:
            raise ValidationError("into", into, "a customer cannot be merged into itself", "pass two different ids")
        if actor is not None:
            actor = check_text(actor, "actor", max_length=200)
        now = self.crm.now()

        def unmerged(source: Customer, target: Customer) -> None:
            for c in (source, target):
                if c.merged_into is not None:
                    raise Conflict(
                        f"customer {c.id} was already merged into {c.merged_into}; merge with {c.merged_into} instead"
                    )

        source = self.get(source_id, follow_merged=False)
        target = self.get(into, follow_merged=False)
        unmerged(source, target)
        assert source.id is not None and target.id is not None
        t, a, i, e, log = (self.t(n) for n in ("customers", "aliases", "interactions", "consent_events", "audit_log"))
        with self.db.write() as conn:
            # Read both again, row-locked, inside the transaction: a
            # concurrent update or merge waits instead of being lost.
            locked = self._locked(conn, [source.id, target.id])
            source, target = locked[source.id], locked[target.id]
            unmerged(source, target)
            assert source.id is not None and target.id is not None
            fill = {
                f: getattr(source, f)
                for f in ("external_id", "email", "phone", "name", "timezone", "locale")
                if getattr(target, f) is None and getattr(source, f) is not None
            }
            attributes = {**thaw(source.attributes), **thaw(target.attributes)}
            consent = {**source.consent, **target.consent}
            for ch, s in source.consent.items():  # the more recent decision wins
                tgt = target.consent.get(ch)
                if tgt is not None and s.at and tgt.at and s.at > tgt.at:
                    consent[ch] = s
            after = evolve_stored(target, **fill, attributes=attributes, consent=consent, updated_at=now)
            moved_i = conn.execute(
                sa.update(i)
                .where(i.c.workspace_id == self.workspace, i.c.customer_id == source.id)
                .values(customer_id=target.id)
            ).rowcount
            moved_a = conn.execute(
                sa.update(a)
                .where(a.c.workspace_id == self.workspace, a.c.customer_id == source.id)
                .values(customer_id=target.id)
            ).rowcount
            conn.execute(sa.update(e).where(e.c.customer_id == source.id).values(customer_id=target.id))
            # The messages too (sent and still queued): the survivor's history
            # shows them, and they count against the survivor's frequency caps.
            m = self.t("messages")
            conn.execute(
                sa.update(m)
                .where(m.c.workspace_id == self.workspace, m.c.customer_id == source.id)
                .values(customer_id=target.id)
            )
            conn.execute(
                sa.update(t)
                .where(t.c.workspace_id == self.workspace, t.c.merged_into == source.id)
                .values(merged_into=target.id)
            )
            conn.execute(sa.update(t).where(t.c.id == source.id).values(merged_into=target.id, updated_at=now))
            row = self._row(after)
            del row["created_at"]
            conn.execute(sa.update(t).where(t.c.id == target.id).values(row))
            details = {
                "source": {k: v for k, v in self._row(source).items() if k not in ("created_at", "updated_at")},
                "filled": sorted(fill),
                "moved_interactions": moved_i,
                "moved_aliases": moved_a,
                "target_id": target.id,
                "reason": reason,
            }
            merge_id = conn.execute(
                sa.insert(log).values(
                    workspace_id=self.workspace,
                    at=now,
                    action="customer.merge",
                    entity="customer",
                    entity_id=str(source.id),
                    actor=actor,
                    details=details,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
            record = MergeRecord(
                id=merge_id,
                workspace=self.workspace,
                source_id=source.id,
                target_id=target.id,
                merged_at=now,
                moved_interactions=moved_i,
                moved_aliases=moved_a,
                actor=actor,
                reason=reason,
            )
            plugins = self.crm.plugins
            if plugins.has_impls("ecrm_customers_merging"):
                plugins.notify_in_transaction("ecrm_customers_merging", conn, crm=self.crm, merge=record)
        self.crm.emit("ecrm_customers_merged", merge=record)
        if after != target:
            self.crm.emit("ecrm_customers_updated", changes=[CustomerChange(target, after)])
        return record

    # ------------------------------------------------------------------
    # delete
    # ------------------------------------------------------------------
    def delete(self, customer_id: int, *, actor: str | None = None) -> tuple[int, ...]:
        """Delete a customer and everything ecrm keeps about them; return the deleted ids.

        In one transaction, set-based: the customer, the tombstones of the
        customers merged into it, their aliases, consent history,
        interactions, segment memberships (member counts follow) and the
        audit records about them; plugin tables that reference customers with
        ``ON DELETE CASCADE`` follow.  An ``customer.delete`` audit record
        (ids only) is kept.  Plugins erase what they keep in the same
        transaction (``ecrm_customers_deleting``: all or nothing); after the
        commit ``ecrm_customers_deleted`` fires with the ids and every
        identity they had (read before the rows go: plugins erase what they
        keep by identity, e.g. messages waiting in an inbox);
        ``ecrm_segment_exited`` is not fired for deleted customers.
        Raises :class:`~ecrm_core.errors.NotFound`, or
        :class:`~ecrm_core.errors.Conflict` for a merged id (delete the
        survivor: that deletes the tombstone too), or
        :class:`~ecrm_core.errors.PluginError` when a plugin's erasure
        failed (nothing was deleted).
        """
        if actor is not None:
            actor = check_text(actor, "actor", max_length=200)
        current = self._live(customer_id)
        assert current.id is not None
        cid = current.id
        try:
            ids, aliases = self._delete(cid, customer_id, actor)
        except sa.exc.IntegrityError:
            raise Conflict(
                f"customer {cid} is still referenced by a table without ON DELETE CASCADE (a plugin's); "
                "nothing was deleted — the plugin must declare its foreign key with ondelete='CASCADE'"
            ) from None
        self.crm.emit("ecrm_customers_deleted", customer_ids=ids, aliases=aliases)
        return ids

    def _doomed_aliases(self, conn: sa.Connection, doomed: sa.Select[Any]) -> tuple[Alias, ...]:
        """Every identity of the customers about to be deleted: their alias rows
        (external ids, e-mails, phones, anonymous ids…) and the identity
        columns of the customer rows (tombstones included), sorted."""
        t, a = self.t("customers"), self.t("aliases")
        found: set[tuple[str, str]] = {
            (kind, value)
            for kind, value in conn.execute(
                sa.select(a.c.kind, a.c.value).where(a.c.workspace_id == self.workspace, a.c.customer_id.in_(doomed))
            )
        }
        columns = [t.c[name] for name in IDENTITY_FIELDS]
        for row in conn.execute(sa.select(*columns).where(t.c.id.in_(doomed))):
            for kind, value in zip(IDENTITY_FIELDS.values(), row, strict=True):
                if value:
                    found.add((kind, value))
        out: list[Alias] = []
        for kind, value in sorted(found):
            try:
                out.append(Alias(kind, value))
            except ValidationError:  # legacy data the entry validation now refuses: kept as stored
                al = object.__new__(Alias)
                object.__setattr__(al, "kind", kind)
                object.__setattr__(al, "value", value)
                out.append(al)
        return tuple(out)

    def _delete(self, cid: int, customer_id: int, actor: str | None) -> tuple[tuple[int, ...], tuple[Alias, ...]]:
        t, a, i, e, log, s, m = (
            self.t(n)
            for n in (
                "customers",
                "aliases",
                "interactions",
                "consent_events",
                "audit_log",
                "segments",
                "segment_members",
            )
        )
        with self.db.write() as conn:
            locked = self._locked(conn, [cid]).get(cid)
            if locked is None:
                raise NotFound("customer", customer_id)
            if locked.merged_into is not None:
                raise Conflict(f"customer {customer_id} was merged into {locked.merged_into} meanwhile")
            ids: tuple[int, ...] = tuple(
                conn.scalars(
                    sa.select(t.c.id)
                    .where(t.c.workspace_id == self.workspace, sa.or_(t.c.id == cid, t.c.merged_into == cid))
                    .order_by(t.c.id)
                ).all()
            )
            doomed = sa.select(t.c.id).where(
                t.c.workspace_id == self.workspace, sa.or_(t.c.id == cid, t.c.merged_into == cid)
            )
            aliases = self._doomed_aliases(conn, doomed)
            leaving = (
                sa.select(sa.func.count())
                .where(m.c.segment_id == s.c.id, m.c.customer_id.in_(doomed))
                .scalar_subquery()
            )
            conn.execute(
                sa.update(s)
                .where(s.c.id.in_(sa.select(m.c.segment_id).where(m.c.customer_id.in_(doomed))))
                .values(member_count=s.c.member_count - leaving)
            )
            conn.execute(sa.delete(m).where(m.c.customer_id.in_(doomed)))
            conn.execute(sa.delete(e).where(e.c.customer_id.in_(doomed)))
            conn.execute(sa.delete(a).where(a.c.workspace_id == self.workspace, a.c.customer_id.in_(doomed)))
            interactions = conn.execute(
                sa.delete(i).where(i.c.workspace_id == self.workspace, i.c.customer_id.in_(doomed))
            ).rowcount
            conn.execute(
                sa.delete(log).where(
                    log.c.workspace_id == self.workspace,
                    log.c.entity == "customer",
                    log.c.entity_id.in_([str(x) for x in ids]),
                )
            )
            conn.execute(sa.delete(t).where(t.c.workspace_id == self.workspace, t.c.id.in_(ids)))
            plugins = self.crm.plugins
            if plugins.has_impls("ecrm_customers_deleting"):
                plugins.call_all_or_nothing(
                    "ecrm_customers_deleting", conn, crm=self.crm, customer_ids=ids, aliases=aliases
                )
            conn.execute(
                sa.insert(log).values(
                    workspace_id=self.workspace,
                    at=self.crm.now(),
                    action="customer.delete",
                    entity="customer",
                    entity_id=str(cid),
                    actor=actor,
                    details={"customer_ids": list(ids), "deleted_interactions": interactions},
                )
            )
        return ids, aliases
