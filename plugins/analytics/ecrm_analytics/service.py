"""``analytics(crm)``: refreshing what analytics stores, and reading it per customer.

* :meth:`Analytics.refresh` recomputes the marked customers (or everyone
  with ``full=True``), rescores RFM, updates the customers' CLV predictions
  and refits the CLV model when asked, then refreshes the segments of the
  customers whose results changed (so ``rfm(group="at_risk")`` segments
  follow);
* :func:`refresh_tick` is the worker job ``analytics.refresh``: one bounded
  batch of marked customers per tick, and a daily refit of the CLV model;
* :meth:`Analytics.customer` is what analytics knows about one customer
  (:func:`ecrm_analytics.attributes.values`: the attributes of many, for
  templates and personalization).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from attrs import frozen

from .common import finite, get_rates
from .conditions import CHANGED
from .models import FitError
from .schema import CLV, RFM, STATE

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM
    from ecrm_core.registry import JobContext, JobResult

__all__ = ["BATCH", "Analytics", "RefreshResult", "analytics", "on_merged", "refresh_tick"]

#: Marked customers recomputed per worker tick.
BATCH = 5000
#: The CLV model is refit by the worker when it is older than this.
CLV_MAX_AGE = timedelta(days=1)


@frozen
class RefreshResult:
    """What a refresh did."""

    customers: int  # customers recomputed
    changed: int  # customers whose scores, group or CLV changed
    pending: int  # marked customers left
    clv_fitted: bool
    seconds: float
    message: str = ""

    def describe(self) -> str:
        fit = "; CLV model refit" if self.clv_fitted else ""
        left = f"; {self.pending:,} still marked" if self.pending else ""
        extra = f" ({self.message})" if self.message else ""
        return (
            f"recomputed {self.customers:,} customer(s), {self.changed:,} changed{fit}{left} "
            f"in {self.seconds:.2f} s{extra}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "customers": self.customers,
            "changed": self.changed,
            "pending": self.pending,
            "clv_fitted": self.clv_fitted,
            "seconds": round(self.seconds, 3),
            "message": self.message,
        }


class Analytics:
    """The analytics of one CRM workspace (build it with :func:`analytics`)."""

    def __init__(self, crm: CRM) -> None:
        self.crm = crm

    def refresh(
        self,
        *,
        full: bool = False,
        clv: bool = False,
        limit: int | None = None,
        progress: bool = False,
        workers: int | None = None,
    ) -> RefreshResult:
        """Recompute the marked customers (all of them, or ``limit``), or everyone with ``full``.

        ``clv=True`` also refits the lifetime-value model on every customer.
        ``progress=True`` shows a rich progress bar (for the CLI).  ``workers``:
        how many reader connections a full build aggregates with on a SQLite
        file (default one per CPU, at most 4; see :func:`ecrm_analytics.rfm.build`).  When the
        workspace copies results into attributes (:func:`~ecrm_analytics.attributes.set_copy`),
        the changed ones are written and ``ecrm_customers_updated`` fires for them.
        """
        from . import attributes, rfm, store
        from . import clv as clv_model

        crm = self.crm
        started = time.perf_counter()
        rates = get_rates(crm)
        steps = ["RFM", "CLV predictions"] + (["CLV fit"] if clv else []) + ["segments"]
        message = ""
        changes: list[Any] = []
        with _Progress(progress, len(steps)) as bar:
            bar.step(steps[0])
            with crm.db.write() as conn:
                claimed = store.claim(crm, conn, 2**62 if full or limit is None else limit)
                ids: list[int] | None = None if full else [c for c, _ in claimed]
                if ids is None:
                    # everyone's aggregates, scores and groups; only the rows that differ are written
                    built = rfm.build(crm, conn, rates=rates, workers=workers)
                    everyone, changed = set(built.customers), set(built.changed)
                else:
                    rfm.compute(crm, conn, restrict=ids, rates=rates)
                    changed = set(rfm.rescore(crm, conn)) | set(ids)
                    everyone = set()
                bar.step("CLV predictions")
                if clv_model.predict(crm, conn, ids) and ids is None:
                    changed |= everyone  # every prediction rewritten with the stored model (they follow the clock)
                store.release(crm, conn, claimed)
                copy = attributes.copy_enabled(crm, conn)
                if copy:
                    changes = attributes.copy_values(crm, conn, None if full else sorted(changed))
            attributes.emit(crm, changes)
            fitted = False
            if clv:
                bar.step("CLV fit")
                try:
                    clv_model.fit(crm)
                except FitError as exc:
                    message = str(exc)
                else:
                    fitted = True
                    if copy:
                        with crm.db.write() as conn:
                            changes = attributes.copy_values(crm, conn, None)
                        attributes.emit(crm, changes)
            bar.step("segments")
            if fitted:
                changed |= _all_ids(crm)
            if changed:
                # for these customers, the segments and lifecycle stages whose rules use rfm()/clv()/churn();
                # those on the copied attributes follow the customers_updated event like any attribute change
                crm.segments.refresh(customer_ids=sorted(changed), kinds=(CHANGED,), customers_changed=False)
        return RefreshResult(
            customers=len(everyone) if full else len(claimed),
            changed=len(changed),
            pending=store.pending(crm),
            clv_fitted=fitted,
            seconds=time.perf_counter() - started,
            message=message,
        )

    def customer(self, customer_id: int) -> dict[str, Any]:
        """What analytics knows about one customer, as plain data (``None`` values when unknown).

        ``{"rfm": {"recency_days", "orders", "monetary", "r", "f", "m", "score", "group"} | None,
        "clv": {...} | None, "currency": "EUR"}``.  Templates see the same data (see the docs).
        """
        crm = self.crm
        customer = crm.customers.get(customer_id)  # NotFound for an unknown customer; follows merges
        rfm_t, clv_t = crm.db.tables[RFM], crm.db.tables[CLV]
        now = crm.now()
        with crm.db.read() as conn:
            r = conn.execute(
                sa.select(rfm_t).where(rfm_t.c.workspace_id == crm.workspace, rfm_t.c.customer_id == customer.id)
            ).first()
            c = conn.execute(
                sa.select(clv_t).where(clv_t.c.workspace_id == crm.workspace, clv_t.c.customer_id == customer.id)
            ).first()
        out: dict[str, Any] = {
            "customer_id": customer.id,
            "currency": get_rates(crm).currency,
            "rfm": None,
            "clv": None,
        }
        if r is not None:
            out["rfm"] = {
                "recency_days": finite((now - r.last_at).total_seconds() / 86400),
                "first_purchase_at": r.first_at.isoformat(),
                "last_purchase_at": r.last_at.isoformat(),
                "orders": r.orders,
                "revenue": finite(r.revenue),
                "refunds": finite(r.refunds),
                "monetary": finite(r.monetary),
                "r": r.r_score,
                "f": r.f_score,
                "m": r.m_score,
                "score": f"{r.r_score}{r.f_score}{r.m_score}",
                "group": r.grp,
            }
        if c is not None:
            out["clv"] = {
                "p_alive": finite(c.p_alive),
                "purchases_12m": finite(c.purchases_12m),
                "expected_order_value": finite(c.expected_value),
                "value_12m": finite(c.value_12m),
            }
        return out

    def state(self, name: str) -> dict[str, Any] | None:
        """What an analysis stored about the workspace (``"rfm"``: cut points; ``"clv"``: the model)."""
        state = self.crm.db.tables[STATE]
        with self.crm.db.read() as conn:
            data = conn.execute(
                sa.select(state.c.data).where(state.c.workspace_id == self.crm.workspace, state.c.name == name)
            ).scalar_one_or_none()
        return data  # type: ignore[no-any-return]


def analytics(crm: CRM) -> Analytics:
    """The analytics of ``crm``'s workspace."""
    return Analytics(crm)


def refresh_tick(ctx: JobContext) -> JobResult:
    """The worker job ``analytics.refresh``: up to :data:`BATCH` marked customers per tick."""
    from ecrm_core.registry import JobResult

    from .clv import model_due

    crm = ctx.crm
    result = Analytics(crm).refresh(limit=BATCH)
    note = ""
    if result.pending == 0 and _has_buyers(crm) and model_due(crm, CLV_MAX_AGE):
        refit = Analytics(crm).refresh(limit=0, clv=True)
        note = "; CLV model refit" if refit.clv_fitted else f"; {refit.message}"
    return JobResult(
        done=result.customers,
        more=result.pending > 0,
        message=f"{result.customers} recomputed, {result.changed} changed, {result.pending} marked{note}",
    )


def _all_ids(crm: CRM, conn: sa.Connection | None = None) -> set[int]:
    table = crm.db.tables[RFM]
    stmt = sa.select(table.c.customer_id).where(table.c.workspace_id == crm.workspace)
    if conn is not None:
        return set(conn.execute(stmt).scalars())
    with crm.db.read() as c:
        return set(c.execute(stmt).scalars())


def _has_buyers(crm: CRM) -> bool:
    table = crm.db.tables[RFM]
    with crm.db.read() as conn:
        return (
            conn.execute(sa.select(table.c.customer_id).where(table.c.workspace_id == crm.workspace).limit(1)).first()
            is not None
        )


def on_merged(crm: CRM, target_id: int) -> None:
    """After a merge committed (the source forgotten and the target marked in its
    transaction, ``ecrm_customers_merging``): recompute the target now."""
    Analytics(crm).refresh()


class _Progress:
    """A rich progress bar over named steps, or nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self._progress: Any = None
        self._task: Any = None
        self._started = False

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(), transient=False,
            )  # fmt: skip
            self._progress.start()
            self._task = self._progress.add_task("analytics", total=self.total)
        return self

    def step(self, name: str) -> None:
        if self._progress is not None:
            if self._started:
                self._progress.advance(self._task)
            self._started = True
            self._progress.update(self._task, description=name)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            if self._started and not exc[0]:
                self._progress.advance(self._task)
            self._progress.stop()


def _ids(values: Iterable[int]) -> list[int]:
    return sorted({int(v) for v in values})
