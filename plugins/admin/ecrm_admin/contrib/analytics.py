"""The analytics pages (the report catalogue, each report with its chart) and the
value widget on the customer view, added through the core's admin hooks when
``ecrm-analytics`` is loaded — the way any plugin adds its own."""

from __future__ import annotations

from typing import Any

from ecrm_core.registry import AdminPage, AdminWidget
from markupsafe import Markup

from ..render import chart_img, table


def catalogue(request: Any) -> Any:
    from ecrm_analytics.reports import specs

    rows = [
        Markup('<li><a href="{}">{}</a> — {}</li>').format(request.url(f"/analytics/{s.name}"), s.title, s.description)
        for s in sorted(specs().values(), key=lambda s: s.name)
    ]
    return Markup('<ul id="reports">{}</ul>').format(Markup("").join(rows))


def report_page(request: Any) -> Any:
    """A report on a GET page: it never saves (a parameter that would is refused by
    ``ReportSpec.coerce``, and not offered in the form); saving is the CLI's and
    ``POST /analytics/reports/{name}``'s."""
    from ecrm_analytics.reports import get

    spec = get(request.path_params["name"])
    params = spec.coerce({k: v for k, v in request.query.items() if k in {p.name for p in spec.params}})
    key = f"analytics:{spec.name}:{sorted(params.items())}"
    built = request.admin.cached(request.workspace, key, lambda: spec.build(request.crm, **params))
    parts: list[Any] = [Markup("<h2>{}</h2>").format(built.title)]
    shown = [p for p in spec.params if not p.writes]
    if shown:
        fields = Markup("").join(
            Markup('<label for="p-{0}">{0}</label> <input id="p-{0}" name="{0}" value="{1}"> ').format(p.name, v)
            for p, v in ((p, params[p.name]) for p in shown)
        )
        parts.append(
            Markup('<form method="get" action="{}">{}<button type="submit">Show</button></form>').format(
                request.url(f"/analytics/{spec.name}"), fields
            )
        )
    if built.chart is not None:
        parts.append(chart_img(built.chart))
    if built.caption:
        parts.append(Markup('<p class="muted">{}</p>').format(built.caption))
    if built.summary:
        parts.append(table(["figure", "value"], sorted(built.summary.items())))
    parts.append(table(built.columns, built.rows[:500]))
    return parts


def value_widget(crm: Any, customer: Any) -> Any:
    from ecrm_analytics import analytics

    data = analytics(crm).customer(customer.id)
    rfm, clv = data.get("rfm"), data.get("clv")
    if rfm is None and clv is None:
        return "Not scored yet (ecrm analytics refresh)."
    rows = []
    if rfm:
        rows += [
            ("RFM group", rfm["group"]),
            ("RFM score", rfm["score"]),
            ("orders", rfm["orders"]),
            (f"monetary ({data['currency']})", rfm["monetary"]),
        ]
    if clv:
        rows += [
            ("P(alive)", round(clv["p_alive"], 3) if clv["p_alive"] is not None else ""),
            (f"value, next 12 months ({data['currency']})", clv["value_12m"]),
        ]
    return table(["", ""], rows)


def pages() -> list[AdminPage]:
    return [
        AdminPage(path="/analytics", title="Reports", handler=catalogue, nav_section="Analytics", order=10),
        AdminPage(path="/analytics/{name:str}", title="Report", handler=report_page, nav=False),
    ]


def widgets() -> list[AdminWidget]:
    return [AdminWidget(name="analytics_value", title="Value (analytics)", render=value_widget, order=10)]
