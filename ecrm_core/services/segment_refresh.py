"""Refreshing segments: dependency order, full and incremental refresh,
entered/exited events once committed, failures isolated per segment.

The middle layer of :class:`~ecrm_core.services.segments.Segments` (split from :mod:`.segments`).
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime

import attrs
import sqlalchemy as sa

from ..errors import ValidationError
from ..rules import Rule, RuleError
from ..rules.sql import ids_clause
from .segment_queries import Cancelled, _Explain
from .segment_queries import describe as _describe
from .segment_store import (
    RefreshFailure,
    RefreshReport,
    Segment,
    SegmentChange,
    _chunks,
    _id_rows,
    _ids,
    _refers_to,
    _SegmentStore,
)


class _SegmentRefresh(_SegmentStore):
    """Bringing stored membership up to date (see :meth:`refresh`)."""

    # ------------------------------------------------------------------
    # refresh
    # ------------------------------------------------------------------
    def _stored(self, seg: Segment, slugs: frozenset[str]) -> Rule:
        assert seg.rule is not None
        try:
            return self._cached(seg.rule, slugs)
        except ValidationError as exc:
            raise RuleError(
                f"segments.{seg.slug}.{exc.field}",
                exc.value,
                exc.problem,
                f"{exc.fix} (the stored rule no longer validates: was a plugin removed?)",
            ) from None

    def _plan(
        self, only: str | None, failed: builtins.list[tuple[Segment, Exception]] | None = None
    ) -> builtins.list[tuple[Segment, Rule]]:
        """Dynamic segments in dependency order (referenced segments first).

        A stored rule that no longer validates (a plugin was removed) is left
        out and added to ``failed`` (raised when ``failed`` is None)."""
        every = self.list()
        segs = [s for s in every if s.kind == "dynamic" and s.rule is not None]
        slugs = frozenset(s.slug for s in every)
        rules: dict[str, tuple[Segment, Rule]] = {}
        for seg in segs:
            try:
                rules[seg.slug] = (seg, self._stored(seg, slugs))
            except ValidationError as exc:
                if failed is None:
                    raise
                failed.append((seg, exc))
        order = _toposort({slug: r.segments & rules.keys() for slug, (_, r) in rules.items()})
        if only is not None:
            wanted = {only}
            for slug in order:  # dependents of `only`, transitively
                if rules[slug][1].segments & wanted:
                    wanted.add(slug)
            order = [s for s in order if s in wanted]
        return [rules[slug] for slug in order]

    def _check_cycles(self, slug: str, rule: Rule) -> None:
        every = self.list()
        slugs = frozenset(s.slug for s in every)
        deps: dict[str, Collection[str]] = {}
        for s in every:
            if s.rule is not None:
                try:
                    deps[s.slug] = self._stored(s, slugs).segments
                except ValidationError:  # no longer valid: what it names is still a dependency
                    deps[s.slug] = {x for x in slugs if _refers_to(s.rule, x)}
        deps[slug] = rule.segments
        _toposort(deps)

    def refresh(
        self,
        ref: str | int | None = None,
        *,
        customer_ids: Iterable[int] | None = None,
        kinds: Collection[str] | None = None,
        customers_changed: bool = True,
        lifecycle: bool = True,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> RefreshReport:
        """Bring stored membership up to date.

        - ``refresh()``: every dynamic segment (and lifecycle stages), fully,
          in dependency order.  Run it periodically (cron, a worker) so that
          rules with time windows follow the clock.
        - ``refresh("vip")``: that segment and the segments that use it.
        - ``refresh(customer_ids=[...])``: incremental — re-evaluate only those
          customers; with ``kinds`` (the interaction kinds that arrived) and
          ``customers_changed=False``, only the segments those can affect.
          This is what keeps segments live after ingestion.

        Each segment is refreshed in its own transaction; its entered/exited
        events fire once it is committed.  ``progress(slug, done, total)``
        is called after each segment.
        """
        started = time.perf_counter()
        ids = None if customer_ids is None else _ids(customer_ids, "customer_ids", allow_empty=True)
        if ids is not None and not ids:
            return RefreshReport((), 0, 0, 0.0)
        stage_changes = 0
        lifecycle_failed: builtins.list[RefreshFailure] = []
        if lifecycle and ref is None:
            # a failing stage rule is skipped and recorded by the lifecycle
            # itself; anything else it raises must not stop the segments
            try:
                stage_changes, broken = self.crm.lifecycle._refresh(
                    customer_ids=ids, kinds=kinds, customers_changed=customers_changed
                )
                lifecycle_failed += [RefreshFailure(f"lifecycle:{stage}", e) for stage, e in broken]
            except (Cancelled, KeyboardInterrupt):
                raise
            except BaseException as exc:  # SystemExit...: a plugin's condition failed, not the refresh
                lifecycle_failed.append(RefreshFailure("lifecycle", _describe(exc)))
        failed: builtins.list[tuple[Segment, Exception]] = []
        plan = self._plan(None if ref is None else self.get(ref).slug, failed)
        if ids is not None and (kinds is not None or not customers_changed):
            plan = _affected(plan, kinds, customers_changed or stage_changes > 0)
        report = self._refresh_plan(plan, ids, progress, failed=failed)
        return attrs.evolve(
            report,
            stage_changes=stage_changes,
            customers=None if ids is None else len(ids),
            seconds=time.perf_counter() - started,
            failed=(*lifecycle_failed, *report.failed),
        )

    def _refresh_plan(
        self,
        plan: Sequence[tuple[Segment, Rule]],
        ids: Sequence[int] | None,
        progress: Callable[[str, int, int], None] | None = None,
        *,
        failed: Sequence[tuple[Segment, Exception]] = (),
    ) -> RefreshReport:
        """Refresh ``plan`` in order, each segment in its own transaction.

        A segment whose rule fails (the database refuses or cannot run its
        statement, a plugin condition raises) is rolled back, its error
        recorded on it and reported; the others go on.  A segment that
        evaluates again has its error cleared."""
        changes: builtins.list[SegmentChange] = []
        failures = [(seg, _describe(exc)) for seg, exc in failed]
        for n, (seg, rule) in enumerate(plan, 1):
            try:
                change = self._refresh_one(seg, rule, ids)
            except (Cancelled, KeyboardInterrupt):
                raise
            except BaseException as exc:  # SystemExit...: a plugin's condition failed, not the refresh
                failures.append((seg, _describe(exc)))
            else:
                if change.entered or change.exited:
                    changes.append(change)
                    self._emit(change)
            if progress is not None:
                progress(seg.slug, n, len(plan))
        for seg, message in failures:
            self._record_error(seg, message)
        return RefreshReport(
            tuple(changes), 0, None, 0.0, tuple(RefreshFailure(seg.slug, msg) for seg, msg in failures)
        )

    def _record_error(self, seg: Segment, message: str) -> None:
        """Store why ``seg`` failed (once per distinct message: live refreshes
        of a broken segment do not rewrite it on every event)."""
        if seg.error == message:
            return
        s = self.t("segments")
        with self.db.write() as conn:
            conn.execute(sa.update(s).where(s.c.id == seg.id).values(error=message, error_at=self.crm.now()))

    def _probe(self, conn: sa.Connection, rule: Rule) -> None:
        """Have the database compile (not run) the statements a refresh of
        ``rule`` sends, full and incremental: what it refuses raises here."""
        for restrict in (None, [0]):
            conn.execute(_Explain(rule.select(self._sql_context(conn, restrict=restrict))))

    def _fill(
        self, conn: sa.Connection, seg: Segment, rule: Rule, ids: Sequence[int] | None, now: datetime
    ) -> SegmentChange:
        """Bring ``seg``'s membership up to date on ``conn`` (no commit, no events)."""
        s = self.t("segments")
        entered: builtins.list[int] = []
        exited: builtins.list[int] = []
        if ids is None:
            self._refresh_full(conn, seg, rule, now, entered, exited)
        else:
            for chunk in _chunks(ids):
                self._refresh_chunk(conn, seg, rule, chunk, now, entered, exited)
        conn.execute(
            sa.update(s)
            .where(s.c.id == seg.id)
            .values(
                member_count=s.c.member_count + len(entered) - len(exited), refreshed_at=now, error=None, error_at=None
            )
        )
        fresh = attrs.evolve(
            seg,
            member_count=seg.member_count + len(entered) - len(exited),
            refreshed_at=now,
            error=None,
            error_at=None,
        )
        return SegmentChange(fresh, tuple(entered), tuple(exited))

    def _refresh_one(self, seg: Segment, rule: Rule, ids: Sequence[int] | None) -> SegmentChange:
        with self.db.write() as conn:
            return self._fill(conn, seg, rule, ids, self.crm.now())

    # Both ways evaluate the rule ONCE, then change only the difference; what
    # counts as entered/exited is what the INSERT … ON CONFLICT DO NOTHING and
    # the DELETE return, so a concurrent refresh of the same segment (on a
    # server database) cannot make an event fire twice.

    def _refresh_chunk(
        self,
        conn: sa.Connection,
        seg: Segment,
        rule: Rule,
        chunk: Sequence[int],
        now: datetime,
        entered: builtins.list[int],
        exited: builtins.list[int],
    ) -> None:
        """Incremental: a few thousand customers, diffed in memory."""
        m = self.t("segment_members")
        ctx = self._sql_context(conn, restrict=chunk)
        wanted: set[int] = set(conn.scalars(rule.select(ctx)))
        current = set(
            conn.scalars(
                sa.select(m.c.customer_id).where(m.c.segment_id == seg.id, ctx.restrict_clause(m.c.customer_id))
            )
        )
        add, drop = sorted(wanted - current), sorted(current - wanted)
        dialect = conn.dialect.name
        if add:
            each = _id_rows(add, dialect)
            ins = self._insert(conn).from_select(
                ["segment_id", "customer_id", "entered_at"],
                sa.select(sa.literal(seg.id), each, sa.literal(now, type_=m.c.entered_at.type)).where(sa.true()),
            )
            entered += conn.scalars(ins.on_conflict_do_nothing().returning(m.c.customer_id)).all()
        if drop:
            gone = sa.delete(m).where(m.c.segment_id == seg.id, ids_clause(m.c.customer_id, drop, dialect))
            exited += conn.scalars(gone.returning(m.c.customer_id)).all()

    def _refresh_full(
        self,
        conn: sa.Connection,
        seg: Segment,
        rule: Rule,
        now: datetime,
        entered: builtins.list[int],
        exited: builtins.list[int],
    ) -> None:
        """Full: the rule's members into a temporary table, then two set-based
        statements against it (no member list in Python, however large)."""
        m = self.t("segment_members")
        ctx = self._sql_context(conn)
        tmp = sa.Table(
            f"ecrm_wanted_{uuid.uuid4().hex[:12]}",
            sa.MetaData(),
            sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
            prefixes=["TEMPORARY"],
        )
        tmp.create(conn)
        # no try/finally: on an error the transaction is rolled back, which
        # drops the table too (a DROP in PostgreSQL's aborted transaction
        # would fail and hide the error)
        conn.execute(tmp.insert().from_select(["id"], rule.select(ctx)))
        members = sa.select(m.c.customer_id).where(m.c.segment_id == seg.id)
        ins = self._insert(conn).from_select(
            ["segment_id", "customer_id", "entered_at"],
            sa.select(sa.literal(seg.id), tmp.c.id, sa.literal(now, type_=m.c.entered_at.type)).where(
                tmp.c.id.not_in(members)
            ),
        )
        entered += conn.scalars(ins.on_conflict_do_nothing().returning(m.c.customer_id)).all()
        gone = sa.delete(m).where(m.c.segment_id == seg.id, m.c.customer_id.not_in(sa.select(tmp.c.id)))
        exited += conn.scalars(gone.returning(m.c.customer_id)).all()
        tmp.drop(conn)

    def _emit(self, change: SegmentChange) -> None:
        if change.entered:
            self.crm.emit("ecrm_segment_entered", segment=change.segment, customer_ids=change.entered)
        if change.exited:
            self.crm.emit("ecrm_segment_exited", segment=change.segment, customer_ids=change.exited)


def _toposort(deps: Mapping[str, Collection[str]]) -> builtins.list[str]:
    """Order slugs so that every segment comes after those it uses; reject cycles."""
    order: builtins.list[str] = []
    state: dict[str, int] = {}
    for root in sorted(deps):
        if state.get(root) == 2:
            continue
        stack: builtins.list[tuple[str, Iterator[str]]] = [(root, iter(sorted(deps.get(root, ()))))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[node] = 2
                order.append(node)
            elif state.get(nxt) == 1:
                path = [n for n, _ in stack]
                cycle = [*path[path.index(nxt) :], nxt]
                raise RuleError(
                    "rule",
                    cycle[0],
                    f"segments refer to each other in a cycle: {' → '.join(cycle)}",
                    "break the cycle: a segment cannot (indirectly) contain itself",
                )
            elif state.get(nxt) != 2 and nxt in deps:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(deps.get(nxt, ())))))
    return order


def _affected(
    plan: Sequence[tuple[Segment, Rule]], kinds: Collection[str] | None, customers_changed: bool
) -> builtins.list[tuple[Segment, Rule]]:
    """The segments whose membership can change, given what changed."""
    out: builtins.list[tuple[Segment, Rule]] = []
    touched: set[str] = set()
    for seg, rule in plan:
        rk = rule.kinds
        hit = (
            rk is None
            or (kinds is None)
            or bool(rk & set(kinds))
            or (customers_changed and rule.uses_customer)
            or bool(rule.segments & touched)
        )
        if hit:
            touched.add(seg.slug)
            out.append((seg, rule))
    return out
