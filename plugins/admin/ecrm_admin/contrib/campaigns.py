"""The campaign pages (list, definition and journey, results with the uplift chart,
start/pause/resume/stop), added through ``ecrm_register_admin_pages`` like
any plugin's pages.  Only imported when the campaigns plugin is loaded."""

from __future__ import annotations

from typing import Any

from ecrm_core.errors import Conflict, ValidationError
from ecrm_core.registry import AdminPage
from markupsafe import Markup, escape

from ..app import AdminRequest, Html, Redirect
from ..render import chart_img, table

ACTIONS = ("start", "pause", "resume", "stop")


def _svc(crm: Any) -> Any:
    from ecrm_campaigns.service import Campaigns

    return Campaigns(crm)


def _form(request: AdminRequest, yaml_text: str, error: str | None) -> Markup:
    err = Markup('<p class="error-box" role="alert">{}</p>').format(error) if error else Markup("")
    return Markup(
        '<h2>New or changed campaign (YAML)</h2>{err}<form method="post" action="{action}">{csrf}'
        '<p><label for="c-yaml">Definition</label><textarea id="c-yaml" name="definition" rows="16" '
        'spellcheck="false">{text}</textarea></p><p><button type="submit">Save campaign</button></p></form>'
    ).format(err=err, action=request.url("/campaigns"), csrf=request.csrf_field(), text=yaml_text)


def campaigns_page(request: AdminRequest) -> Any:
    svc = _svc(request.crm)
    error = None
    text = ""
    if request.method == "POST":
        request.require("marketer")
        text = request.form.get("definition", "")
        try:
            info = svc.save(text, actor=f"admin:{request.user.username}")
            return Redirect(request.url(f"/campaigns/{info.key}"))
        except (ValidationError, Conflict) as exc:
            error = str(exc)
    rows = [
        Markup('<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>').format(
            request.url(f"/campaigns/{c.key}"), c.key, c.name, c.status, c.version, c.definition.trigger.type
        )
        for c in svc.list()
    ]
    listing = Markup(
        '<table id="campaigns"><thead><tr><th scope="col">campaign</th><th scope="col">name</th><th scope="col">status</th>'
        '<th scope="col">version</th><th scope="col">trigger</th></tr></thead><tbody>{}</tbody></table>'
    ).format(Markup("").join(rows) or Markup('<tr><td colspan="5">No campaigns yet.</td></tr>'))
    parts = [listing]
    if request.user.at_least("marketer"):
        parts.append(_form(request, text, error))
    if error:
        body = request.admin.page(request, "plugin_page.html", title="Campaigns", content=Markup("").join(parts))
        body.status = 400
        return body
    return parts


def _uplift_chart(evaluation: Any) -> Any:
    from ecrm_core.charts import Chart, Series

    if not evaluation.uplifts:
        return None
    return Chart(
        kind="interval",
        title="Uplift against the holdout (conversion, points)",
        categories=[u.arm for u in evaluation.uplifts],
        series=[
            Series(
                name="uplift",
                values=[u.points for u in evaluation.uplifts],
                lower=[u.low for u in evaluation.uplifts],
                upper=[u.high for u in evaluation.uplifts],
            )
        ],
        reference=0,
        caption=" ".join(u.sentence() for u in evaluation.uplifts)[:500],
    )


def campaign_page(request: AdminRequest) -> Any:
    svc = _svc(request.crm)
    key = request.path_params["key"]
    info = svc.get(key)
    c = info.definition
    counts = svc.counts(key)
    steps = table(
        ["step", "type", "next", "details", "active now"],
        [
            (
                s.id,
                s.type,
                s.next or "",
                ", ".join(
                    f"{k}={v}"
                    for k, v in (
                        ("channel", s.channel),
                        ("template", s.template),
                        ("offer", s.offer),
                        ("duration", s.duration),
                        ("event", s.event),
                        ("attribute", s.attribute),
                    )
                    if v
                ),
                counts["step"].get(s.id, 0),
            )
            for s in c.steps
        ],
    )
    parts: list[Any] = [
        Markup('<h2 id="campaign-name">{}</h2>').format(c.name),
        Markup('<p id="campaign-status">Status <strong>{}</strong>, version {}; trigger {}; holdout {} %.</p>').format(
            info.status, info.version, c.trigger.type, c.holdout
        ),
    ]
    if request.user.at_least("marketer"):
        buttons = Markup("").join(
            Markup('<button type="submit" name="action" value="{0}">{0}</button> ').format(a) for a in ACTIONS
        )
        parts.append(
            Markup('<form class="inline" method="post" action="{}">{}{}</form>').format(
                request.url(f"/campaigns/{key}/status"), request.csrf_field(), buttons
            )
        )
    parts.append(Markup("<h2>Journey</h2>"))
    parts.append(steps)
    parts.append(Markup("<h2>Enrollments</h2>"))
    parts.append(table(["status", "customers"], sorted((str(k), v) for k, v in counts["status"].items())))
    parts.extend(_simulation(request, svc, key))
    parts.append(Markup("<h2>Results</h2>"))
    try:
        evaluation = svc.evaluate(key)
    except Exception as exc:
        parts.append(Markup('<p class="error-box" role="alert">{}</p>').format(f"cannot evaluate yet: {exc}"))
    else:
        parts.append(
            table(
                ["arm", "entered", "messaged", "converted", "rate", "revenue"],
                [(a.name, a.entered, a.messaged, a.converted, f"{a.rate:.1%}", a.revenue) for a in evaluation.arms],
            )
        )
        chart = _uplift_chart(evaluation)
        if chart is not None:
            parts.append(chart_img(chart))
        for note in evaluation.notes:
            parts.append(Markup('<p class="muted">{}</p>').format(note))
    parts.append(Markup("<h2>Definition</h2><pre>{}</pre>").format(escape(c.to_yaml())))
    return parts


def _simulation(request: AdminRequest, svc: Any, key: str) -> list[Any]:
    """The "simulate" form and, when asked (``?simulate=1&days=N``), what the campaign would do
    over the next N days on the real data — nothing sent, nothing written (the campaigns
    plugin's ``simulate``)."""
    if not callable(getattr(svc, "simulate", None)):
        return []
    raw = request.query.get("days", "30")
    if not raw.isdigit() or not 1 <= int(raw) <= 365:
        raise ValidationError("days", raw, "not 1..365 days", "simulate between 1 and 365 days")
    days = int(raw)
    out: list[Any] = [
        Markup("<h2>Simulation</h2>"),
        Markup(
            '<form method="get" action="{}"><input type="hidden" name="simulate" value="1">'
            '<label for="sim-days">Days</label> <input id="sim-days" name="days" value="{}" size="4"> '
            '<button type="submit">Simulate</button></form>'
        ).format(request.url(f"/campaigns/{key}"), days),
    ]
    if not request.query.get("simulate"):
        return out
    sim = svc.simulate(key, days=days)
    out.append(chart_img(sim.chart()))
    out.append(
        Markup('<div id="simulation">{}{}</div>').format(
            table(["step", "customers reaching it"], sorted(sim.reached.items())),
            table(["outcome", "customers"], sorted(sim.final.items())),
        )
    )
    for note in sim.notes:
        out.append(Markup('<p class="muted">{}</p>').format(note))
    return out


def campaign_status(request: AdminRequest) -> Any:
    key = request.path_params["key"]
    action = request.form.get("action", "")
    if action not in ACTIONS:
        return Html(Markup('<p class="error-box">unknown action {}</p>').format(action), 400)
    try:
        getattr(_svc(request.crm), action)(key)
    except (Conflict, ValidationError) as exc:
        return Html(str(Markup('<p class="error-box" role="alert">{}</p>').format(str(exc))), 409)
    return Redirect(request.url(f"/campaigns/{key}"))


def pages() -> list[AdminPage]:
    return [
        AdminPage(
            path="/campaigns",
            title="Campaigns",
            handler=campaigns_page,
            nav_section="Marketing",
            order=25,
            methods=("GET", "POST"),
        ),
        AdminPage(path="/campaigns/{key:str}", title="Campaign", handler=campaign_page, nav=False),
        AdminPage(
            path="/campaigns/{key:str}/status",
            title="Campaign status",
            handler=campaign_status,
            nav=False,
            methods=("POST",),
            role="marketer",
        ),
    ]
