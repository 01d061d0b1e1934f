"""Sales tracking (the 360° view of sales): revenue, orders and average order value by any cut.

:func:`sales` groups the workspace's purchases and refunds by up to three
dimensions of :data:`DIMENSIONS`:

``channel``
    the interaction's channel (``web``, ``app``, ``email``, a marketplace…;
    ``(none)`` when the tracker sent none);
``period``
    the calendar ``day``, ``week`` (its Monday), ``month``, ``quarter`` or
    ``year`` in UTC (``period_unit``);
``campaign``
    the campaign the sale itself carries (``properties.campaign`` or
    ``properties.utm_campaign``; ``(none)`` otherwise) — the campaigns that
    *led* to a sale are :mod:`ecrm_analytics.attribution`'s subject;
``currency``
    the currency the sale was made in (amounts still reported converted);
``segment``
    each segment the buyer is a member of now (a customer in two segments
    counts in both rows; buyers in none are not listed).

Figures per row, money in the workspace's reporting currency
(:class:`~ecrm_analytics.common.Rates`):

* ``revenue``: the sum of positive purchase amounts;
* ``refunds``: the sum of refund amounts (as positive numbers), dated by the refund;
* ``net``: revenue - refunds (negative when a period refunds more than it sells);
* ``orders``: purchases (with any amount); ``customers``: distinct buyers;
* ``aov`` (average order value): revenue ÷ orders, ``None`` without orders;
* ``unconverted``: sales left out because their currency has no rate.

Everything is one ``GROUP BY`` in the database; future-dated interactions
(after the CRM's clock) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from ecrm_core.errors import ValidationError

from .common import Rates, Report, finite, get_rates
from .reports import Param, ReportSpec, register

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM

__all__ = ["DIMENSIONS", "NONE", "PERIODS", "SalesRow", "period_expr", "sales", "sales_report"]

DIMENSIONS: tuple[str, ...] = ("channel", "period", "campaign", "currency", "segment")
PERIODS: tuple[str, ...] = ("day", "week", "month", "quarter", "year")
#: the label of a missing channel, campaign or currency
NONE = "(none)"
#: at most this many groups in one answer (largest revenue first)
MAX_GROUPS = 5_000

SalesRow = dict[str, Any]


def period_expr(column: Any, unit: str, dialect: str) -> sa.ColumnElement[str]:
    """SQL for the UTC calendar ``unit`` of a timestamp column, as text (``2026-05``, ``2026-Q2``, a week's Monday)."""
    if unit not in PERIODS:
        raise ValidationError("period_unit", unit, "not a period", f"use one of {', '.join(PERIODS)}")
    if dialect == "postgresql":
        utc = sa.func.timezone("UTC", column)
        fmt = {"day": "YYYY-MM-DD", "month": "YYYY-MM", "quarter": 'YYYY-"Q"Q', "year": "YYYY"}
        if unit == "week":
            return sa.func.to_char(sa.func.date_trunc("week", utc), "YYYY-MM-DD")
        return sa.func.to_char(utc, fmt[unit])
    text = sa.type_coerce(column, sa.String())
    if unit == "week":
        return sa.type_coerce(sa.func.date(text, "weekday 0", "-6 days"), sa.String())
    if unit == "quarter":
        month = sa.cast(sa.func.substr(text, 6, 2), sa.Integer)
        year = sa.type_coerce(sa.func.substr(text, 1, 4), sa.String())
        return year.concat("-Q").concat(sa.cast((month + 2) // 3, sa.String))
    return sa.type_coerce(sa.func.substr(text, 1, {"day": 10, "month": 7, "year": 4}[unit]), sa.String())


def campaign_expr(properties: Any) -> sa.ColumnElement[str]:
    """SQL: the campaign an interaction carries (``properties.campaign`` or ``utm_campaign``), else NULL."""
    return sa.func.coalesce(properties["campaign"].as_string(), properties["utm_campaign"].as_string())


def _dims(by: Sequence[str] | str) -> tuple[str, ...]:
    given = (by,) if isinstance(by, str) else tuple(by)
    given = tuple(d.strip() for part in given for d in part.split(",") if d.strip())
    if not given:
        raise ValidationError("by", by, "no dimension", f"use one or more of {', '.join(DIMENSIONS)}")
    if len(given) > 3:
        raise ValidationError("by", by, "more than three dimensions", "group by at most three")
    for d in given:
        if d not in DIMENSIONS:
            raise ValidationError("by", d, "not a dimension", f"use one of {', '.join(DIMENSIONS)}")
    if len(set(given)) != len(given):
        raise ValidationError("by", by, "a dimension given twice", "name each dimension once")
    return given


def sales(
    crm: CRM,
    by: Sequence[str] | str = ("channel",),
    *,
    period_unit: str = "month",
    since: datetime | None = None,
    until: datetime | None = None,
    segments: Sequence[str] | None = None,
    rates: Rates | None = None,
) -> list[SalesRow]:
    """Revenue, refunds, net, orders, customers, AOV and unconverted sales per group (see the module docs).

    Rows are dicts keyed by the dimensions and the figures, largest revenue
    first (ties by the dimensions), at most :data:`MAX_GROUPS`.  ``segments``
    limits the ``segment`` dimension to those slugs.  An empty workspace
    gives no rows.
    """
    dims = _dims(by)
    if period_unit not in PERIODS:
        raise ValidationError("period_unit", period_unit, "not a period", f"use one of {', '.join(PERIODS)}")
    for name, at in (("since", since), ("until", until)):
        if at is not None and at.tzinfo is None:
            raise ValidationError(name, at, "a naive datetime", "give an aware datetime (UTC)")
    rates = rates or get_rates(crm)
    db = crm.db
    it = db.tables["interactions"]
    dialect = db.engine.dialect.name
    until = until or crm.now()
    where = [it.c.workspace_id == crm.workspace, it.c.kind.in_(("purchase", "refund")), it.c.occurred_at <= until]
    if since is not None:
        where.append(it.c.occurred_at >= since)
    cols: dict[str, Any] = {
        "channel": sa.func.coalesce(it.c.channel, NONE),
        "period": period_expr(it.c.occurred_at, period_unit, dialect),
        "campaign": sa.func.coalesce(campaign_expr(it.c.properties), NONE),
        "currency": sa.func.coalesce(sa.func.upper(it.c.currency), rates.currency),
    }
    source: Any = it
    if "segment" in dims:
        members, segs = db.tables["segment_members"], db.tables["segments"]
        source = it.join(members, members.c.customer_id == it.c.customer_id).join(
            segs, sa.and_(segs.c.id == members.c.segment_id, segs.c.workspace_id == crm.workspace)
        )
        cols["segment"] = segs.c.slug
        if segments:
            where.append(segs.c.slug.in_(list(segments)))
    value = rates.sql_convert(it.c.amount, it.c.currency)
    purchase = it.c.kind == "purchase"
    rate_missing = sa.and_(it.c.amount.is_not(None), rates.sql_rate(it.c.currency).is_(None))
    revenue = sa.func.coalesce(sa.func.sum(sa.case((sa.and_(purchase, value > 0), value))), 0.0)
    refunds = sa.func.coalesce(sa.func.sum(sa.case((it.c.kind == "refund", sa.func.abs(value)))), 0.0)
    keys = [cols[d].label(d) for d in dims]
    stmt = (
        sa.select(
            *keys,
            revenue.label("revenue"),
            refunds.label("refunds"),
            sa.func.count(sa.case((purchase, 1))).label("orders"),
            sa.func.count(sa.distinct(sa.case((purchase, it.c.customer_id)))).label("customers"),
            sa.func.count(sa.case((rate_missing, 1))).label("unconverted"),
        )
        .select_from(source)
        .where(*where)
        .group_by(*(cols[d] for d in dims))
        .order_by(revenue.desc(), *(cols[d] for d in dims))
        .limit(MAX_GROUPS)
    )
    out: list[SalesRow] = []
    with db.read() as conn:
        for row in conn.execute(stmt):
            rev, ref = finite(row.revenue) or 0.0, finite(row.refunds) or 0.0
            out.append(
                {
                    **{d: str(getattr(row, d)) for d in dims},
                    "revenue": round(rev, 6),
                    "refunds": round(ref, 6),
                    "net": round(rev - ref, 6),
                    "orders": int(row.orders),
                    "customers": int(row.customers),
                    "aov": round(rev / row.orders, 6) if row.orders else None,
                    "unconverted": int(row.unconverted),
                }
            )
    return out


def sales_report(
    crm: CRM, by: str = "channel", period_unit: str = "month", days: int = 365, segment: str = ""
) -> Report:
    """The ``sales`` report: the figures per group of ``by`` (comma-separated) over the last ``days``."""
    dims = _dims(by)
    now = crm.now()
    rows = sales(
        crm,
        dims,
        period_unit=period_unit,
        since=now - timedelta(days=days),
        until=now,
        segments=[segment] if segment else None,
    )
    if "period" in dims:
        rows.sort(key=lambda r: (r["period"], *(r[d] for d in dims if d != "period")))
    rates = get_rates(crm)
    figures = ("revenue", "refunds", "net", "orders", "customers", "aov", "unconverted")
    total_rev = sum(r["revenue"] for r in rows if "segment" not in dims)
    total_orders = sum(r["orders"] for r in rows if "segment" not in dims)
    summary: dict[str, Any] = {"currency": rates.currency, "days": days, "groups": len(rows)}
    if "segment" not in dims:
        summary |= {
            "revenue": round(total_rev, 2),
            "orders": total_orders,
            "aov": round(total_rev / total_orders, 2) if total_orders else None,
            "unconverted": sum(r["unconverted"] for r in rows),
        }
    return Report(
        name="sales",
        title=f"Sales by {', '.join(dims)} ({rates.currency}, last {days} days)",
        columns=(*dims, *figures),
        rows=[tuple(r[c] for c in (*dims, *figures)) for r in rows],
        summary=summary,
        chart=_chart(rows, dims, rates.currency),
        caption=_caption(rows, dims, summary),
    )


def _chart(rows: list[SalesRow], dims: tuple[str, ...], currency: str) -> Any:
    from ecrm_core.charts import MAX_CATEGORIES, MAX_SERIES, Chart, Series

    if not rows:
        return None
    if "period" in dims:
        other = next((d for d in dims if d != "period"), None)
        periods = sorted({r["period"] for r in rows})[-MAX_CATEGORIES:]
        groups: dict[str, dict[str, float]] = {}
        for r in rows:
            groups.setdefault(r[other] if other else "revenue", {})
            g = groups[r[other] if other else "revenue"]
            g[r["period"]] = g.get(r["period"], 0.0) + r["revenue"]
        ranked = sorted(groups, key=lambda k: -sum(groups[k].values()))[:MAX_SERIES]
        return Chart(
            kind="line",
            title=f"Revenue by {', '.join(dims)} ({currency})",
            categories=periods,
            series=[Series(name=k, values=[groups[k].get(p, 0.0) for p in periods]) for k in ranked],
            value_format="money",
            y_label=currency,
        )
    top = rows[:40]
    return Chart(
        kind="bar",
        title=f"Revenue by {', '.join(dims)} ({currency})",
        categories=[" / ".join(r[d] for d in dims) for r in top],
        series=[
            Series(name="revenue", values=[r["revenue"] for r in top]),
            Series(name="net", values=[r["net"] for r in top]),
        ],
        value_format="money",
        y_label=currency,
    )


def _caption(rows: list[SalesRow], dims: tuple[str, ...], summary: dict[str, Any]) -> str:
    if not rows:
        return "No sales in the period."
    best = max(rows, key=lambda r: r["revenue"])
    where = " / ".join(best[d] for d in dims)
    text = f"Most revenue: {where} ({best['revenue']:,.2f} {summary['currency']}, {best['orders']:,} orders)."
    if summary.get("unconverted"):
        text += f" {summary['unconverted']:,} sales in currencies without a rate are left out (ecrm analytics rates)."
    return text[:500]


register(
    ReportSpec(
        name="sales",
        title="Sales: revenue, orders and average order value",
        build=sales_report,
        description="Revenue, refunds, orders and AOV by channel, period, campaign, currency or segment.",
        params=(
            Param(name="by", type=str, default="channel", help=f"comma-separated dimensions: {', '.join(DIMENSIONS)}"),
            Param(
                name="period_unit", type=str, default="month", help="period of the period dimension", choices=PERIODS
            ),
            Param(name="days", type=int, default=365, help="how many days back", min=1, max=36500),
            Param(name="segment", type=str, default="", help="with by=segment: only this segment"),
        ),
    )
)
