"""Writing customers: create, update, consent, upsert and the bulk upsert."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

import sqlalchemy as sa

from ...domain import CUSTOMER_WRITABLE, Alias, Consent, Customer, CustomerChange, evolve_stored
from ...errors import BatchError, Conflict, EcrmError, RowError, ValidationError
from ...validation import thaw
from ._common import (
    _RACE_RETRIES,
    _UPSERT_KEYS,
    IDENTITY_FIELDS,
    UpsertResult,
    _aliases,
    _consent_json,
    _lost_race,
    _merge_patch,
    _unknown,
)
from .reads import CustomerReads


class CustomerWrites(CustomerReads):
    """The writing half of ``crm.customers``: one customer or a batch, aliases claimed, consent recorded."""

    # ------------------------------------------------------------------
    # writing
    # ------------------------------------------------------------------
    def _build(self, fields: Mapping[str, Any], now: datetime) -> tuple[Customer, builtins.list[Alias]]:
        _unknown(fields, _UPSERT_KEYS)
        data = dict(fields)
        extra = _aliases(data.pop("aliases", None))
        if type(data.get("attributes")) is MappingProxyType:
            # The domain takes a read-only mapping as already checked (a
            # customer's own value); what a caller sends is always checked.
            data["attributes"] = thaw(data["attributes"])
        if data.get("consent"):
            # Stamp decisions without a time with "now" before building, so
            # the Customer (and its e-mail/phone validation) is built once.
            stamped = Customer(consent=data["consent"]).consent
            data["consent"] = {ch: s if s.at else evolve_stored(s, at=now) for ch, s in stamped.items()}
        c = Customer(workspace=self.workspace, created_at=now, updated_at=now, **data)
        self.crm.check_stage(c.lifecycle_stage)
        return c, self._identity(c, extra)

    def _row(self, c: Customer) -> dict[str, Any]:
        return {
            "workspace_id": self.workspace,
            "external_id": c.external_id,
            "email": c.email,
            "phone": c.phone,
            "name": c.name,
            "attributes": thaw(c.attributes),
            "consent": _consent_json(c.consent),
            "lifecycle_stage": c.lifecycle_stage,
            "timezone": c.timezone,
            "locale": c.locale,
            "created_at": c.created_at,
            "updated_at": c.updated_at,
        }

    def _consent_events(
        self, conn: sa.Connection, cid: int, before: Mapping[str, Consent], after: Mapping[str, Consent]
    ) -> None:
        rows = self._consent_rows(cid, before, after)
        if rows:
            conn.execute(sa.insert(self.t("consent_events")), rows)

    def _consent_rows(
        self, cid: int, before: Mapping[str, Consent], after: Mapping[str, Consent]
    ) -> builtins.list[dict[str, Any]]:
        return [
            {
                "workspace_id": self.workspace,
                "customer_id": cid,
                "channel": ch,
                "status": s.status,
                "source": s.source,
                "at": s.at,
            }
            for ch, s in after.items()
            if before.get(ch) is None or before[ch].status != s.status
        ]

    def create(self, **fields: Any) -> Customer:
        """Store a new customer and return it (with its id).

        Keyword arguments are the writable fields of
        :class:`~ecrm_core.domain.Customer` plus ``aliases`` (extra
        :class:`~ecrm_core.domain.Alias` objects, e.g. a cookie id).  Raises
        :class:`~ecrm_core.errors.Conflict` when the e-mail, phone, external id
        or an alias already belongs to someone else.
        """
        self.ready()
        now = self.crm.now()
        c, identity = self._build(fields, now)

        def taken(owners: Mapping[Alias, int]) -> None:
            for al in identity:
                if al in owners:
                    raise Conflict(
                        f"{al.kind} {al.value!r} already belongs to customer {owners[al]}; update that customer, "
                        "or use crm.customers.upsert(...) to create-or-update by identity"
                    )

        try:
            with self.db.write() as conn:
                taken(self._resolve(conn, identity))
                cid: int = conn.execute(sa.insert(self.t("customers")).values(self._row(c))).inserted_primary_key[0]  # type: ignore[index]
                self._claim(conn, cid, identity, now)
                self._consent_events(conn, cid, {}, c.consent)
        except sa.exc.IntegrityError:
            # A concurrent transaction claimed one of the identities between
            # our check and our insert (backends without a database-wide
            # write lock, e.g. PostgreSQL): the same Conflict as above.
            taken(self._resolve(None, identity))
            raise
        created = evolve_stored(c, id=cid)
        self.crm.emit("ecrm_customers_created", customers=[created])
        return created

    def update(self, customer_id: int, **changes: Any) -> Customer:
        """Change fields of a customer and return the new state.

        ``attributes`` and ``consent`` are merged into the stored ones (a key
        set to ``None`` in ``attributes`` is removed); other fields are
        replaced.  Changing e-mail, phone or external id moves that identity.
        """
        _unknown(changes, CUSTOMER_WRITABLE)
        now = self.crm.now()
        current = self.get(customer_id, follow_merged=False)
        if current.merged_into is not None:
            raise Conflict(
                f"customer {customer_id} was merged into {current.merged_into}; update customer {current.merged_into}"
            )
        assert current.id is not None
        try:
            with self.db.write() as conn:
                # Read again, row-locked, inside the transaction: concurrent
                # updates of one customer must not lose each other's merge
                # patches (PostgreSQL; SQLite's writers are serialised anyway).
                current = self._locked(conn, [current.id])[current.id]
                if current.merged_into is not None:
                    raise Conflict(f"customer {customer_id} was merged into {current.merged_into} meanwhile")
                change = self._apply(conn, current, changes, now)
        except sa.exc.IntegrityError:
            self._claimed_meanwhile(current, changes)
            raise
        if change is not None:
            self.crm.emit("ecrm_customers_updated", changes=[change])
            return change.after
        return current

    def _locked(self, conn: sa.Connection, ids: Iterable[int]) -> dict[int, Customer]:
        """The customers with these ids, read in ``conn``'s transaction and
        locked until it ends (``SELECT … FOR NO KEY UPDATE``, in id order so
        two writers never wait for each other in a circle; a no-op on SQLite).

        ``NO KEY``: the update never changes a customer's id, so the lock is
        the one PostgreSQL's own ``UPDATE`` takes; it does not block the
        foreign-key checks (``KEY SHARE``) of rows inserted meanwhile for these
        customers (interactions, messages, enrollments, in any order): a
        plain ``FOR UPDATE`` did, and a tracking batch listing the customers
        in another order deadlocked with the upsert."""
        t = self.t("customers")
        q = self._select().where(t.c.id.in_(sorted(set(ids)))).order_by(t.c.id).with_for_update(key_share=True)
        return {r.id: self._from_row(r) for r in conn.execute(q)}

    def _claimed_meanwhile(self, current: Customer, changes: Mapping[str, Any]) -> None:
        """After a unique violation: raise the Conflict naming the customer that
        claimed one of the new identities concurrently (if one did)."""
        try:
            wanted = self._identity(
                evolve_stored(current, **{k: v for k, v in changes.items() if k in IDENTITY_FIELDS})
            )
        except EcrmError:
            return
        for al, owner in self._resolve(None, wanted).items():
            if owner != current.id:
                raise Conflict(
                    f"{al.kind} {al.value!r} already belongs to customer {owner}; "
                    f"use that customer, or merge them with crm.customers.merge({current.id}, into={owner})"
                )

    def _apply(
        self, conn: sa.Connection, current: Customer, changes: Mapping[str, Any], now: datetime
    ) -> CustomerChange | None:
        data = dict(changes)
        if "attributes" in data:
            data["attributes"] = _merge_patch(current.attributes, data["attributes"])
        if "consent" in data:
            new_consent = Customer(consent=data["consent"]).consent
            data["consent"] = {
                **current.consent,
                **{
                    ch: s if s.at else evolve_stored(s, at=now)
                    for ch, s in new_consent.items()
                    if ch not in current.consent or current.consent[ch].status != s.status
                },
            }
        after = evolve_stored(current, **data)
        if after == current:
            return None
        after = evolve_stored(after, updated_at=now)
        self.crm.check_stage(after.lifecycle_stage)
        assert current.id is not None
        old_ids = set(self._identity(current))
        new_ids = self._identity(after)
        self._claim(conn, current.id, [al for al in new_ids if al not in old_ids], now)
        gone = [al for al in old_ids if al not in new_ids]
        if gone:
            a = self.t("aliases")
            for al in gone:
                conn.execute(
                    sa.delete(a).where(
                        a.c.workspace_id == self.workspace,
                        a.c.customer_id == current.id,
                        a.c.kind == al.kind,
                        a.c.value == al.value,
                    )
                )
        row = self._row(after)
        del row["created_at"]
        t = self.t("customers")
        conn.execute(sa.update(t).where(t.c.id == current.id, t.c.workspace_id == self.workspace).values(row))
        self._consent_events(conn, current.id, current.consent, after.consent)
        return CustomerChange(current, after)

    def set_consent(self, customer_id: int, channel: str, granted: bool, *, source: str | None = None) -> Customer:
        """Record a consent decision for ``channel`` (kept in the consent history)."""
        return self.update(
            customer_id,
            consent={channel: Consent("granted" if granted else "denied", at=self.crm.now(), source=source)},
        )

    def upsert(self, **fields: Any) -> Customer:
        """Create the customer, or update the one that has its identity.

        Identity is looked up by ``external_id``, ``email``, ``phone`` and any
        ``aliases`` given; if they point at two different customers the call
        raises :class:`~ecrm_core.errors.Conflict` (merge them first).
        """
        try:
            result = self.upsert_many([fields], on_error="raise")
        except BatchError as exc:
            raise exc.errors[0].error from None
        cid = (result.created or result.updated)[0]
        return self.get(cid)

    def upsert_many(
        self,
        rows: Iterable[Mapping[str, Any]],
        *,
        on_error: Literal["raise", "skip"] = "raise",
        batch_size: int = 1000,
        progress: Callable[[int], None] | None = None,
        first_line: int | None = None,
    ) -> UpsertResult:
        """Create or update many customers in one transaction, set-based.

        ``on_error="raise"`` (default): if any row is invalid, nothing is
        stored and :class:`~ecrm_core.errors.BatchError` lists every bad row.
        ``on_error="skip"``: the valid rows are stored, the bad ones returned
        in ``result.errors``.  Either way the result is never half a row.
        ``first_line`` numbers rows as file lines in errors (imports).
        """
        if on_error not in ("raise", "skip"):
            raise ValidationError("on_error", on_error, "unknown mode", "use 'raise' or 'skip'")
        self.ready()
        now = self.crm.now()
        created: builtins.list[Customer] = []
        changes: builtins.list[CustomerChange] = []
        touched: builtins.list[int] = []
        errors: builtins.list[RowError] = []
        total = 0
        with self.db.write() as conn:
            batch: builtins.list[tuple[int, Mapping[str, Any]]] = []
            for index, row in enumerate(rows):
                batch.append((index, row))
                total += 1
                if len(batch) >= batch_size:
                    self._upsert_batch_retrying(conn, batch, now, created, changes, touched, errors, first_line)
                    if progress:
                        progress(len(batch))
                    batch = []
            if batch:
                self._upsert_batch_retrying(conn, batch, now, created, changes, touched, errors, first_line)
                if progress:
                    progress(len(batch))
            if errors and on_error == "raise":
                raise BatchError(errors, total)
        if created:
            self.crm.emit("ecrm_customers_created", customers=created)
        if changes:
            self.crm.emit("ecrm_customers_updated", changes=changes)
        return UpsertResult(
            created=tuple(c.id for c in created if c.id is not None),
            updated=tuple(touched),
            errors=tuple(errors),
        )

    def _upsert_batch_retrying(
        self,
        conn: sa.Connection,
        batch: Sequence[tuple[int, Mapping[str, Any]]],
        now: datetime,
        created: builtins.list[Customer],
        changes: builtins.list[CustomerChange],
        touched: builtins.list[int],
        errors: builtins.list[RowError],
        first_line: int | None,
    ) -> None:
        """:meth:`_upsert_batch` in a SAVEPOINT, redone when it lost a race.

        Without a database-wide write lock (PostgreSQL) two transactions can
        both find an identity unclaimed and both create a customer for it;
        the second one's alias insert then fails (unique violation, or a
        deadlock).  The batch is rolled back to its savepoint and decided
        again: now it sees the winner's customer and updates it.
        """
        if self.db.is_sqlite:  # writers are serialised (BEGIN IMMEDIATE): no race to lose
            self._upsert_batch(conn, batch, now, created, changes, touched, errors, first_line)
            return
        for attempt in range(1, _RACE_RETRIES + 1):
            marks = len(created), len(changes), len(touched), len(errors)
            savepoint = conn.begin_nested()
            try:
                self._upsert_batch(conn, batch, now, created, changes, touched, errors, first_line)
            except sa.exc.DBAPIError as exc:
                savepoint.rollback()
                del created[marks[0] :], changes[marks[1] :], touched[marks[2] :], errors[marks[3] :]
                if attempt == _RACE_RETRIES or not _lost_race(exc):
                    raise
                continue
            except BaseException:
                savepoint.rollback()
                raise
            savepoint.commit()
            return

    def _upsert_batch(
        self,
        conn: sa.Connection,
        batch: Sequence[tuple[int, Mapping[str, Any]]],
        now: datetime,
        created: builtins.list[Customer],
        changes: builtins.list[CustomerChange],
        touched: builtins.list[int],
        errors: builtins.list[RowError],
        first_line: int | None,
    ) -> None:
        def fail(index: int, exc: EcrmError) -> None:
            errors.append(RowError(index, exc, None if first_line is None else first_line + index))

        parsed: builtins.list[tuple[int, Mapping[str, Any], Customer, list[Alias]]] = []
        for index, row in batch:
            try:
                if not isinstance(row, Mapping):
                    raise ValidationError("row", row, "not an object", "send one object per customer")
                c, identity = self._build(row, now)
                if not identity:
                    raise ValidationError(
                        "external_id",
                        None,
                        "no identity",
                        "send external_id, email, phone or aliases so the row can be matched",
                    )
                parsed.append((index, row, c, identity))
            except EcrmError as exc:
                fail(index, exc)
        owners = self._resolve(conn, (al for *_, ids in parsed for al in ids))
        # Decide per row: update an existing customer, or create (rows of
        # this batch that share an identity collapse onto one new customer).
        pending: dict[Alias, int] = {}  # alias -> index into `new`
        new: builtins.list[tuple[int, Customer, list[Alias]]] = []
        updates: dict[int, list[tuple[int, Mapping[str, Any]]]] = {}
        for index, row, c, identity in parsed:
            found = {owners[al] for al in identity if al in owners}
            slots = {pending[al] for al in identity if al in pending}
            if len(found) + len(slots) > 1:
                owners_txt = ", ".join(
                    f"{al.kind} {al.value!r} -> customer {owners[al]}" for al in identity if al in owners
                )
                fail(
                    index,
                    Conflict(
                        f"the row's identities belong to different customers ({owners_txt or 'rows of this batch'}); "
                        "merge those customers first, or send only one identity"
                    ),
                )
                continue
            if found:
                updates.setdefault(found.pop(), []).append((index, row))
            elif slots:
                slot = slots.pop()
                i0, c0, ids0 = new[slot]
                fields = {k: v for k, v in row.items() if k != "aliases"}
                try:
                    merged = evolve_stored(
                        c0,
                        **{k: v for k, v in fields.items() if k not in ("attributes", "consent")},
                        attributes=_merge_patch(c0.attributes, fields.get("attributes")),
                        consent={**c0.consent, **c.consent},
                    )
                except EcrmError as exc:
                    fail(index, exc)
                    continue
                ids = ids0 + [al for al in identity if al not in ids0]
                new[slot] = (i0, merged, ids)
                for al in identity:
                    pending[al] = slot
            else:
                for al in identity:
                    pending[al] = len(new)
                new.append((index, c, identity))
        if new:
            t = self.t("customers")
            new_ids: Sequence[int] = (
                conn.execute(
                    sa.insert(t).returning(t.c.id, sort_by_parameter_order=True), [self._row(c) for _, c, _ in new]
                )
                .scalars()
                .all()
            )
            alias_rows = []
            consent_rows: builtins.list[dict[str, Any]] = []
            for new_id, (_, c, identity) in zip(new_ids, new, strict=True):
                created.append(evolve_stored(c, id=new_id))
                alias_rows += [
                    {
                        "workspace_id": self.workspace,
                        "customer_id": new_id,
                        "kind": al.kind,
                        "value": al.value,
                        "created_at": now,
                    }
                    for al in identity
                ]
                consent_rows += self._consent_rows(new_id, {}, c.consent)
            # Sorted, so two transactions inserting overlapping identities
            # wait for each other instead of deadlocking (PostgreSQL).
            alias_rows.sort(key=lambda r: (r["kind"], r["value"]))
            conn.execute(sa.insert(self.t("aliases")), alias_rows)
            if consent_rows:
                conn.execute(sa.insert(self.t("consent_events")), consent_rows)
        if updates:
            # Row-locked: a concurrent update of the same customer waits
            # instead of losing its merge patch (PostgreSQL).
            current = self._locked(conn, updates)
            for owner, row_list in updates.items():
                state = current[owner]
                first = state
                for index, row in row_list:
                    sp = conn.begin_nested()
                    try:
                        change = self._apply(conn, state, {k: v for k, v in row.items() if k != "aliases"}, now)
                        extra = _aliases(row.get("aliases"))
                        self._claim(conn, owner, extra, now)
                    except EcrmError as exc:
                        sp.rollback()
                        fail(index, exc)
                        continue
                    except BaseException:
                        sp.rollback()
                        raise
                    sp.commit()
                    if change is not None:
                        state = change.after
                touched.append(owner)
                if state != first:
                    changes.append(CustomerChange(first, state))
