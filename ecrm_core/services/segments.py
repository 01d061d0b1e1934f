"""Segments: stored rules (dynamic) and uploaded lists (static), kept current.

Membership is materialised in ``segment_members`` (with ``entered_at``).
:meth:`Segments.refresh` brings it up to date, either fully or for some
customers only (incremental refresh, which is what keeps segments live as
events arrive); every change fires ``ecrm_segment_entered`` /
``ecrm_segment_exited`` exactly once, after it is committed.
"""

from __future__ import annotations

import builtins
import difflib
import json
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal

import attrs
import sqlalchemy as sa
from attrs import frozen
from sqlalchemy.dialects import postgresql, sqlite

from ..domain import Customer
from ..errors import Conflict, NotFound, ValidationError
from ..rules import Catalogue, EvalContext, Rule, RuleError, SqlContext, compile_rule
from ..rules.sql import ids_clause
from ..validation import check_text, thaw
from ._base import Service
from .segment_queries import Cancelled, CancelToken, _Explain, explain, refused_as_rule_error, render
from .segment_queries import describe as _describe

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

#: Customer ids per statement in incremental refreshes (bound parameters).
CHUNK = 5000
_SLUG_FIX = "use 1 to 64 lower-case letters, digits, '_' or '-', starting with a letter, e.g. 'vip'"


@frozen
class Segment:
    """A stored segment: ``dynamic`` (a rule) or ``static`` (an uploaded list)."""

    id: int
    workspace: str
    slug: str
    name: str
    description: str
    kind: Literal["dynamic", "static"]
    rule: Mapping[str, Any] | None
    member_count: int
    created_at: datetime
    updated_at: datetime
    refreshed_at: datetime | None
    #: Why the rule last failed to evaluate (None: it evaluated at the last
    #: refresh); the segment keeps its last membership meanwhile.
    error: str | None = None
    #: When it failed (cleared with ``error`` once it evaluates again).
    error_at: datetime | None = None

    @property
    def text(self) -> str | None:
        """The rule in the text syntax (None for static segments)."""
        from ..rules import to_text

        return None if self.rule is None else to_text(self.rule)


@frozen
class Member:
    customer_id: int
    entered_at: datetime


@frozen
class Preview:
    """What a rule would select, without storing anything."""

    count: int
    sample: tuple[Customer, ...]
    sql: str
    plan: tuple[str, ...]
    warnings: tuple[str, ...]
    text: str


@frozen
class SegmentChange:
    segment: Segment
    entered: tuple[int, ...]
    exited: tuple[int, ...]


@frozen
class RefreshFailure:
    """A segment (or ``lifecycle``) a refresh skipped because its rule failed to evaluate."""

    slug: str
    error: str


@frozen
class RefreshReport:
    """What a refresh changed; ``customers`` is None for a full refresh;
    ``failed``: the segments skipped because their rule failed (recorded on
    them as ``error``), the others were refreshed."""

    changes: tuple[SegmentChange, ...]
    stage_changes: int
    customers: int | None
    seconds: float
    failed: tuple[RefreshFailure, ...] = ()

    @property
    def entered(self) -> int:
        return sum(len(c.entered) for c in self.changes)

    @property
    def exited(self) -> int:
        return sum(len(c.exited) for c in self.changes)


_UNSET: Any = object()


class Segments(Service):
    """``crm.segments``: who is in which segment, kept current."""

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
    # rules
    # ------------------------------------------------------------------
    def catalogue(self, *, segments: Iterable[str] | None = None) -> Catalogue:
        """The names rules may use here (fields, kinds, stages, conditions, segments)."""
        base = Catalogue.from_registry(self.crm.registry)
        if segments is None:
            segments = self._slugs()
        return Catalogue(base.fields, base.kinds, base.stages, base.conditions, frozenset(segments))

    def compile(self, rule: str | Mapping[str, Any] | Rule) -> Rule:
        """Validate rule text or a tree against this CRM's plugins and segments."""
        return compile_rule(rule, self.catalogue())

    def _cached(self, rule: str | Mapping[str, Any], segments: Iterable[str]) -> Rule:
        """Compile a stored rule once per registry (stored rules are re-read on every refresh)."""
        segs = frozenset(segments)
        key = (
            id(self.crm.registry),
            rule if isinstance(rule, str) else json.dumps(thaw(rule), sort_keys=True, default=str),
            segs,
        )
        cache = self.crm._shared.rule_cache
        hit = cache.get(key)
        if hit is None:
            hit = compile_rule(rule, self.catalogue(segments=segs))
            if len(cache) > 512:
                cache.clear()
            cache[key] = hit
        return hit

    def _sql_context(self, conn: sa.Connection, *, restrict: Collection[int] | None = None) -> SqlContext:
        return SqlContext(
            tables=self.db.tables,
            workspace=self.workspace,
            now=self.crm.now(),
            dialect=conn.dialect.name,
            segment_ids=self._ids(conn),
            restrict=restrict,
            crm=self.crm,
        )

    def _ids(self, conn: sa.Connection) -> dict[str, int]:
        s = self.t("segments")
        return {
            r.slug: r.id for r in conn.execute(sa.select(s.c.slug, s.c.id).where(s.c.workspace_id == self.workspace))
        }

    def _slugs(self) -> builtins.list[str]:
        s = self.t("segments")
        with self.db.read() as conn:
            return builtins.list(conn.scalars(sa.select(s.c.slug).where(s.c.workspace_id == self.workspace)))

    # ------------------------------------------------------------------
    # reading
    # ------------------------------------------------------------------
    def _from_row(self, row: Any) -> Segment:
        m = row._mapping
        return Segment(
            id=m["id"],
            workspace=m["workspace_id"],
            slug=m["slug"],
            name=m["name"],
            description=m["description"],
            kind=m["kind"],
            rule=m["rule"],
            member_count=m["member_count"],
            created_at=m["created_at"],
            updated_at=m["updated_at"],
            refreshed_at=m["refreshed_at"],
            error=m.get("error"),
            error_at=m.get("error_at"),
        )

    def _where(self, ref: str | int) -> sa.ColumnElement[bool]:
        s = self.t("segments")
        if isinstance(ref, int) and not isinstance(ref, bool):
            return sa.and_(s.c.workspace_id == self.workspace, s.c.id == ref)
        if isinstance(ref, str):
            return sa.and_(s.c.workspace_id == self.workspace, s.c.slug == ref)
        raise ValidationError("segment", ref, "not a segment slug or id", "pass the slug, e.g. 'vip'")

    def get(self, ref: str | int) -> Segment:
        """The segment with this slug (or id), or :class:`NotFound` with a suggestion."""
        with self.db.read() as conn:
            row = conn.execute(sa.select(self.t("segments")).where(self._where(ref))).first()
        if row is None:
            err = NotFound("segment", ref)
            close = difflib.get_close_matches(str(ref), self._slugs(), n=1)
            if close:
                err.args = (f'{err.args[0]} — did you mean "{close[0]}"?',)
            raise err
        return self._from_row(row)

    def list(self) -> builtins.list[Segment]:
        s = self.t("segments")
        with self.db.read() as conn:
            rows = conn.execute(sa.select(s).where(s.c.workspace_id == self.workspace).order_by(s.c.slug))
            return [self._from_row(r) for r in rows]

    def members(self, ref: str | int, *, limit: int = 100, after: int | None = None) -> builtins.list[Member]:
        """Members in customer-id order; pass the last id as ``after`` for the next page."""
        if not isinstance(limit, int) or not 1 <= limit <= 100_000:
            raise ValidationError("limit", limit, "not between 1 and 100000", "ask for at most 100000 per page")
        seg = self.get(ref)
        m = self.t("segment_members")
        q = sa.select(m.c.customer_id, m.c.entered_at).where(m.c.segment_id == seg.id)
        if after is not None:
            q = q.where(m.c.customer_id > after)
        with self.db.read() as conn:
            rows = conn.execute(q.order_by(m.c.customer_id).limit(limit))
            return [Member(r.customer_id, r.entered_at) for r in rows]

    def count(self, ref: str | int) -> int:
        """How many customers are members (from the stored membership)."""
        seg = self.get(ref)
        m = self.t("segment_members")
        with self.db.read() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).where(m.c.segment_id == seg.id)) or 0)

    def is_member(self, ref: str | int, customer_id: int) -> bool:
        seg = self.get(ref)
        m = self.t("segment_members")
        with self.db.read() as conn:
            q = sa.select(m.c.customer_id).where(m.c.segment_id == seg.id, m.c.customer_id == customer_id)
            return conn.execute(q).first() is not None

    def of(self, customer_id: int) -> builtins.list[str]:
        """Slugs of the segments the customer is a member of."""
        with self.db.read() as conn:
            return sorted(self._memberships(conn, customer_id))

    def _memberships(self, conn: sa.Connection, customer_id: int) -> set[str]:
        m, s = self.t("segment_members"), self.t("segments")
        q = sa.select(s.c.slug).join(m, m.c.segment_id == s.c.id).where(m.c.customer_id == customer_id)
        return set(conn.scalars(q))

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
                known = set(
                    conn.scalars(
                        sa.select(c.c.id).where(
                            c.c.workspace_id == self.workspace, c.c.merged_into.is_(None), c.c.id.in_(chunk)
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
                            c.c.id.in_(chunk),
                            c.c.id.not_in(sa.select(m.c.customer_id).where(m.c.segment_id == seg.id)),
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

    def _insert(self, conn: sa.Connection) -> Any:
        m = self.t("segment_members")
        return postgresql.insert(m) if conn.dialect.name == "postgresql" else sqlite.insert(m)

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
            except Cancelled:
                raise
            except Exception as exc:
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
            except Cancelled:
                raise
            except Exception as exc:
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
                count = int(conn.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0)
                rows = conn.execute(
                    sa.select(c).where(c.c.id.in_(stmt.order_by(c.c.id).limit(sample))).order_by(c.c.id)
                ).all()
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


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _refers_to(tree: Any, slug: str) -> bool:
    """Whether a stored rule tree uses ``segment(slug)``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            if node.get("segment") == slug:
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _check_slug(slug: Any) -> str:
    import re

    if not isinstance(slug, str) or not re.match(r"^[a-z][a-z0-9_\-]{0,63}$", slug):
        raise ValidationError("slug", slug, "not a valid segment slug", _SLUG_FIX)
    return slug


def _ids(values: Iterable[int], field_name: str, *, allow_empty: bool = True) -> builtins.list[int]:
    if isinstance(values, (str, bytes)):
        raise ValidationError(field_name, values, "not a list of ids", "pass customer ids, e.g. [1, 2, 3]")
    out: dict[int, None] = {}
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValidationError(f"{field_name}[{i}]", v, "not a customer id", "pass positive integer ids")
        out[v] = None
    return builtins.list(out)


def _id_rows(ids: Sequence[int], dialect: str) -> Any:
    """The ids as a column of rows (``json_each`` on SQLite, ``unnest`` on
    PostgreSQL): one bound parameter, however many ids."""
    if dialect == "sqlite":
        return (
            sa.func.json_each(sa.bindparam("ids", json.dumps(list(ids)), type_=sa.String)).table_valued("value").c.value
        )
    if dialect == "postgresql":
        return sa.func.unnest(sa.bindparam("ids", list(ids), type_=postgresql.ARRAY(sa.BigInteger))).column_valued("id")
    return sa.values(sa.column("id", sa.BigInteger), name="ids").data([(i,) for i in ids]).c.id


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


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
