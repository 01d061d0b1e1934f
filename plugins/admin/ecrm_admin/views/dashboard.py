"""The dashboard: customers, revenue, messages and running campaigns, with charts."""

from __future__ import annotations

from datetime import UTC, datetime
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


def _window(now: datetime) -> tuple[datetime, datetime]:
    """The revenue chart's twelve calendar months: the first day of the month eleven
    months back, and the first day of the current month (UTC)."""
    current = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    year, month = divmod(current.year * 12 + current.month - 1 - 11, 12)
    return current.replace(year=year, month=month + 1), current


def revenue_by_month(crm: Any, start: datetime, end: datetime | None = None) -> list[tuple[str, Decimal, int]]:
    """``(YYYY-MM, revenue, sales)`` of the sale kinds from ``start`` (to ``end``), by month:
    one grouped query through the ``(workspace, kind, time)`` index."""
    i = crm.db.tables["interactions"]
    sales = sorted(k for k, v in crm.registry.interaction_kinds.items() if v.sale)
    if not sales:
        return []
    conds = [i.c.workspace_id == crm.workspace, i.c.kind.in_(sales), i.c.occurred_at >= start]
    if end is not None:
        conds.append(i.c.occurred_at < end)
    with crm.db.read() as conn:
        month = _month(i.c.occurred_at, conn.dialect.name)
        rows = conn.execute(
            sa.select(month.label("m"), sa.func.sum(i.c.amount), sa.func.count())
            .where(*conds)
            .group_by(month)
            .order_by(month)
        ).all()
    return [(str(m), Decimal(str(s or 0)), int(n)) for m, s, n in rows]


def stage_counts(crm: Any) -> dict[str, int]:
    """Customers (not merged away) by lifecycle stage.

    Every customer of the workspace by stage (read from the ``(workspace,
    stage)`` index alone), minus the merged ones (few, found through the
    ``merged_into`` index): a filter on ``merged_into`` in the first query
    would read every customer's row."""
    c = crm.db.tables["customers"]
    ws = crm.workspace
    with crm.db.read() as conn:
        stages = dict(
            conn.execute(
                sa.select(c.c.lifecycle_stage, sa.func.count())
                .where(c.c.workspace_id == ws)
                .group_by(c.c.lifecycle_stage)
            ).all()
        )
        merged = conn.execute(merged_by_stage(conn, c, ws)).all()
    for stage, n in merged:
        stages[stage] -= n
    return {stage: int(n) for stage, n in stages.items() if n}


def merged_by_stage(conn: sa.Connection, c: sa.Table, workspace: str) -> sa.Executable:
    """The statement counting the workspace's merged customers by stage.

    On SQLite it reads them through the ``merged_into`` index (``INDEXED BY``)
    whatever the statistics say: without ``ANALYZE`` the planner takes the
    ``(workspace, stage)`` index for the workspace term, with it (every
    ``merged_into`` NULL in the sample) a table scan; both read a million
    rows where the index reads the few merged ones."""
    query = (
        sa.select(c.c.lifecycle_stage, sa.func.count())
        .where(c.c.merged_into.is_not(None), c.c.workspace_id == workspace)
        .group_by(c.c.lifecycle_stage)
    )
    index = next((ix for ix in c.indexes if [col.name for col in ix.columns] == ["merged_into"]), None)
    if conn.dialect.name != "sqlite" or index is None or index.name is None:
        return query
    quote = conn.dialect.identifier_preparer
    return sa.text(
        f"SELECT lifecycle_stage, count(*) FROM {quote.format_table(c)} INDEXED BY {quote.quote(str(index.name))} "
        "WHERE merged_into IS NOT NULL AND workspace_id = :ws GROUP BY lifecycle_stage"
    ).bindparams(ws=workspace)


def figures(crm: Any, since: datetime) -> dict[str, Any]:
    """The dashboard's figures that change often: customers by stage, the current
    month's revenue (from ``since``), messages, running campaigns."""
    stages = stage_counts(crm)
    return {
        "customers": sum(stages.values()),
        "stages": stages,
        "revenue": revenue_by_month(crm, since),
        "messages": crm.messages.counts(),
        "campaigns": _running_campaigns(crm),
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
    """The figures: the closed months of the revenue chart are computed at most every
    ``dashboard_history_ttl`` seconds (and when a month closes), the rest every
    ``dashboard_ttl`` seconds; both in the background once warm."""
    crm = request.crm
    admin = request.admin
    first, current = _window(crm.now())
    history = admin.cached(
        request.workspace,
        f"dashboard-history-{first:%Y-%m}",
        lambda: revenue_by_month(crm, first, current),
        ttl=admin.config.dashboard_history_ttl,
    )
    recent = admin.cached(request.workspace, "dashboard", lambda: figures(crm, current))
    data = {**recent, "revenue": [*history, *recent["revenue"]]}
    pictures = admin.cached(request.workspace, "dashboard-charts", lambda: charts(data, crm))
    total = sum((s for _m, s, _n in data["revenue"]), Decimal(0))
    return admin.page(request, "dashboard.html", title="Dashboard", data=data, charts=pictures, revenue_total=total)


def routes(admin: AdminApp) -> list[Route]:
    return [Route(path="/", methods=("GET",), view=dashboard, role="agent", name="Dashboard")]
