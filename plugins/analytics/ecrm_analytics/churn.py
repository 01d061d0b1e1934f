"""Churn and retention: who is slipping away and why, cohort retention, repeat-purchase rate.

**Risk** per customer with purchases, from the stored RFM and CLV rows:

* ``gap`` = the customer's typical days between purchase days, ``t_x / x``
  (unknown for a single purchase day); ``overdue`` = days since the last
  purchase divided by ``gap``;
* ``high``: ``p_alive < 0.3``, or ``overdue > 3``, or (single purchase day)
  more than 180 days since it;
* ``medium``: ``p_alive < 0.6``, or ``overdue > 1.5``, or (single purchase
  day) more than 90 days;
* ``low`` otherwise.  Without a CLV model only the recency rules apply.

**Reasons**: for the customers listed, the complaints, refunds and
unsubscribes from 90 days before their last purchase until now — what
happened before they lapsed, where the data has it.

**Cohorts**: customers grouped by the month (UTC) of their first purchase;
the share of each cohort that purchased in each month after (month 0 is
100 % by definition).  **Repeat-purchase rate**: the share of buyers with
two purchases or more.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .common import Report, get_rates
from .reports import Param, ReportSpec, register
from .schema import CLV, RFM

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM

__all__ = ["REASON_KINDS", "RISKS", "churn_report", "cohort_report", "risk_of", "sql_risk"]

#: Interaction kinds shown as reasons before a lapse.
REASON_KINDS = ("complaint", "refund", "unsubscribe")
RISKS = ("high", "medium", "low")


def risk_of(recency_days: float, gap_days: float | None, p_alive: float | None) -> str:
    """The churn risk of one customer (see the module docs; :func:`sql_risk` is its SQL twin).

    ``overdue > k`` is computed as ``recency_days > k * gap_days`` (the same
    arithmetic as the SQL, so the two agree to the last bit).
    """
    gap = gap_days if gap_days is not None and gap_days > 0 else None  # 0 or unknown: a single purchase day
    if (p_alive is not None and p_alive < 0.3) or (gap is not None and recency_days > 3 * gap):
        return "high"
    if gap is None and recency_days > 180:
        return "high"
    if (p_alive is not None and p_alive < 0.6) or (gap is not None and recency_days > 1.5 * gap):
        return "medium"
    if gap is None and recency_days > 90:
        return "medium"
    return "low"


def sql_risk(recency_days: Any, gap_days: Any, p_alive: Any) -> Any:
    """The SQL twin of :func:`risk_of`: ``'high'``, ``'medium'`` or ``'low'`` (``gap_days`` NULL or 0: unknown,
    ``p_alive`` NULL: no CLV model)."""
    gap = sa.case((gap_days > 0, gap_days))
    unknown = gap.is_(None)
    high = sa.or_(
        p_alive < 0.3, sa.and_(gap.is_not(None), recency_days > 3 * gap), sa.and_(unknown, recency_days > 180)
    )
    medium = sa.or_(
        p_alive < 0.6, sa.and_(gap.is_not(None), recency_days > 1.5 * gap), sa.and_(unknown, recency_days > 90)
    )
    return sa.case((high, "high"), (medium, "medium"), else_="low")


def churn_report(crm: CRM, top: int = 20, risk: str = "high") -> Report:
    """Customers by churn risk; the most valuable customers at ``risk`` with the reasons before their lapse."""
    from ecrm_core.charts import Chart, Series

    rfm, clv, customers = crm.db.tables[RFM], crm.db.tables[CLV], crm.db.tables["customers"]
    it = crm.db.tables["interactions"]
    now = crm.now()
    rates = get_rates(crm)
    with crm.db.read() as conn:
        rows = conn.execute(
            sa.select(
                rfm.c.customer_id, rfm.c.last_at, rfm.c.orders, rfm.c.monetary, clv.c.p_alive, clv.c.frequency,
                clv.c.recency_days,
            )
            .select_from(rfm.outerjoin(clv, sa.and_(clv.c.workspace_id == rfm.c.workspace_id,
                                                    clv.c.customer_id == rfm.c.customer_id)))
            .where(rfm.c.workspace_id == crm.workspace)
        ).all()  # fmt: skip
        counts = dict.fromkeys(RISKS, 0)
        money = dict.fromkeys(RISKS, 0.0)
        picked: list[tuple[float, int, float, float | None, float | None, Any, int]] = []
        repeat = 0
        for cid, last_at, orders, monetary, p_alive, freq, span in rows:
            recency = (now - last_at).total_seconds() / 86400
            gap = (span / freq) if freq else None
            level = risk_of(recency, gap, p_alive)
            counts[level] += 1
            money[level] += float(monetary)
            repeat += orders >= 2
            if level == risk:
                picked.append((float(monetary), cid, recency, gap, p_alive, last_at, orders))
        picked.sort(key=lambda r: (-r[0], r[1]))
        picked = picked[:top]
        ids = [p[1] for p in picked]
        reasons: dict[int, dict[str, int]] = {}
        names: dict[int, tuple[str | None, str | None]] = {}
        if ids:
            from ecrm_core.rules.sql import ids_clause

            earliest = {p[1]: p[5] - timedelta(days=90) for p in picked}
            for cid, kind, at in conn.execute(
                sa.select(it.c.customer_id, it.c.kind, it.c.occurred_at).where(
                    it.c.workspace_id == crm.workspace,
                    it.c.kind.in_(REASON_KINDS),
                    it.c.occurred_at <= now,
                    ids_clause(it.c.customer_id, ids, crm.db.dialect),
                )
            ):
                if at >= earliest[cid]:
                    reasons.setdefault(cid, {}).setdefault(kind, 0)
                    reasons[cid][kind] += 1
            names = {
                r.id: (r.name, r.email)
                for r in conn.execute(
                    sa.select(customers.c.id, customers.c.name, customers.c.email).where(
                        ids_clause(customers.c.id, ids, crm.db.dialect)
                    )
                )
            }
    out_rows = []
    for monetary, cid, recency, gap, p_alive, _last, orders in picked:
        why = reasons.get(cid, {})
        text = ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in sorted(why.items())) or "no complaint or refund"
        name, email = names.get(cid, (None, None))
        out_rows.append((cid, name, email, orders, monetary, round(recency, 1),
                         None if gap is None else round(gap, 1), p_alive, text))  # fmt: skip
    total = len(rows)
    chart = Chart(
        kind="bar",
        title="Customers by churn risk",
        categories=list(RISKS),
        series=[Series(name="customers", values=[counts[r] for r in RISKS])],
        y_label="customers",
        caption=f"{counts['high']:,} of {total:,} customers at high risk, holding "
        f"{money['high']:,.0f} {rates.currency} of past spend; repeat-purchase rate "
        f"{(repeat / total if total else 0):.1%}.",
    )
    return Report(
        name="churn",
        title=f"Churn risk: the {len(out_rows)} most valuable customers at {risk} risk, and why",
        columns=("customer_id", "name", "email", "orders", f"monetary ({rates.currency})", "days since last",
                 "usual gap (days)", "p_alive", "before the lapse"),
        rows=out_rows,
        summary={"customers": total, **{f"risk_{r}": counts[r] for r in RISKS},
                 "repeat_purchase_rate": repeat / total if total else 0.0, "currency": rates.currency},
        chart=chart,
        caption=chart.caption,
    )  # fmt: skip


def _month(crm: CRM, column: Any) -> Any:
    if crm.db.dialect == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", column), "YYYY-MM")
    return sa.func.strftime("%Y-%m", column)


def _offset(first: str, month: str) -> int:
    return (int(month[:4]) - int(first[:4])) * 12 + int(month[5:7]) - int(first[5:7])


def cohort_report(crm: CRM, months: int = 12) -> Report:
    """Retention by first-purchase month: the last ``months`` cohorts, ``months`` months each."""
    from ecrm_core.charts import Chart

    it = crm.db.tables["interactions"]
    m = _month(crm, it.c.occurred_at)
    cm = (
        sa.select(it.c.customer_id, m.label("m"))
        .where(it.c.workspace_id == crm.workspace, it.c.kind == "purchase", it.c.occurred_at <= crm.now())
        .group_by(it.c.customer_id, m)
        .cte("cm")
    )
    first = sa.select(cm.c.customer_id, sa.func.min(cm.c.m).label("f")).group_by(cm.c.customer_id).cte("first")
    stmt = (
        sa.select(first.c.f, cm.c.m, sa.func.count())
        .select_from(cm.join(first, first.c.customer_id == cm.c.customer_id))
        .group_by(first.c.f, cm.c.m)
    )
    with crm.db.read() as conn:
        data = conn.execute(stmt).all()
    cohorts: dict[str, dict[int, int]] = {}
    for f, month, n in data:
        cohorts.setdefault(f, {})[_offset(f, month)] = int(n)
    keys = sorted(cohorts)[-months:]
    latest = max((mm for _, mm, _ in data), default=None)
    columns = [f"month {k}" for k in range(months)]
    values: list[list[float | None]] = []
    rows = []
    for f in keys:
        size = cohorts[f].get(0, 0)
        observed = _offset(f, latest) if latest else 0
        line = [(cohorts[f].get(k, 0) / size if size else None) if k <= observed else None for k in range(months)]
        values.append(line)
        rows.append((f, size, *line))
    chart = Chart(
        kind="heatmap",
        title="Customers buying again, by first-purchase month",
        rows=keys,
        columns=columns,
        values=values,
        value_format="percent",
        caption="Each row is the customers whose first purchase was in that month; each cell the share who bought "
        "in the month so many months later (empty: not observed yet).",
    )
    m1 = [v[1] for v in values if len(v) > 1 and v[1] is not None]
    return Report(
        name="cohorts",
        title="Cohort retention by first-purchase month",
        columns=("cohort", "customers", *columns),
        rows=rows,
        summary={"cohorts": len(keys), "mean_month_1_retention": (sum(m1) / len(m1)) if m1 else None},
        chart=chart if keys else None,
        caption=chart.caption,
    )


register(
    ReportSpec(
        name="churn",
        title="Churn risk",
        build=churn_report,
        params=(
            Param(name="risk", type=str, default="high", help="which risk level to list", choices=RISKS),
            Param(name="top", type=int, default=20, help="how many customers to list", min=1, max=1000),
        ),
        description="Customers by churn risk (P(alive) and how overdue they are), the most valuable at risk with "
        "the complaints and refunds before their lapse.",
    )
)
register(
    ReportSpec(
        name="cohorts",
        title="Cohort retention",
        build=cohort_report,
        params=(Param(name="months", type=int, default=12, help="cohorts and months shown", min=2, max=60),),
        description="Retention table by first-purchase month, and the repeat-purchase rate.",
    )
)
