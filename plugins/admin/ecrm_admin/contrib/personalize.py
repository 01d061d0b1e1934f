"""The personalization pages (placements, their bandit arms and uplift against the
control group) and the customer's stated preferences on the customer view,
added through the core's admin hooks when ``ecrm-personalize`` is loaded."""

from __future__ import annotations

from typing import Any

from ecrm_core.registry import AdminPage, AdminWidget
from markupsafe import Markup

from ..render import table


def _p(crm: Any) -> Any:
    from ecrm_personalize import personalize

    return personalize(crm)


def placements(request: Any) -> Any:
    rows = [
        Markup('<li><a href="{}">{}</a> — k={}, control {} %</li>').format(
            request.url(f"/personalize/{p.name}"), p.name, p.k, round(p.control * 100, 1)
        )
        for p in _p(request.crm).placements()
    ]
    return Markup('<ul id="placements">{}</ul>').format(Markup("").join(rows) or Markup("<li>none defined</li>"))


def placement(request: Any) -> Any:
    from ecrm_core.charts import Chart, Series

    p = _p(request.crm)
    name = request.path_params["name"]
    p.placement(name)  # NotFound -> 404
    lift = p.uplift(name)
    groups = lift["groups"]
    parts: list[Any] = [
        Markup("<h2>Personalized against control</h2>"),
        table(
            ["group", "impressions", "clicks", "conversions", "click rate", "conversion rate"],
            [
                (
                    g,
                    v["impression"],
                    v["click"],
                    v["conversion"],
                    "" if v["click_rate"] is None else f"{v['click_rate']:.1%}",
                    "" if v["conversion_rate"] is None else f"{v['conversion_rate']:.1%}",
                )
                for g, v in sorted(groups.items())
            ],
        ),
    ]
    rates = [groups[g]["conversion_rate"] for g in ("control", "personalized")]
    if all(r is not None for r in rates):
        from ..render import chart_img

        parts.append(
            chart_img(
                Chart(
                    kind="bar",
                    title=f"Conversion rate, {name}",
                    categories=["control", "personalized"],
                    series=[Series(name="conversion", values=rates)],
                    value_format="percent",
                )
            )
        )
    arms = p.arms(name)
    if arms:
        parts.append(Markup("<h2>Bandit arms</h2>"))
        parts.append(
            table(
                ["segment", "alternative", "trials", "wins"],
                [(s, a, v["trials"], v["wins"]) for s, by in sorted(arms.items()) for a, v in sorted(by.items())],
            )
        )
    return parts


def preferences_widget(crm: Any, customer: Any) -> Any:
    prefs = _p(crm).preferences(customer.id)
    if not prefs:
        return None
    return table(["preference", "answer"], sorted((k, v) for k, v in prefs.items()))


def pages() -> list[AdminPage]:
    return [
        AdminPage(path="/personalize", title="Placements", handler=placements, nav_section="Personalization"),
        AdminPage(path="/personalize/{name:str}", title="Placement", handler=placement, nav=False),
    ]


def widgets() -> list[AdminWidget]:
    return [AdminWidget(name="personalize_preferences", title="Preferences", render=preferences_widget, order=20)]
