"""Reading customers: get, find, list, search (keyset pages), aliases, consent history; identity resolution."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ...domain import Alias, Customer
from ...errors import Conflict, NotFound, ValidationError
from ...rules.sql import values_clause
from ...validation import aware_datetime, check_text, freeze, normalize_email, normalize_phone, stored
from .._base import Service
from ._common import _MAX_SEARCH_LIMIT, _NULLABLE_SORTS, IDENTITY_FIELDS, SEARCH_SORTS, CustomerPage

if TYPE_CHECKING:  # pragma: no cover
    from ...rules import Rule


class CustomerReads(Service):
    """The reading half of ``crm.customers`` (see :class:`~ecrm_core.services.customers.Customers`)."""

    # ------------------------------------------------------------------
    # reading
    # ------------------------------------------------------------------
    def _from_row(self, row: Any) -> Customer:
        m = row._mapping
        return Customer(
            id=m["id"],
            workspace=m["workspace_id"],
            external_id=stored(m["external_id"]),  # stored text: not checked again
            email=m["email"],
            phone=m["phone"],
            name=stored(m["name"]),
            attributes=freeze(m["attributes"] or {}),  # stored data: not checked again
            consent=m["consent"],
            lifecycle_stage=m["lifecycle_stage"],
            timezone=m["timezone"],
            locale=stored(m["locale"]),
            created_at=m["created_at"],
            updated_at=m["updated_at"],
            merged_into=m["merged_into"],
        )

    def _select(self) -> sa.Select[Any]:
        t = self.t("customers")
        return sa.select(t).where(t.c.workspace_id == self.workspace)

    def get(self, customer_id: int, *, follow_merged: bool = True) -> Customer:
        """The customer with this id; a merged id returns the survivor.

        Raises :class:`~ecrm_core.errors.NotFound` (also for ids of another
        workspace).  ``follow_merged=False`` returns the tombstone itself.
        """
        if isinstance(customer_id, bool) or not isinstance(customer_id, int):
            raise ValidationError("customer_id", customer_id, "not an id", "send the integer id ecrm assigned")
        self.ready()
        t = self.t("customers")
        with self.db.read() as conn:
            row = conn.execute(self._select().where(t.c.id == customer_id)).first()
            if row is not None and row.merged_into is not None and follow_merged:
                row = conn.execute(self._select().where(t.c.id == row.merged_into)).first()
        if row is None:
            raise NotFound("customer", customer_id)
        return self._from_row(row)

    def find(
        self,
        *,
        external_id: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        alias: Alias | None = None,
    ) -> Customer | None:
        """Look a customer up by one identity; ``None`` when nobody has it."""
        given = [(k, v) for k, v in (("external", external_id), ("email", email), ("phone", phone)) if v is not None]
        if alias is not None:
            given.append((alias.kind, alias.value))
        if len(given) != 1:
            raise ValidationError(
                "find", given, "needs exactly one identity", "pass one of external_id, email, phone, alias"
            )
        kind, value = given[0]
        found = self._resolve(None, [Alias(kind, value)])
        if not found:
            return None
        return self.get(next(iter(found.values())))

    def survivors(
        self, customer_ids: Iterable[int], *, conn: sa.Connection | None = None, lock: bool = False
    ) -> dict[int, int]:
        """``{id: the id to use now}`` for the customers of ``customer_ids`` that
        still exist in this workspace: a merged one maps to its survivor, a
        live one to itself; a deleted (or unknown) one is absent.  One query
        per 500 ids.  ``conn``: read in that transaction; ``lock`` (with
        ``conn``, on PostgreSQL) keeps the rows from being deleted until it
        commits, so rows written for these ids cannot meet a deleted customer."""
        ids = sorted({int(c) for c in customer_ids})
        if not ids:
            return {}
        t = self.t("customers")
        out: dict[int, int] = {}

        def read(c: sa.Connection) -> None:
            for start in range(0, len(ids), 500):
                q = sa.select(t.c.id, sa.func.coalesce(t.c.merged_into, t.c.id)).where(
                    t.c.workspace_id == self.workspace, t.c.id.in_(ids[start : start + 500])
                )
                if lock and c.dialect.name == "postgresql":
                    q = q.with_for_update(key_share=True)
                out.update((int(a), int(b)) for a, b in c.execute(q))

        if conn is not None:
            read(conn)
        else:
            with self.db.read() as c:
                read(c)
        return out

    def computed(self, customer_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """What plugins compute about these customers and keep in their own
        tables (hook ``ecrm_computed_attributes``): ``{customer_id: {name: value}}``,
        only for customers some plugin knows.

        Read-only and cheap when no plugin implements the hook (no query).
        Each plugin's answer is checked as a whole: a mapping of the asked
        integer ids to mappings of string names to JSON values within the
        limits of a stored attributes mapping
        (:func:`~ecrm_core.validation.properties_json`: plain JSON, finite
        numbers, bounded depth, at most 16 KiB per customer); ids that
        were not asked are ignored.  A plugin whose answer raises or breaks
        those rules is recorded in ``crm.plugins.failures`` and left out
        entirely (the others still answer); the first answer for a name wins.
        Stored attributes are not included: a template sees both, the stored
        value winning (see :meth:`with_computed`).
        """
        ids = builtins.list(dict.fromkeys(int(c) for c in customer_ids))
        plugins = self.crm.plugins
        if not ids or not plugins.has_impls("ecrm_computed_attributes"):
            return {}
        out: dict[int, dict[str, Any]] = {}
        asked = set(ids)
        for name, answer in plugins.collect("ecrm_computed_attributes", crm=self.crm, customer_ids=ids):
            try:
                checked = _checked_answer(answer, asked)
            except (TypeError, ValueError) as exc:  # ValidationError is a ValueError
                plugins.record_failure(name, "ecrm_computed_attributes", exc)
                continue
            for cid, values in checked.items():
                mine = out.setdefault(cid, {})
                for key, value in values.items():
                    mine.setdefault(key, value)
        return out

    @staticmethod
    def with_computed(attributes: Mapping[str, Any], computed: Mapping[str, Any] | None) -> dict[str, Any]:
        """A customer's attributes as templates and decisions see them: the
        computed values (:meth:`computed`) under the stored ones (a stored
        attribute of the same name wins)."""
        if not computed:
            return dict(attributes)
        return {**computed, **attributes}

    def aliases(self, customer_id: int) -> builtins.list[Alias]:
        """Every identity the customer is known by."""
        a = self.t("aliases")
        cid = self.get(customer_id).id
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(a.c.kind, a.c.value)
                .where(a.c.workspace_id == self.workspace, a.c.customer_id == cid)
                .order_by(a.c.kind, a.c.value)
            ).all()
        return [Alias(r.kind, r.value) for r in rows]

    def add_alias(self, customer_id: int, kind: str, value: str) -> Alias:
        """Give the customer one more identity (e.g. a cookie id); return it normalised.

        Adding an alias the customer already has changes nothing.  Raises
        :class:`~ecrm_core.errors.Conflict` when another customer has it
        (naming that customer: merge the two if they are one person) or
        when ``customer_id`` was merged (add it to the survivor).
        """
        alias = Alias(kind, value)
        current = self._live(customer_id)
        assert current.id is not None
        try:
            with self.db.write() as conn:
                self._claim(conn, current.id, [alias], self.crm.now())
        except sa.exc.IntegrityError:
            # Claimed concurrently between our check and our insert.
            for al, owner in self._resolve(None, [alias]).items():
                if owner != current.id:
                    raise Conflict(
                        f"{al.kind} {al.value!r} already belongs to customer {owner}; "
                        f"use that customer, or merge them with crm.customers.merge({current.id}, into={owner})"
                    ) from None
            raise
        return alias

    def remove_alias(self, customer_id: int, kind: str, value: str) -> None:
        """Forget one identity of the customer.

        Raises :class:`~ecrm_core.errors.NotFound` when the customer does not
        have it, and :class:`~ecrm_core.errors.Conflict` for the aliases that
        mirror the customer's ``email``, ``phone`` or ``external_id`` (change
        the field instead: ``update(id, email=None)``).
        """
        alias = Alias(kind, value)
        current = self._live(customer_id)
        for name, field_kind in IDENTITY_FIELDS.items():
            if field_kind == alias.kind and getattr(current, name) == alias.value:
                raise Conflict(
                    f"{alias.kind} {alias.value!r} is customer {current.id}'s {name}; "
                    f"change the field instead (update({current.id}, {name}=None))"
                )
        a = self.t("aliases")
        with self.db.write() as conn:
            gone = conn.execute(
                sa.delete(a).where(
                    a.c.workspace_id == self.workspace,
                    a.c.customer_id == current.id,
                    a.c.kind == alias.kind,
                    a.c.value == alias.value,
                )
            ).rowcount
        if not gone:
            raise NotFound("alias", f"{alias.kind}:{alias.value}")

    def _live(self, customer_id: int) -> Customer:
        """The customer with this id; Conflict for a merged (tombstone) id."""
        current = self.get(customer_id, follow_merged=False)
        if current.merged_into is not None:
            raise Conflict(
                f"customer {customer_id} was merged into {current.merged_into}; use customer {current.merged_into}"
            )
        return current

    def list(
        self, *, limit: int = 100, after: int | None = None, lifecycle_stage: str | None = None
    ) -> builtins.list[Customer]:
        """Live customers by ascending id; pass the last id as ``after`` for the next page."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValidationError("limit", limit, "out of range", "send 1..10000")
        self.ready()
        t = self.t("customers")
        q = self._select().where(t.c.merged_into.is_(None)).order_by(t.c.id).limit(limit)
        if after is not None:
            q = q.where(t.c.id > after)
        if lifecycle_stage is not None:
            q = q.where(t.c.lifecycle_stage == self.crm.check_stage(lifecycle_stage))
        with self.db.read() as conn:
            return [self._from_row(r) for r in conn.execute(q)]

    def count(self) -> int:
        """Live (not merged) customers in this workspace."""
        self.ready()
        t = self.t("customers")
        with self.db.read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(t.c.workspace_id == self.workspace, t.c.merged_into.is_(None))
                ).scalar_one()
            )

    def search(
        self,
        *,
        email: str | None = None,
        external_id: str | None = None,
        phone: str | None = None,
        lifecycle_stage: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        updated_after: datetime | str | None = None,
        segment: str | int | None = None,
        where: str | Mapping[str, Any] | Rule | None = None,
        sort: str = "id",
        after: Sequence[Any] | None = None,
        limit: int = 50,
    ) -> CustomerPage:
        """Live customers matching every filter given, one page at a time.

        Filters: ``email``, ``external_id``, ``phone`` (exact, normalised like
        stored values), ``lifecycle_stage``, ``created_after`` /
        ``created_before`` / ``updated_after`` (aware datetimes, exclusive),
        ``segment`` (member of the segment with this slug or id) and
        ``where``: a rule (text or tree, see ``docs/rules.md``) compiled to
        SQL — never evaluated as code.  ``sort`` is one of
        :data:`SEARCH_SORTS`, ``-field`` for descending; NULL names and
        e-mails sort last ascending, first descending.  Pagination is by
        keyset (sort value, id), never OFFSET: pass the page's
        ``next_after`` as ``after``.  ``limit``: 1..1000.  A bad value raises
        :class:`~ecrm_core.errors.ValidationError` naming the parameter.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_SEARCH_LIMIT:
            raise ValidationError("limit", limit, "out of range", f"send 1..{_MAX_SEARCH_LIMIT}")
        field, descending = self._sort(sort)
        self.ready()
        t = self.t("customers")
        conds: builtins.list[sa.ColumnElement[bool]] = [t.c.workspace_id == self.workspace, t.c.merged_into.is_(None)]
        if email is not None:
            conds.append(t.c.email == normalize_email(email, "email"))
        if external_id is not None:
            conds.append(t.c.external_id == check_text(external_id, "external_id", max_length=200))
        if phone is not None:
            conds.append(t.c.phone == normalize_phone(phone, "phone"))
        if lifecycle_stage is not None:
            conds.append(t.c.lifecycle_stage == self.crm.check_stage(lifecycle_stage))
        for name, value, column, op in (
            ("created_after", created_after, t.c.created_at, "gt"),
            ("created_before", created_before, t.c.created_at, "lt"),
            ("updated_after", updated_after, t.c.updated_at, "gt"),
        ):
            if value is not None:
                when = aware_datetime(value, name)
                conds.append(column > when if op == "gt" else column < when)
        if segment is not None:
            conds.append(t.c.id.in_(self._segment_members(segment)))
        rule = self._where_rule(where) if where is not None else None
        column = t.c[field]
        if after is not None:
            conds.append(self._keyset(column, field, descending, after))
        if descending:
            order = [column.desc().nulls_first(), t.c.id.desc()] if field != "id" else [t.c.id.desc()]
        else:
            order = [column.asc().nulls_last(), t.c.id.asc()] if field != "id" else [t.c.id.asc()]
        with self.db.read() as conn:
            if rule is not None:
                conds.append(rule.clause(self.crm.segments._sql_context(conn)))
            q = sa.select(t).where(*conds).order_by(*order).limit(limit + 1)
            rows = conn.execute(q).all()
        items = tuple(self._from_row(r) for r in rows[:limit])
        next_after = None
        if len(rows) > limit:
            last = items[-1]
            value = getattr(last, field)
            next_after = (value.isoformat() if isinstance(value, datetime) else value, last.id)
        return CustomerPage(items, next_after)

    @staticmethod
    def _sort(sort: Any) -> tuple[str, bool]:
        fix = f"sort on one of {', '.join(SEARCH_SORTS)}; prefix '-' for descending, e.g. '-created_at'"
        if not isinstance(sort, str):
            raise ValidationError("sort", sort, "not a sort field", fix)
        descending = sort.startswith("-")
        field = sort[1:] if descending else sort
        if field not in SEARCH_SORTS:
            raise ValidationError("sort", sort, "not a sortable field", fix)
        return field, descending

    def _keyset(
        self, column: sa.ColumnElement[Any], field: str, descending: bool, after: Sequence[Any]
    ) -> sa.ColumnElement[bool]:
        """The condition "after position ``after``" in the order (column, id)."""
        fix = "pass the next_after of the previous page unchanged"
        t = self.t("customers")
        if isinstance(after, (str, bytes)) or not isinstance(after, Sequence) or len(after) != 2:
            raise ValidationError("after", after, "not a position", fix)
        value, last_id = after
        if isinstance(last_id, bool) or not isinstance(last_id, int) or not 0 < last_id < 2**63:
            raise ValidationError("after", after, "not a position", fix)
        ident = t.c.id < last_id if descending else t.c.id > last_id
        if field == "id":
            if value != last_id:
                raise ValidationError("after", after, "not a position of this sort", fix)
            return ident
        if field in ("created_at", "updated_at"):
            try:
                value = aware_datetime(value, "after")
            except ValidationError:
                raise ValidationError("after", after, "not a position of this sort", fix) from None
        elif value is not None and (not isinstance(value, str) or field not in _NULLABLE_SORTS):
            raise ValidationError("after", after, "not a position of this sort", fix)
        if value is None:
            if field not in _NULLABLE_SORTS:
                raise ValidationError("after", after, "not a position of this sort", fix)
            # NULLs come last ascending (then nothing but more NULLs by id),
            # first descending (then more NULLs by id, then every value).
            return (
                sa.and_(column.is_(None), ident)
                if not descending
                else sa.or_(sa.and_(column.is_(None), ident), column.is_not(None))
            )
        beyond = column < value if descending else column > value
        cond = sa.or_(beyond, sa.and_(column == value, ident))
        return sa.or_(cond, column.is_(None)) if (field in _NULLABLE_SORTS and not descending) else cond

    def _segment_members(self, ref: str | int) -> sa.Select[Any]:
        m = self.t("segment_members")
        try:
            seg = self.crm.segments.get(ref)
        except NotFound as exc:
            raise ValidationError(
                "segment", ref, "unknown segment", f"{exc}; list segments with crm.segments.list()"
            ) from None
        return sa.select(m.c.customer_id).where(m.c.segment_id == seg.id)

    def _where_rule(self, where: str | Mapping[str, Any] | Rule) -> Rule:
        try:
            return self.crm.segments.compile(where)
        except ValidationError as exc:  # RuleError, RuleSyntaxError
            line, column = getattr(exc, "line", None), getattr(exc, "column", None)
            at = f" at line {line}, column {column}" if line is not None else ""
            inner = f" ({exc.field})" if exc.field not in ("rule", "") else ""
            raise ValidationError("where", where, f"{exc.problem}{inner}{at}", exc.fix) from None

    def consent_history(self, customer_id: int) -> builtins.list[dict[str, Any]]:
        """Every consent change of the customer, oldest first."""
        e = self.t("consent_events")
        cid = self.get(customer_id).id
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(e.c.channel, e.c.status, e.c.source, e.c.at)
                .where(e.c.workspace_id == self.workspace, e.c.customer_id == cid)
                .order_by(e.c.at, e.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]

    # ------------------------------------------------------------------
    # identity resolution
    # ------------------------------------------------------------------
    def _resolve(self, conn: sa.Connection | None, aliases: Iterable[Alias]) -> dict[Alias, int]:
        """Map aliases to (live) customer ids: one query per alias kind (the
        values bound as one parameter), keyed by the very ``Alias`` objects
        passed in."""
        by_kind: dict[str, dict[str, Alias]] = {}
        for al in aliases:
            by_kind.setdefault(al.kind, {})[al.value] = al
        if not by_kind:
            return {}
        a, c = self.t("aliases"), self.t("customers")
        out: dict[Alias, int] = {}

        def run(conn: sa.Connection) -> None:
            dialect = conn.dialect.name
            for kind, wanted in by_kind.items():
                vals = sorted(wanted)
                for i in range(0, len(vals), 30000):
                    q = (
                        sa.select(a.c.value, sa.func.coalesce(c.c.merged_into, c.c.id))
                        .join(c, c.c.id == a.c.customer_id)
                        .where(
                            a.c.workspace_id == self.workspace,
                            a.c.kind == kind,
                            values_clause(a.c.value, vals[i : i + 30000], dialect),
                        )
                    )
                    for value, cid in conn.execute(q).all():
                        out[wanted[value]] = cid

        if conn is None:
            with self.db.read() as rc:
                run(rc)
        else:
            run(conn)
        return out

    @staticmethod
    def _identity(c: Customer, extra: Iterable[Alias] = ()) -> builtins.list[Alias]:
        ids = [Alias(kind, getattr(c, name)) for name, kind in IDENTITY_FIELDS.items() if getattr(c, name)]
        # dict.fromkeys: an alias given twice is one identity (not a duplicate row)
        return list(dict.fromkeys([*ids, *extra]))

    def _claim(self, conn: sa.Connection, cid: int, aliases: Sequence[Alias], now: datetime) -> None:
        """Attach aliases to ``cid``; raise Conflict if another customer has one."""
        if not aliases:
            return
        owners = self._resolve(conn, aliases)
        for al in aliases:
            owner = owners.get(al)
            if owner is not None and owner != cid:
                raise Conflict(
                    f"{al.kind} {al.value!r} already belongs to customer {owner}; "
                    f"use that customer, or merge them with crm.customers.merge({cid}, into={owner})"
                )
        new = [al for al in aliases if al not in owners]
        if new:
            conn.execute(
                sa.insert(self.t("aliases")),
                [
                    {
                        "workspace_id": self.workspace,
                        "customer_id": cid,
                        "kind": al.kind,
                        "value": al.value,
                        "created_at": now,
                    }
                    for al in new
                ],
            )


def _checked_answer(answer: Any, asked: set[int]) -> dict[int, Mapping[str, Any]]:
    """One plugin's ``ecrm_computed_attributes`` answer, checked whole (see
    :meth:`CustomerReads.computed`); raises TypeError/ValueError naming the fault."""
    from ...validation import properties_json

    if not isinstance(answer, Mapping):
        raise TypeError(f"returned {type(answer).__name__}, not a mapping of customer id to values")
    out: dict[int, Mapping[str, Any]] = {}
    for cid, values in answer.items():
        if type(cid) is not int:
            raise TypeError(f"a key of the answer is {cid!r} ({type(cid).__name__}), not a customer id (int)")
        if cid not in asked:
            continue
        if not isinstance(values, Mapping):
            raise TypeError(f"the values of customer {cid} are a {type(values).__name__}, not a mapping")
        if not values:
            continue
        for key in values:
            if type(key) is not str:
                raise TypeError(f"customer {cid}: an attribute name is {key!r}, not a string")
        properties_json(dict(values), f"computed[{cid}]")  # as a stored attributes mapping: JSON, size
        out[cid] = values
    return out
