"""Segments: stored rules (dynamic) and uploaded lists (static), kept current.

Membership is materialised in ``segment_members`` (with ``entered_at``).
:meth:`Segments.refresh` brings it up to date, either fully or for some
customers only (incremental refresh, which is what keeps segments live as
events arrive); every change fires ``ecrm_segment_entered`` /
``ecrm_segment_exited`` exactly once, after it is committed.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import attrs
import sqlalchemy as sa

from ..domain import Customer
from ..errors import Conflict, NotFound, ValidationError
from ..rules import EvalContext, Rule, RuleError, compile_rule
from ..rules.sql import ids_clause, unindexed
from ..validation import check_text
from .segment_queries import Cancelled, CancelToken, explain, refused_as_rule_error, render
from .segment_refresh import _SegmentRefresh
from .segment_store import CHUNK as CHUNK
from .segment_store import (
    Member,
    Preview,
    RefreshFailure,
    RefreshReport,
    Segment,
    SegmentChange,
    _check_slug,
    _chunks,
    _ids,
    _refers_to,
)

__all__ = [
    "Segment",
    "Member",
    "Preview",
    "SegmentChange",
    "RefreshReport",
    "RefreshFailure",
    "CancelToken",
    "Cancelled",
    "Segments",
]

_UNSET: Any = object()


class Segments(_SegmentRefresh):
    """``crm.segments``: who is in which segment, kept current.

    Reading and rules come from :class:`~.segment_store._SegmentStore`,
    refreshing from :class:`~.segment_refresh._SegmentRefresh`; writing,
    preview and evaluation are here.
    """

    @property
    def live(self) -> bool | str:
        """Whether segments and stages follow every committed change: ``True``,
        ``"background"`` or ``False`` (see ``CRM(live_segments=)``); settable."""
        return self.crm._shared.live_segments

    @live.setter
    def live(self, value: bool | str) -> None:
        from ..crm import _live_mode

        self.crm._shared.live_segments = _live_mode(value)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the background live refresh (``CRM(live_segments="background")``)
        has handled every change committed so far; ``False`` if ``timeout``
        seconds passed first.  Returns ``True`` at once in the other modes."""
        w = self.crm._shared.live_worker
        return True if w is None else bool(w.flush(timeout))

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Suspend live refresh (for a bulk load); run :meth:`refresh` afterwards.

        It applies to the whole CRM (every thread) for the duration of the block.
        """
        before = self.live
        self.live = False
        try:
            yield
        finally:
            self.live = before

    # ------------------------------------------------------------------
    # writing
    # ------------------------------------------------------------------
    def create(
        self,
        slug: str,
        rule: str | Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        description: str = "",
        static: bool = False,
        customer_ids: Iterable[int] = (),
        refresh: bool = True,
    ) -> Segment:
        """Create a dynamic segment from ``rule``, or a static list (``static=True``).

        A dynamic segment is filled at once (``refresh=False`` leaves it empty
        until the next :meth:`refresh`).  Raises :class:`Conflict` if the slug
        is taken, :class:`~ecrm_core.rules.RuleError` for a bad rule.
        """
        slug = _check_slug(slug)
        name = check_text(name if name is not None else slug, "name", 200)
        description = check_text(description, "description", 2000)
        compiled: Rule | None = None
        if static:
            if rule is not None:
                raise ValidationError("rule", rule, "a static segment has no rule", "drop the rule or static=True")
        else:
            if rule is None:
                raise ValidationError("rule", None, "a dynamic segment needs a rule", "pass a rule, or static=True")
            compiled = compile_rule(rule, self.catalogue(segments=[*self._slugs(), slug]))
            if slug in compiled.segments:
                raise RuleError("rule", slug, "the segment refers to itself", "remove the segment(...) condition")
        ids = _ids(customer_ids, "customer_ids") if static else []
        now = self.crm.now()
        s = self.t("segments")
        change: SegmentChange | None = None
        # The row, the statement check and the first fill commit together:
        # a rule the database refuses is a RuleError and nothing is stored.
        with self.db.write() as conn, refused_as_rule_error():
            if conn.execute(sa.select(s.c.id).where(self._where(slug))).first() is not None:
                raise Conflict(f"segment {slug!r} already exists; update it or pick another slug")
            result: Any = conn.execute(
                sa.insert(s).values(
                    workspace_id=self.workspace,
                    slug=slug,
                    name=name,
                    description=description,
                    kind="static" if static else "dynamic",
                    rule=None if compiled is None else compiled.tree,
                    member_count=0,
                    created_at=now,
                    updated_at=now,
                    refreshed_at=None,
                )
            )
            seg_id = int(result.inserted_primary_key[0])
            if compiled is not None:
                self._probe(conn, compiled)
                if refresh:
                    row = conn.execute(sa.select(s).where(s.c.id == seg_id)).one()
                    change = self._fill(conn, self._from_row(row), compiled, None, now)
        if static and ids:
            self.add(slug, ids)
        elif change is not None:
            self._emit(change)
        return self.get(seg_id)

    def update(
        self,
        ref: str | int,
        *,
        rule: str | Mapping[str, Any] = _UNSET,
        name: str = _UNSET,
        description: str = _UNSET,
        refresh: bool = True,
    ) -> Segment:
        """Change a segment's rule, name or description; a new rule is refreshed at once."""
        seg = self.get(ref)
        values: dict[str, Any] = {}
        if name is not _UNSET:
            values["name"] = check_text(name, "name", 200)
        if description is not _UNSET:
            values["description"] = check_text(description, "description", 2000)
        if rule is not _UNSET:
            if seg.kind == "static":
                raise ValidationError("rule", rule, "a static segment has no rule", "create a dynamic segment")
            compiled = self.compile(rule)
            self._check_cycles(seg.slug, compiled)
            values["rule"] = compiled.tree
        if not values:
            return seg
        values["updated_at"] = now = self.crm.now()
        change: SegmentChange | None = None
        # As in create(): the new rule is checked (and the segment refilled)
        # in the transaction that stores it; a refused rule changes nothing.
        with self.db.write() as conn, refused_as_rule_error():
            conn.execute(sa.update(self.t("segments")).where(self._where(seg.id)).values(**values))
            if "rule" in values:
                self._probe(conn, compiled)
                if refresh:
                    change = self._fill(conn, attrs.evolve(seg, rule=compiled.tree), compiled, None, now)
        if change is not None:
            if change.entered or change.exited:
                self._emit(change)
            # the segments that use this one, in dependency order
            self._refresh_plan(self._plan(seg.slug)[1:], None)
        return self.get(seg.id)

    def delete(self, ref: str | int) -> None:
        """Delete a segment and its membership (no exit events fire).

        Raises :class:`Conflict` while other segments' rules refer to it.
        """
        seg = self.get(ref)
        every = self.list()
        users = [s.slug for s in every if s.rule is not None and s.slug != seg.slug and _refers_to(s.rule, seg.slug)]
        o = self.t("offers")
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(o.c.code, o.c.eligibility).where(
                    o.c.workspace_id == self.workspace, o.c.eligibility.is_not(None)
                )
            ).all()
        users += [f"offer {r.code}" for r in rows if _refers_to(r.eligibility, seg.slug)]
        if users:
            raise Conflict(f"segment {seg.slug!r} is used by {', '.join(users)}; change their rules first")
        with self.db.write() as conn:
            conn.execute(sa.delete(self.t("segment_members")).where(self.t("segment_members").c.segment_id == seg.id))
            conn.execute(sa.delete(self.t("segments")).where(self._where(seg.id)))

    def add(self, ref: str | int, customer_ids: Iterable[int]) -> SegmentChange:
        """Add customers to a static segment (those already in are skipped)."""
        return self._static_change(ref, _ids(customer_ids, "customer_ids"), add=True)

    def remove(self, ref: str | int, customer_ids: Iterable[int]) -> SegmentChange:
        """Remove customers from a static segment."""
        return self._static_change(ref, _ids(customer_ids, "customer_ids"), add=False)

    def _static_change(self, ref: str | int, ids: Sequence[int], *, add: bool) -> SegmentChange:
        seg = self.get(ref)
        if seg.kind != "static":
            raise ValidationError(
                "segment", seg.slug, "a dynamic segment's members come from its rule", "change the rule instead"
            )
        c, m = self.t("customers"), self.t("segment_members")
        now = self.crm.now()
        changed: builtins.list[int] = []
        with self.db.write() as conn:
            for chunk in _chunks(ids):
                # driven by the primary key (the chunk's ids as one parameter): on SQLite a
                # unary + keeps the planner off the (workspace, ...) indexes, which would
                # visit every customer of the workspace for each chunk (1M customers: seconds)
                ws: sa.ColumnElement[Any] = c.c.workspace_id
                merged: sa.ColumnElement[Any] = c.c.merged_into
                if self.db.is_sqlite:
                    ws, merged = unindexed(ws), unindexed(merged)
                known = set(
                    conn.scalars(
                        sa.select(c.c.id).where(
                            ids_clause(c.c.id, chunk, conn.dialect.name), ws == self.workspace, merged.is_(None)
                        )
                    )
                )
                missing = [i for i in chunk if i not in known]
                if missing:
                    raise NotFound("customer", missing[0] if len(missing) == 1 else missing[:10])
                if add:
                    ins = self._insert(conn).from_select(
                        ["segment_id", "customer_id", "entered_at"],
                        sa.select(sa.literal(seg.id), c.c.id, sa.literal(now, type_=m.c.entered_at.type)).where(
                            ids_clause(c.c.id, chunk, conn.dialect.name),
                            # one primary-key probe per id (a NOT IN over the segment's members read
                            # them all, per chunk: quadratic in the size of the change)
                            ~sa.exists().where(m.c.segment_id == seg.id, m.c.customer_id == c.c.id),
                        ),
                    )
                    changed += conn.scalars(ins.on_conflict_do_nothing().returning(m.c.customer_id)).all()
                else:
                    changed += conn.scalars(
                        sa.delete(m)
                        .where(m.c.segment_id == seg.id, m.c.customer_id.in_(chunk))
                        .returning(m.c.customer_id)
                    ).all()
            delta = len(changed) if add else -len(changed)
            conn.execute(
                sa.update(self.t("segments"))
                .where(self._where(seg.id))
                .values(member_count=self.t("segments").c.member_count + delta, refreshed_at=now)
            )
        seg = self.get(seg.id)
        change = SegmentChange(seg, tuple(changed), ()) if add else SegmentChange(seg, (), tuple(changed))
        self._emit(change)
        return change

    # ------------------------------------------------------------------
    # preview and evaluation
    # ------------------------------------------------------------------
    def sql(self, rule: str | Mapping[str, Any] | Rule) -> str:
        """The SQL statement a rule compiles to, with its parameters inlined for reading."""
        compiled = self.compile(rule)
        with self.db.read() as conn:
            stmt = compiled.select(self._sql_context(conn))
            return render(stmt, conn.dialect)

    def preview(
        self,
        rule: str | Mapping[str, Any] | Rule,
        *,
        sample: int = 10,
        cancel: CancelToken | None = None,
        timeout: float | None = None,
    ) -> Preview:
        """Count, a sample of members, the SQL and its plan — nothing is stored.

        A long count can be stopped with ``cancel`` (a :class:`CancelToken`,
        from another thread) or ``timeout`` (seconds): :class:`Cancelled`.
        ``warnings`` say when the database has to read a whole table.
        """
        compiled = self.compile(rule)
        if not isinstance(sample, int) or not 0 <= sample <= 1000:
            raise ValidationError("sample", sample, "not between 0 and 1000", "ask for a sample of at most 1000")
        token = cancel or CancelToken(timeout)
        if cancel is not None and timeout is not None:
            token.deadline = time.monotonic() + timeout
        c = self.t("customers")
        with self.db.read() as conn, refused_as_rule_error():
            stmt = compiled.select(self._sql_context(conn))
            plan, warnings = explain(conn, stmt, self.db.tables)
            with token.watching(conn):
                if sample:
                    # one evaluation of the rule for both the count and the sample: the
                    # first ids with the total beside them (a rule's aggregates are the
                    # cost; a second statement for the sample would compute them again)
                    members = stmt.subquery()
                    first = conn.execute(
                        sa.select(members.c.id, sa.func.count().over()).order_by(members.c.id).limit(sample)
                    ).all()
                    count = int(first[0][1]) if first else 0
                    ids = [r[0] for r in first]
                    rows = conn.execute(sa.select(c).where(c.c.id.in_(ids)).order_by(c.c.id)).all() if ids else []
                else:
                    count = int(conn.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0)
                    rows = []
            customers = tuple(self.crm.customers._from_row(r) for r in rows)
            return Preview(count, customers, render(stmt, conn.dialect), plan, warnings, compiled.text)

    def evaluate(
        self,
        rule: str | Mapping[str, Any] | Rule,
        customer: int | Customer,
        *,
        interactions: Sequence[Any] | None = None,
        at: datetime | None = None,
    ) -> bool:
        """Evaluate a rule for one customer in memory (the event-time path).

        ``interactions`` default to the customer's stored ones (only the kinds
        the rule uses are loaded); ``at`` defaults to the CRM's clock.
        """
        compiled = self.compile(rule)
        ctx = self.context(customer, kinds=compiled.kinds, interactions=interactions, at=at)
        return compiled.evaluate(ctx)

    def context(
        self,
        customer: int | Customer,
        *,
        kinds: Collection[str] | None = None,
        interactions: Sequence[Any] | None = None,
        at: datetime | None = None,
    ) -> EvalContext:
        """The in-memory evaluation context of one customer, loaded once.

        Evaluate several rules against it (``rule.evaluate(ctx)``): one query
        for the interactions (only ``kinds``, if given) and one for the
        segment memberships, whatever the number of rules.
        """
        cust = customer if isinstance(customer, Customer) else self.crm.customers.get(customer)
        with self.db.read() as conn:
            if interactions is None:
                i = self.t("interactions")
                q = sa.select(i.c.kind, i.c.channel, i.c.occurred_at, i.c.amount, i.c.currency, i.c.properties).where(
                    i.c.workspace_id == self.workspace, i.c.customer_id == cust.id
                )
                if kinds is not None:
                    q = q.where(i.c.kind.in_(sorted(kinds)))
                interactions = conn.execute(q).all()
            memberships = self._memberships(conn, cust.id) if cust.id else set()
        return EvalContext(cust, interactions, at or self.crm.now(), frozenset(memberships), self.crm)
