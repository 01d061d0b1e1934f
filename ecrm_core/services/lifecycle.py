"""Lifecycle stages as rules, kept current like segments.

Each registered :class:`~ecrm_core.registry.LifecycleStage` may carry a
default rule; a workspace can replace the whole ordered list with
:meth:`Lifecycle.set_rules`.  Rules are tried in order and the first that
holds gives the customer's stage; a customer no rule matches keeps the stage
they have (so a host can also set stages by hand).
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from attrs import frozen

from ..errors import ValidationError
from ..rules import EvalContext, Rule, RuleError
from ..rules.sql import ids_clause, unindexed
from ._base import Service
from .segment_queries import describe

__all__ = ["StageChange", "StageRule", "Lifecycle"]

CHUNK = 5000
_MANUAL = "-"


@frozen
class StageChange:
    """A customer moved from one lifecycle stage to another."""

    customer_id: int
    before: str
    after: str
    phase: str


@frozen
class StageRule:
    """The rule that puts customers in ``stage`` (tried in ``position`` order)."""

    stage: str
    phase: str
    position: int
    rule: Rule

    @property
    def text(self) -> str:
        return self.rule.text


class Lifecycle(Service):
    """``crm.lifecycle``: the stage rules and their upkeep."""

    def _compile(self, stage: str, rule: Any, path: str) -> Rule:
        try:
            return self.crm.segments._cached(rule, ())
        except ValidationError as exc:
            raise RuleError(
                f"{path}.{exc.field}",
                exc.value,
                exc.problem,
                exc.fix,
                line=getattr(exc, "line", None),
                column=getattr(exc, "column", None),
                context=getattr(exc, "context", None),
            ) from None

    def defaults(self) -> builtins.list[StageRule]:
        """The rules the plugins registered (by precedence)."""
        stages = sorted(self.crm.registry.lifecycle_stages.values(), key=lambda s: (s.precedence, s.order, s.name))
        return [
            StageRule(s.name, s.phase, n, self._compile(s.name, s.rule, f"stages.{s.name}"))
            for n, s in enumerate(s for s in stages if s.rule is not None)
        ]

    def rules(self) -> builtins.list[StageRule]:
        """The rules in force in this workspace, in the order they are tried.

        A stored rule that no longer validates (its plugin was removed)
        raises :class:`RuleError`; refreshes skip it instead (see :meth:`refresh`)."""
        return self._rules()[0]

    def _rules(self, *, skip_invalid: bool = False) -> tuple[builtins.list[StageRule], builtins.list[tuple[str, str]]]:
        """The rules in force, and (with ``skip_invalid``) the stored ones left out because they no longer validate."""
        t = self.t("lifecycle_rules")
        broken: builtins.list[tuple[str, str]] = []
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(t.c.stage, t.c.position, t.c.rule, t.c.error)
                .where(t.c.workspace_id == self.workspace)
                .order_by(t.c.position)
            ).all()
        if not rows:
            return self.defaults(), broken
        stages = self.crm.registry.lifecycle_stages
        out = []
        self._stored_errors = {r.stage for r in rows if r.error is not None}
        for r in rows:
            if r.stage == _MANUAL:
                return [], broken
            if r.stage not in stages:  # its plugin was removed: skip the rule, keep the customers' stage
                continue
            try:
                rule = self._compile(r.stage, r.rule, f"stages.{r.stage}")
            except ValidationError as exc:
                if not skip_invalid:
                    raise
                broken.append((r.stage, describe(exc)))
                continue
            out.append(StageRule(r.stage, stages[r.stage].phase, r.position, rule))
        return out, broken

    def set_rules(self, rules: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> builtins.list[StageRule]:
        """Replace this workspace's stage rules (an ordered mapping stage → rule).

        Every stage must be registered; rules are validated (and may not use
        ``segment(...)``).  An empty mapping turns the rules off: stages are
        then only what the host sets (``crm.customers.update(lifecycle_stage=)``).  Existing customers move at the next refresh;
        call ``crm.lifecycle.refresh()`` to move them now.
        """
        items = builtins.list(rules.items() if isinstance(rules, Mapping) else rules)
        compiled: builtins.list[StageRule] = []
        seen: set[str] = set()
        for n, item in enumerate(items):
            if not isinstance(item, tuple) or len(item) != 2:
                raise ValidationError(
                    f"rules[{n}]", item, "not a (stage, rule) pair", "pass {'active': 'purchase.last() within 90d'}"
                )
            stage, rule = item
            stage = self.crm.check_stage(stage, f"rules[{n}].stage")
            if stage in seen:
                raise ValidationError(f"rules[{n}].stage", stage, "listed twice", "give each stage one rule")
            seen.add(stage)
            phase = self.crm.registry.lifecycle_stages[stage].phase
            compiled.append(StageRule(stage, phase, n, self._compile(stage, rule, f"rules[{n}].rule")))
        t = self.t("lifecycle_rules")
        now = self.crm.now()
        with self.db.write() as conn:
            conn.execute(sa.delete(t).where(t.c.workspace_id == self.workspace))
            rows = [
                {
                    "workspace_id": self.workspace,
                    "stage": r.stage,
                    "position": r.position,
                    "rule": dict(r.rule.tree),
                    "updated_at": now,
                }
                for r in compiled
            ]
            # No rules at all: stages are set by hand (a marker row keeps the defaults away).
            conn.execute(
                sa.insert(t),
                rows
                or [{"workspace_id": self.workspace, "stage": _MANUAL, "position": -1, "rule": {}, "updated_at": now}],
            )
        return compiled

    def reset(self) -> None:
        """Go back to the plugins' default rules."""
        t = self.t("lifecycle_rules")
        with self.db.write() as conn:
            conn.execute(sa.delete(t).where(t.c.workspace_id == self.workspace))

    def stage_for(self, customer_id: int) -> str:
        """The stage the rules give this customer now (evaluated in memory)."""
        cust = self.crm.customers.get(customer_id)
        rules = self.rules()
        i = self.t("interactions")
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(i.c.kind, i.c.channel, i.c.occurred_at, i.c.amount, i.c.currency, i.c.properties).where(
                    i.c.workspace_id == self.workspace, i.c.customer_id == cust.id
                )
            ).all()
        ctx = EvalContext(cust, rows, self.crm.now(), frozenset(), self.crm)
        for r in rules:
            if r.rule.evaluate(ctx):
                return r.stage
        return cust.lifecycle_stage

    def counts(self) -> dict[str, int]:
        """Customers per stage (every registered stage, zero included)."""
        c = self.t("customers")
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(c.c.lifecycle_stage, sa.func.count())
                .where(c.c.workspace_id == self.workspace, c.c.merged_into.is_(None))
                .group_by(c.c.lifecycle_stage)
            ).all()
        stages = sorted(self.crm.registry.lifecycle_stages.values(), key=lambda s: s.order)
        result = {s.name: 0 for s in stages}
        result.update({r[0]: int(r[1]) for r in rows})
        return result

    def refresh(
        self,
        *,
        customer_ids: Sequence[int] | None = None,
        kinds: Collection[str] | None = None,
        customers_changed: bool = True,
    ) -> int:
        """Move customers to the stage their rules give now; return how many moved.

        ``customer_ids`` limits the work to those customers (incremental); with
        ``kinds`` and ``customers_changed=False`` nothing runs unless a rule
        uses one of those kinds.  ``ecrm_lifecycle_changed`` fires once,
        after the commit.

        A stage rule that fails (it no longer validates, or the database
        cannot run it) is skipped: its error is recorded on it (``errors()``)
        and the other rules still move customers.
        """
        return self._refresh(customer_ids=customer_ids, kinds=kinds, customers_changed=customers_changed)[0]

    def errors(self) -> dict[str, tuple[str, Any]]:
        """Stage → (error, when) for this workspace's stored rules that last failed."""
        t = self.t("lifecycle_rules")
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(t.c.stage, t.c.error, t.c.error_at).where(
                    t.c.workspace_id == self.workspace, t.c.error.is_not(None)
                )
            ).all()
        return {r.stage: (r.error, r.error_at) for r in rows}

    def _refresh(
        self,
        *,
        customer_ids: Sequence[int] | None = None,
        kinds: Collection[str] | None = None,
        customers_changed: bool = True,
    ) -> tuple[int, builtins.list[tuple[str, str]]]:
        """:meth:`refresh`, and the stage rules skipped because they failed."""
        rules, broken = self._rules(skip_invalid=True)
        try:
            moved = self._run(rules, customer_ids, kinds, customers_changed)
        except sa.exc.DBAPIError:
            # Find the rules the database cannot run, alone; go on without them.
            good = []
            for r in rules:
                try:
                    with self.db.read() as conn:
                        ctx = self.crm.segments._sql_context(conn, restrict=None if customer_ids is None else [0])
                        conn.execute(sa.select(sa.func.count()).select_from(r.rule.select(ctx).limit(1).subquery()))
                    good.append(r)
                except sa.exc.DBAPIError as exc:
                    broken.append((r.stage, describe(exc)))
            if len(good) == len(rules):
                raise
            moved = self._run(good, customer_ids, kinds, customers_changed)
        self._record(broken)
        return moved, broken

    def _record(self, broken: Sequence[tuple[str, str]]) -> None:
        """Store each failing stored rule's error; clear the others'."""
        if not broken and not getattr(self, "_stored_errors", None):
            return  # the usual case: no write at all
        t = self.t("lifecycle_rules")
        mine = t.c.workspace_id == self.workspace
        with self.db.write() as conn:
            failing = {stage: msg for stage, msg in broken}
            stale = [
                r.stage
                for r in conn.execute(sa.select(t.c.stage, t.c.error).where(mine, t.c.error.is_not(None)))
                if r.stage not in failing
            ]
            if stale:
                conn.execute(sa.update(t).where(mine, t.c.stage.in_(stale)).values(error=None, error_at=None))
            for stage, msg in failing.items():
                conn.execute(
                    sa.update(t)
                    .where(mine, t.c.stage == stage, sa.or_(t.c.error.is_(None), t.c.error != msg))
                    .values(error=msg, error_at=self.crm.now())
                )

    def _run(
        self,
        rules: Sequence[StageRule],
        customer_ids: Sequence[int] | None,
        kinds: Collection[str] | None,
        customers_changed: bool,
    ) -> int:
        if not rules:
            return 0
        if customer_ids is not None and kinds is not None:
            used: set[str] = set()
            for r in rules:
                k = r.rule.kinds
                if k is None:
                    used = set(kinds)
                    break
                used |= k
            if not (used & set(kinds)) and not (customers_changed and any(r.rule.uses_customer for r in rules)):
                return 0
        phases = {r.stage: r.phase for r in rules}
        c = self.t("customers")
        changes: builtins.list[StageChange] = []
        now = self.crm.now()
        with self.db.write() as conn:
            chunks: Iterable[Sequence[int] | None] = (
                [None]
                if customer_ids is None
                else (customer_ids[i : i + CHUNK] for i in range(0, len(customer_ids), CHUNK))
            )
            for chunk in chunks:
                ctx = self.crm.segments._sql_context(conn, restrict=chunk)
                after = sa.case(*[(r.rule.clause(ctx), r.stage) for r in rules], else_=c.c.lifecycle_stage)
                ws: Any = c.c.workspace_id
                merged: Any = c.c.merged_into
                if chunk is not None and conn.dialect.name == "sqlite":
                    # a few customers: driven by the primary key, not by the
                    # (workspace, stage) index over every customer
                    ws, merged = unindexed(ws), unindexed(merged)
                q = sa.select(c.c.id, c.c.lifecycle_stage.label("before"), after.label("after")).where(
                    ws == self.workspace, merged.is_(None), ctx.restrict_clause(c.c.id)
                )
                sub = q.subquery()
                rows = conn.execute(sa.select(sub).where(sub.c.before != sub.c.after)).all()
                changes.extend(StageChange(row.id, row.before, row.after, phases.get(row.after, "")) for row in rows)
                self._store(conn, rows, now)
        if changes:
            self.crm.emit("ecrm_lifecycle_changed", changes=tuple(changes))
        return len(changes)

    def _store(self, conn: sa.Connection, rows: Sequence[sa.Row[Any]], now: Any) -> None:
        """Write the new stages of ``rows`` (``id``, ``after``)."""
        c = self.t("customers")
        if conn.dialect.name == "sqlite":
            # One pass over the table in id order, a row per parameter set:
            # each page is read and dirtied once while it is in the page
            # cache.  A statement per stage (``id IN (...)``) walks the table
            # once per stage and measured ~1.8x slower for 2,365 random
            # customers of 1M, its COMMIT included (benchmarks/segments.py).
            # The statement is compiled once and its rows handed to the
            # driver as plain tuples: SQLAlchemy's per-row parameter
            # processing cost as much as SQLite's work here.
            if not rows:
                return
            compiled = (
                sa.update(c)
                .where(c.c.id == sa.bindparam("b_id"))
                .values(lifecycle_stage=sa.bindparam("stage"), updated_at=sa.bindparam("at"))
                .compile(dialect=conn.dialect)
            )
            process = c.c.updated_at.type.bind_processor(conn.dialect)
            value: dict[str, Any] = {"at": process(now) if process else now}
            order = compiled.positiontup or ()
            params = []
            for row in sorted(rows, key=lambda r: r.id):
                value["b_id"], value["stage"] = row.id, row.after
                params.append(tuple(value[k] for k in order))
            conn.exec_driver_sql(compiled.string, params)
            return
        if not rows:
            return
        # Lock the rows in id order first: two refreshes (or a refresh and a
        # tracking batch) updating overlapping customers in different orders
        # (one statement per stage) would otherwise deadlock on PostgreSQL.
        # NO KEY UPDATE (the id never changes): rows inserted meanwhile for
        # these customers (their foreign keys' KEY SHARE checks) do not wait.
        ordered = sorted(row.id for row in rows)
        for i in range(0, len(ordered), CHUNK):
            conn.execute(
                sa.select(c.c.id)
                .where(ids_clause(c.c.id, ordered[i : i + CHUNK], conn.dialect.name))
                .order_by(c.c.id)
                .with_for_update(key_share=True)
            ).all()
        by_stage: dict[str, builtins.list[int]] = {}
        for row in rows:
            by_stage.setdefault(row.after, []).append(row.id)
        for stage, ids in by_stage.items():
            for i in range(0, len(ids), CHUNK):
                conn.execute(
                    sa.update(c)
                    .where(ids_clause(c.c.id, ids[i : i + CHUNK], conn.dialect.name))
                    .values(lifecycle_stage=stage, updated_at=now)
                )
