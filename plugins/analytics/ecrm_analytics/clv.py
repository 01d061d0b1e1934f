"""Customer lifetime value on ecrm's data: fit, predict, store, and check against a holdout.

The models are in :mod:`ecrm_analytics.models`.  Their input per customer
comes from the RFM rows (so no second scan of the interactions):

* ``x`` = purchases - 1 (repeat transactions: every ``purchase``
  interaction is one transaction — track one ``purchase`` per order, not per
  order line.  The published CDNOW fits count purchase *days*; the models
  are the same, only the input differs, and counting distinct days would
  cost the RFM aggregate a second sort per customer);
* ``t_x`` = days from the first to the last purchase; ``T`` = days from the
  first purchase to now;
* ``m`` = the customer's average order value, ``monetary / orders`` (net of
  refunds, all orders), in the reporting currency.

:func:`fit` fits BG/NBD on every customer and Gamma-Gamma on the repeat
buyers with a positive average, stores the parameters (``analytics_state``,
name ``clv``) and writes one ``analytics_clv`` row per customer:
``p_alive``, ``purchases_12m`` (expected purchases in the next 365 days),
``expected_value`` (expected average order value) and ``value_12m`` (their
product, undiscounted).  After an incremental RFM refresh :func:`predict`
updates the rows of the recomputed customers with the stored model; the
worker refits daily (``p_alive`` falls as time passes without purchases).

When the model cannot be fitted (no repeat buyers, a model that does not
converge…) :class:`~ecrm_analytics.models.FitError` says so with the data's
statistics; nothing stored is changed.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from .common import Report, get_rates
from .models import BgNbd, FitError, GammaGamma, fit_bgnbd, fit_gamma_gamma
from .reports import Param, ReportSpec, register
from .schema import CLV, RFM, STATE

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM

__all__ = ["HORIZON_DAYS", "Model", "fit", "holdout_report", "load_model", "predict", "summary"]

#: The horizon of ``purchases_12m`` and ``value_12m``, in days.
HORIZON_DAYS = 365.0


class Model:
    """A fitted pair of models and when it was fitted."""

    def __init__(self, bgnbd: BgNbd, gg: GammaGamma | None, fitted_at: datetime) -> None:
        self.bgnbd, self.gg, self.fitted_at = bgnbd, gg, fitted_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "bgnbd": self.bgnbd.to_dict(),
            "gamma_gamma": None if self.gg is None else self.gg.to_dict(),
            "fitted_at": self.fitted_at.isoformat(),
            "time_unit": "day",
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Model:
        b = data["bgnbd"]
        g = data.get("gamma_gamma")
        return cls(
            BgNbd(b["r"], b["alpha"], b["a"], b["b"], b.get("log_likelihood", 0.0), b.get("customers", 0)),
            None
            if g is None
            else GammaGamma(g["p"], g["q"], g["v"], g.get("log_likelihood", 0.0), g.get("customers", 0)),
            datetime.fromisoformat(data["fitted_at"]),
        )


def _days(crm: CRM, later: Any, earlier: Any) -> Any:
    if crm.db.dialect == "sqlite":
        return sa.func.julianday(later) - sa.func.julianday(earlier)
    return sa.extract("epoch", later - earlier) / 86400.0


def summary(
    crm: CRM, conn: sa.Connection, restrict: Collection[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(customer_ids, x, t_x, T, m)`` arrays from the RFM rows (days)."""
    table = crm.db.tables[RFM]
    now = sa.bindparam("now", crm.now(), type_=table.c.last_at.type)
    stmt = sa.select(
        table.c.customer_id,
        table.c.orders - 1,
        _days(crm, table.c.last_at, table.c.first_at),
        _days(crm, now, table.c.first_at),
        table.c.monetary / table.c.orders,
    ).where(table.c.workspace_id == crm.workspace)
    if restrict is not None:
        from ecrm_core.rules.sql import ids_clause

        stmt = stmt.where(ids_clause(table.c.customer_id, list(restrict), crm.db.dialect))
    rows = conn.execute(stmt).all()
    if not rows:
        empty = np.zeros(0)
        return empty.astype(int), empty, empty, empty, empty
    # from plain tuples: numpy reads a result row (a sequence object) element by element, 40 times slower
    arr = np.array([tuple(r) for r in rows], dtype=float)
    ids = arr[:, 0].astype(np.int64)
    x = np.maximum(arr[:, 1], 0)
    t_x = np.maximum(arr[:, 2], 0)
    T = np.maximum(arr[:, 3], t_x)
    # a customer whose first purchase is "now" has T = 0: the model needs T > 0 (a minute)
    T = np.maximum(T, 1 / 1440)
    return ids, x, t_x, T, np.nan_to_num(arr[:, 4], nan=0.0)


def load_model(crm: CRM, conn: sa.Connection | None = None) -> Model | None:
    """The stored model of the workspace, or ``None`` before the first fit."""
    state = crm.db.tables[STATE]
    stmt = sa.select(state.c.data).where(state.c.workspace_id == crm.workspace, state.c.name == "clv")
    if conn is None:
        with crm.db.read() as c:
            data = c.execute(stmt).scalar_one_or_none()
    else:
        data = conn.execute(stmt).scalar_one_or_none()
    return None if not data else Model.from_dict(data)


def _predictions(model: Model, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, m: np.ndarray) -> tuple[Any, ...]:
    p_alive = model.bgnbd.p_alive(x, t_x, T)
    purchases = model.bgnbd.expected_purchases(HORIZON_DAYS, x, t_x, T)
    if model.gg is not None:
        value = model.gg.expected_value(x, np.maximum(m, 0))
    else:
        value = np.maximum(m, 0)
    value = np.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)
    return p_alive, purchases, value, purchases * value


def _write(crm: CRM, conn: sa.Connection, model: Model, data: tuple[np.ndarray, ...], full: bool) -> int:
    table = crm.db.tables[CLV]
    ids, x, t_x, T, m = data
    if full:
        conn.execute(sa.delete(table).where(table.c.workspace_id == crm.workspace))
    elif ids.size:
        from ecrm_core.rules.sql import ids_clause

        conn.execute(
            sa.delete(table).where(
                table.c.workspace_id == crm.workspace,
                ids_clause(table.c.customer_id, [int(i) for i in ids], crm.db.dialect),
            )
        )
    if not ids.size:
        return 0
    p_alive, purchases, value, total = _predictions(model, x, t_x, T, m)
    now: Any = crm.now()
    if conn.dialect.name == "sqlite":  # the text SQLAlchemy stores for the time (UTC, one format)
        from sqlalchemy.dialects.sqlite import DATETIME

        now = DATETIME().bind_processor(conn.dialect)(table.c.computed_at.type.process_bind_param(now, conn.dialect))
    names = [c.name for c in table.c]
    assert names == ["workspace_id", "customer_id", "frequency", "recency_days", "age_days", "avg_value", "p_alive",
                     "purchases_12m", "expected_value", "value_12m", "computed_at"]  # fmt: skip
    # plain tuples of Python numbers (numpy's tolist), one executemany of a pre-rendered INSERT: no per-row dict
    # or per-value type processing
    columns = (ids.astype(np.int64), x.astype(np.int64), t_x, T, m, p_alive, purchases, value, total)
    ws = crm.workspace
    rows = [(ws, *row, now) for row in zip(*(np.asarray(col).tolist() for col in columns), strict=True)]
    prep = conn.dialect.identifier_preparer
    marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = (
        f"INSERT INTO {prep.format_table(table)} ({', '.join(prep.quote(n) for n in names)}) "
        f"VALUES ({', '.join([marker] * len(names))})"
    )
    for start in range(0, len(rows), 50_000):
        conn.exec_driver_sql(sql, rows[start : start + 50_000])
    return len(rows)


def fit(crm: CRM) -> Model:
    """Fit both models on every customer with purchases, store them and every customer's predictions."""
    with crm.db.read() as conn:
        data = summary(crm, conn)
    _ids, x, t_x, T, m = data
    bg = fit_bgnbd(x, t_x, T)
    try:
        gg: GammaGamma | None = fit_gamma_gamma(x, m)
    except FitError:
        gg = None  # too few repeat buyers: each customer's own average is used (documented)
    model = Model(bg, gg, crm.now())
    state = crm.db.tables[STATE]
    with crm.db.write() as conn:
        conn.execute(sa.delete(state).where(state.c.workspace_id == crm.workspace, state.c.name == "clv"))
        conn.execute(
            sa.insert(state).values(workspace_id=crm.workspace, name="clv", data=model.to_dict(), updated_at=crm.now())
        )
        _write(crm, conn, model, data, full=True)
    return model


def predict(crm: CRM, conn: sa.Connection, restrict: Collection[int] | None) -> int:
    """Rewrite the predictions of ``restrict`` (``None``: everyone) with the stored model (nothing before a fit)."""
    model = load_model(crm, conn)
    if model is None or (restrict is not None and not restrict):
        return 0
    return _write(crm, conn, model, summary(crm, conn, restrict), full=restrict is None)


def model_due(crm: CRM, max_age: timedelta) -> bool:
    """Whether the stored model is missing or older than ``max_age``."""
    model = load_model(crm)
    return model is None or crm.now() - model.fitted_at >= max_age


# ---------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------


def clv_report(crm: CRM, top: int = 20) -> Report:
    """The model's parameters, the customers with the most expected value, and p_alive's spread."""
    from ecrm_core.charts import Chart, Series

    model = load_model(crm)
    table, customers = crm.db.tables[CLV], crm.db.tables["customers"]
    rates = get_rates(crm)
    ws = table.c.workspace_id == crm.workspace
    with crm.db.read() as conn:
        top_rows = conn.execute(
            sa.select(
                table.c.customer_id, customers.c.name, customers.c.email, table.c.frequency, table.c.p_alive,
                table.c.purchases_12m, table.c.expected_value, table.c.value_12m,
            )
            .join(customers, customers.c.id == table.c.customer_id)
            .where(ws)
            .order_by(table.c.value_12m.desc(), table.c.customer_id)
            .limit(top)
        ).all()  # fmt: skip
        bucket = sa.case(*((table.c.p_alive < (i + 1) / 10, i) for i in range(9)), else_=9)
        spread = dict(conn.execute(sa.select(bucket, sa.func.count()).where(ws).group_by(bucket)).all())
        totals = conn.execute(sa.select(sa.func.count(), sa.func.sum(table.c.value_12m)).where(ws)).one()
    labels = [f"{i / 10:.1f}-{(i + 1) / 10:.1f}" for i in range(10)]
    chart = Chart(
        kind="bar",
        title="Customers by probability of being alive",
        categories=labels,
        series=[Series(name="customers", values=[int(spread.get(i, 0)) for i in range(10)])],
        x_label="P(alive)",
        y_label="customers",
        caption=f"{int(totals[0] or 0):,} customers; expected value of the next 12 months "
        f"{float(totals[1] or 0):,.0f} {rates.currency}.",
    )
    summary_: dict[str, Any] = {"customers": int(totals[0] or 0), "value_12m": float(totals[1] or 0),
                                "currency": rates.currency}  # fmt: skip
    if model is not None:
        summary_.update({f"bgnbd_{k}": v for k, v in model.bgnbd.to_dict().items() if k in ("r", "alpha", "a", "b")})
        if model.gg is not None:
            summary_.update({f"gg_{k}": v for k, v in model.gg.to_dict().items() if k in ("p", "q", "v")})
        summary_["fitted_at"] = model.fitted_at
        summary_["converged"] = model.bgnbd.converged and (model.gg is None or model.gg.converged)
    return Report(
        name="clv",
        title=f"Customer lifetime value: top {len(top_rows)} by expected value of the next 12 months",
        columns=("customer_id", "name", "email", "repeat days", "p_alive", "purchases 12m",
                 f"order value ({rates.currency})", f"value 12m ({rates.currency})"),
        rows=[tuple(r) for r in top_rows],
        summary=summary_,
        chart=chart,
        caption=chart.caption if model is not None else "no model yet: run `ecrm analytics refresh`",
    )  # fmt: skip


def holdout_report(crm: CRM, holdout_days: int = 90) -> Report:
    """Fit on the history before ``now - holdout_days`` and compare predicted with actual purchases after.

    Rows: customers grouped by repeat transactions in the calibration period
    (0 … 6, 7+), with the mean actual and predicted number of purchase days
    in the holdout period; the summary has the totals and the mean absolute
    error per customer.  Here transactions are purchase *days* (as in the
    published CDNOW check): the report reads the interactions, not the RFM rows.
    """
    from ecrm_core.charts import Chart, Series

    it = crm.db.tables["interactions"]
    now = crm.now()
    split = now - timedelta(days=holdout_days)
    day = sa.func.date(it.c.occurred_at)
    before = it.c.occurred_at < split
    stmt = (
        sa.select(
            it.c.customer_id,
            sa.func.count(sa.distinct(sa.case((before, day)))),
            _days(crm, sa.func.max(sa.case((before, it.c.occurred_at))), sa.func.min(it.c.occurred_at)),
            _days(crm, sa.bindparam("split", split, type_=it.c.occurred_at.type), sa.func.min(it.c.occurred_at)),
            sa.func.count(sa.distinct(sa.case((sa.not_(before), day)))),
        )
        .where(it.c.workspace_id == crm.workspace, it.c.kind == "purchase", it.c.occurred_at <= now)
        .group_by(it.c.customer_id)
        .having(sa.func.min(it.c.occurred_at) < split)
    )
    with crm.db.read() as conn:
        rows = conn.execute(stmt).all()
    if not rows:
        raise FitError("BG/NBD", f"no customer bought before the holdout split ({split:%Y-%m-%d})", {"customers": 0})
    # from plain tuples: numpy reads a result row (a sequence object) element by element, 40 times slower
    arr = np.array([tuple(r) for r in rows], dtype=float)
    x = np.maximum(arr[:, 1] - 1, 0)
    t_x = np.maximum(arr[:, 2], 0)
    T = np.maximum(arr[:, 3], np.maximum(t_x, 1 / 1440))
    actual = arr[:, 4]
    model = fit_bgnbd(x, t_x, T)
    predicted = model.expected_purchases(float(holdout_days), x, t_x, T)
    out_rows = []
    labels = []
    act_means, pred_means = [], []
    for k in range(8):
        sel = x == k if k < 7 else x >= 7
        label = str(k) if k < 7 else "7+"
        n = int(sel.sum())
        a_mean = float(actual[sel].mean()) if n else None
        p_mean = float(predicted[sel].mean()) if n else None
        out_rows.append((label, n, a_mean, p_mean))
        labels.append(label)
        act_means.append(a_mean)
        pred_means.append(p_mean)
    chart = Chart(
        kind="bar",
        title=f"Purchases in the {holdout_days}-day holdout: actual vs predicted",
        categories=labels,
        series=[Series(name="actual", values=act_means), Series(name="predicted", values=pred_means)],
        x_label="repeat purchase days in the calibration period",
        y_label="mean purchase days per customer",
        caption=f"{len(x):,} customers; {actual.sum():,.0f} purchase days actual, {predicted.sum():,.0f} predicted.",
    )
    return Report(
        name="clv_holdout",
        title="CLV calibration / holdout check (BG/NBD)",
        columns=("calibration repeat days", "customers", "actual (mean)", "predicted (mean)"),
        rows=out_rows,
        summary={
            "split": split, "holdout_days": holdout_days, "customers": len(x),
            "actual": float(actual.sum()), "predicted": float(predicted.sum()),
            "mean_absolute_error": float(np.mean(np.abs(actual - predicted))),
            "r": model.r, "alpha": model.alpha, "a": model.a, "b": model.b,
        },
        chart=chart,
        caption=chart.caption,
    )  # fmt: skip


register(
    ReportSpec(
        name="clv",
        title="Customer lifetime value",
        build=clv_report,
        params=(Param(name="top", type=int, default=20, help="how many customers to list", min=1, max=1000),),
        description="BG/NBD + Gamma-Gamma: the model, the customers with the most expected value, P(alive) spread.",
    )
)
register(
    ReportSpec(
        name="clv_holdout",
        title="CLV holdout check",
        build=holdout_report,
        params=(
            Param(name="holdout_days", type=int, default=90, help="length of the holdout period", min=7, max=3650),
        ),
        description="Fit BG/NBD on the history before the holdout period and compare predicted with actual purchases.",
    )
)
