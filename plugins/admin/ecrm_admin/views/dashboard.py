"""The dashboard: customers, revenue, messages and running campaigns, with charts."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..app import AdminRequest, Route

if TYPE_CHECKING:  # pragma: no cover
    from ..app import AdminApp


def _month(column: Any, dialect: str) -> Any:
    if dialect == "postgresql":
        return sa.func.to_char(column, "YYYY-MM")
    return sa.func.substr(column, 1, 7)  # SQLite keeps 'YYYY-MM-DD HH:MM:SS' text in UTC


def figures(crm: Any) -> dict[str, Any]:
    """The dashboard's numbers for one workspace (set-based: a few grouped queries)."""
    c, i = crm.db.tables["customers"], crm.db.tables["interactions"]
    ws = crm.workspace
    sales = sorted(k for k, v in crm.registry.interaction_kinds.items() if v.sale)
    since = crm.now() - timedelta(days=365)
    with crm.db.read() as conn:
        stages = dict(
            conn.execute(
                sa.select(c.c.lifecycle_stage, sa.func.count())
                .where(c.c.workspace_id == ws, c.c.merged_into.is_(None))
                .group_by(c.c.lifecycle_stage)
            ).all()
        )
        month = _month(i.c.occurred_at, conn.dialect.name)
        revenue = (
            conn.execute(
                sa.select(month.label("m"), sa.func.sum(i.c.amount), sa.func.count())
                .where(i.c.workspace_id == ws, i.c.kind.in_(sales), i.c.occurred_at >= since)
                .group_by(month)
                .order_by(month)
            ).all()
            if sales
            else []
        )
    messages = crm.messages.counts()
    campaigns = _running_campaigns(crm)
    return {
        "customers": sum(stages.values()),
        "stages": stages,
        "revenue": [(str(m), Decimal(str(s or 0)), int(n)) for m, s, n in revenue],
        "messages": messages,
        "campaigns": campaigns,
    }


def _running_campaigns(crm: Any) -> list[tuple[str, str]] | None:
    t = crm.db.tables.get("campaigns")
    if t is None or "status" not in t.c:
        return None
    with crm.db.read() as conn:
        rows = conn.execute(
            sa.select(t.c.key, t.c.name).where(t.c.workspace_id == crm.workspace, t.c.status == "live").limit(20)
        ).all()
    return [(r.key, r.name) for r in rows]


def charts(data: dict[str, Any], crm: Any) -> list[Any]:
    from ecrm_core.charts import Chart, Series

    out = []
    order = {name: (s.order, name) for name, s in crm.registry.lifecycle_stages.items()}
    stages = sorted(data["stages"], key=lambda n: order.get(n, (999, n)))
    if stages:
        out.append(
            Chart(
                kind="bar",
                title="Customers by lifecycle stage",
                categories=stages,
                series=[Series(name="customers", values=[data["stages"][s] for s in stages])],
                y_label="customers",
            )
        )
    if data["revenue"]:
        out.append(
            Chart(
                kind="bar",
                title="Revenue by month (last 12 months)",
                categories=[m for m, _s, _n in data["revenue"]],
                series=[Series(name="revenue", values=[float(s) for _m, s, _n in data["revenue"]])],
                value_format="money",
            )
        )
    return out


def dashboard(request: AdminRequest) -> Any:
    crm = request.crm
    data = request.admin.cached(request.workspace, "dashboard", lambda: figures(crm))
    pictures = request.admin.cached(request.workspace, "dashboard-charts", lambda: charts(data, crm))
    total = sum((s for _m, s, _n in data["revenue"]), Decimal(0))
    return request.admin.page(
        request, "dashboard.html", title="Dashboard", data=data, charts=pictures, revenue_total=total
    )


def routes(admin: AdminApp) -> list[Route]:
    return [Route(path="/", methods=("GET",), view=dashboard, role="agent", name="Dashboard")]
