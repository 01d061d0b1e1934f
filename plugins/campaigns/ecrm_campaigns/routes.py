"""REST routes (mounted by ecrm-api through ``ecrm_register_routes``): CRUD and lifecycle of campaigns.

* ``GET /campaigns`` · ``POST /campaigns`` (create, or a new version) ·
  ``GET /campaigns/{campaign}`` · ``PUT /campaigns/{campaign}`` (a new version) ·
  ``GET /campaigns/{campaign}/export`` (YAML)
* ``POST /campaigns/{campaign}/start|pause|resume|stop``
* ``POST /campaigns/{campaign}/trigger`` (enroll customers now)
* ``GET /campaigns/{campaign}/report`` · ``POST /campaigns/{campaign}/simulate`` (read-only) ·
  ``GET /campaigns/{campaign}/chart?kind=uplift|funnel|simulation&format=svg|png|json``

A body gives the campaign as ``yaml`` text or as a ``definition`` object
(exactly one); bodies refuse unknown keys.  A refused campaign is a 422
problem naming the first field (``steps.remind.duration``) and listing
every problem in its detail.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from ecrm_api.cursors import keyed_page
from ecrm_api.problems import problem_responses
from ecrm_core.errors import ValidationError
from litestar import Response, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

    from .service import CampaignInfo

__all__ = ["HANDLERS"]

KeyParam = Annotated[
    str, Parameter(description="the campaign's key", min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
]
CustomerId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class CampaignIn(msgspec.Struct, forbid_unknown_fields=True):
    """A campaign: its YAML text, or its definition as an object (exactly one of the two)."""

    yaml: Annotated[str, msgspec.Meta(max_length=1_000_000)] | None = None
    definition: dict[str, Any] | None = None
    actor: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class TriggerIn(msgspec.Struct, forbid_unknown_fields=True):
    """Customers to enroll now."""

    customer_ids: Annotated[list[CustomerId], msgspec.Meta(min_length=1, max_length=10_000)]


class CampaignOut(msgspec.Struct):
    key: str
    name: str
    status: str
    version: int
    versions: list[int]
    trigger: str
    next_run_at: datetime | None
    definition: dict[str, Any]
    enrollments: dict[str, dict[str, int]]
    created_at: datetime
    updated_at: datetime


class CampaignSummary(msgspec.Struct):
    key: str
    name: str
    status: str
    version: int
    trigger: str


class CampaignList(msgspec.Struct):
    items: list[CampaignSummary]
    #: the key to pass as ``after`` for the next page (``None``: this was the last)
    next: str | None = None


class EnrollOut(msgspec.Struct):
    entered: int
    held_out: int
    skipped: dict[str, int]


def _svc(crm: CRM) -> Any:
    from .service import Campaigns

    return Campaigns(crm)


def _out(crm: CRM, info: CampaignInfo) -> CampaignOut:
    svc = _svc(crm)
    counts = svc.counts(info.key)
    return CampaignOut(
        key=info.key,
        name=info.name,
        status=info.status,
        version=info.version,
        versions=[v.version for v in svc.versions(info.key)],
        trigger=info.definition.trigger.type,
        next_run_at=info.next_run_at,
        definition=info.definition.to_dict(),
        enrollments={k: {str(s): n for s, n in v.items()} for k, v in counts.items()},
        created_at=info.created_at,
        updated_at=info.updated_at,
    )


def _campaign(data: CampaignIn) -> Any:
    if (data.yaml is None) == (data.definition is None):
        raise ValidationError("body", None, "give the campaign as yaml or as definition", "send exactly one of them")
    return data.yaml if data.yaml is not None else data.definition


def _save(crm: CRM, data: CampaignIn, key: str | None = None) -> CampaignOut:
    from .service import _coerce

    source = _campaign(data)
    where = "body.yaml" if data.yaml is not None else "body.definition"
    try:
        c = _coerce(source)
        if key is not None and c.key != key:
            raise ValidationError("key", c.key, "differs from the key in the path", f"use {key!r}")
        info = _svc(crm).save(c, actor=data.actor)
    except ValidationError as exc:  # fields inside the campaign: body.yaml.steps.remind.duration
        raise exc.at(where) from None
    return _out(crm, info)


@get("/campaigns", opt={"scope": "read"}, tags=["campaigns"], sync_to_thread=True, responses=problem_responses())
def list_campaigns(
    crm: NamedDependency[CRM],
    limit: Annotated[int, Parameter(ge=1, le=1000, description="campaigns per page (1-1,000)")] = 1000,
    after: Annotated[
        str | None, Parameter(min_length=1, max_length=128, description="the `next` of the previous page")
    ] = None,
) -> CampaignList:
    """The campaigns of the workspace by key, ``limit`` a page (``next``: the ``after`` of the next page)."""
    page, following = keyed_page(_svc(crm).list(), lambda i: i.key, limit, after)
    return CampaignList(
        items=[
            CampaignSummary(
                key=i.key, name=i.name, status=i.status, version=i.version, trigger=i.definition.trigger.type
            )
            for i in page
        ],
        next=following,
    )


@post(
    "/campaigns",
    opt={"scope": "write"},
    tags=["campaigns"],
    sync_to_thread=True,
    status_code=200,
    responses=problem_responses(409),
)
def save_campaign(data: JSONBody[CampaignIn], crm: NamedDependency[CRM]) -> CampaignOut:
    """Create a campaign, or store a new version of it (its key is in the definition).  A refused
    campaign is 422 naming the step; a stopped one cannot change (409)."""
    return _save(crm, data)


@get(
    "/campaigns/{campaign:str}",
    opt={"scope": "read"},
    tags=["campaigns"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def get_campaign(campaign: KeyParam, crm: NamedDependency[CRM]) -> CampaignOut:
    """A campaign: its current definition, versions and enrollments by status, step and arm."""
    return _out(crm, _svc(crm).get(campaign))


@put(
    "/campaigns/{campaign:str}",
    opt={"scope": "write"},
    tags=["campaigns"],
    sync_to_thread=True,
    responses=problem_responses(404, 409),
)
def put_campaign(campaign: KeyParam, data: JSONBody[CampaignIn], crm: NamedDependency[CRM]) -> CampaignOut:
    """Store a new version of the campaign (customers mid-journey finish on theirs)."""
    _svc(crm).get(campaign)  # 404 first
    return _save(crm, data, campaign)


@get(
    "/campaigns/{campaign:str}/export",
    opt={"scope": "read"},
    tags=["campaigns"],
    sync_to_thread=True,
    media_type="application/yaml",
    responses=problem_responses(404),
)
def export_campaign(
    campaign: KeyParam, crm: NamedDependency[CRM], version: Annotated[int | None, Parameter(ge=1, le=10**9)] = None
) -> Response[str]:
    """The campaign as YAML (POST it back as ``{"yaml": ...}``)."""
    return Response(_svc(crm).export(campaign, version), media_type="application/yaml")


@get(
    "/campaigns/{campaign:str}/report",
    opt={"scope": "read"},
    tags=["campaigns"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def campaign_report(
    campaign: KeyParam,
    crm: NamedDependency[CRM],
    confidence: Annotated[float, Parameter(ge=0.5, lt=1)] = 0.95,
) -> dict[str, Any]:
    """Results by arm (entered, messaged, converted, revenue) and each arm's uplift against the
    holdout with a confidence interval, in numbers and in a sentence."""
    return _svc(crm).evaluate(campaign, confidence=confidence).to_dict()  # type: ignore[no-any-return]


class SimulateIn(msgspec.Struct, forbid_unknown_fields=True):
    """What to simulate: how many days ahead, how often segments are evaluated, who enters at the start."""

    days: Annotated[int, msgspec.Meta(ge=1, le=366)] = 30
    every: Annotated[str, msgspec.Meta(max_length=16)] = "1d"
    customer_ids: Annotated[list[CustomerId], msgspec.Meta(max_length=10_000)] | None = None
    details: bool = False


@post(
    "/campaigns/{campaign:str}/simulate",
    opt={"scope": "read"},
    tags=["campaigns"],
    sync_to_thread=True,
    status_code=200,
    responses=problem_responses(404),
)
def simulate_campaign(campaign: KeyParam, data: JSONBody[SimulateIn], crm: NamedDependency[CRM]) -> dict[str, Any]:
    """What the campaign would do over the next ``days`` days, on the real data, without sending or
    writing anything: who enters when, messages per day per channel, what caps, quiet hours, the
    send window and the offers' budgets hold back (read-only, so the ``read`` scope)."""
    sim = _svc(crm).simulate(campaign, days=data.days, every=data.every, customer_ids=data.customer_ids)
    return sim.to_dict(details=data.details)  # type: ignore[no-any-return]


@get(
    "/campaigns/{campaign:str}/chart",
    opt={"scope": "read"},
    tags=["campaigns"],
    sync_to_thread=True,
    media_type="image/svg+xml",
    responses=problem_responses(404),
)
def campaign_chart(
    campaign: KeyParam,
    crm: NamedDependency[CRM],
    kind: Annotated[Literal["uplift", "funnel", "simulation"], Parameter(description="which chart")] = "uplift",
    format: Annotated[Literal["svg", "png", "json"], Parameter(description="an image, or the chart's JSON")] = "svg",
    days: Annotated[int, Parameter(ge=1, le=366, description="simulation only: days ahead")] = 30,
    confidence: Annotated[float, Parameter(ge=0.5, lt=1)] = 0.95,
) -> Response[Any]:
    """A chart of the campaign (through ``ecrm_core.charts``): the uplift of each arm against the
    holdout with its interval, the funnel by arm, or the simulation of the next ``days`` days.
    ``format=json`` answers the chart's description for the admin UI."""
    from ecrm_core.charts import FORMATS, render

    svc = _svc(crm)
    if kind == "simulation":
        chart = svc.simulate(campaign, days=days).chart()
    else:
        ev = svc.evaluate(campaign, confidence=confidence)
        chart = ev.uplift_chart() if kind == "uplift" else ev.funnel_chart()
    if format == "json":
        return Response(chart.to_dict(), media_type="application/json")
    return Response(render(chart, format), media_type=FORMATS[format])


def _lifecycle(verb: str) -> Any:
    def handler(campaign: KeyParam, crm: NamedDependency[CRM]) -> CampaignOut:
        return _out(crm, getattr(_svc(crm), verb)(campaign))

    handler.__name__ = f"{verb}_campaign"
    handler.__doc__ = {
        "start": "Make a draft campaign live.",
        "pause": "Pause a live campaign: nothing is enrolled or executed; customers keep their place.",
        "resume": "Resume a paused campaign.",
        "stop": "Stop a campaign for good: active journeys end.",
    }[verb]
    return post(
        f"/campaigns/{{campaign:str}}/{verb}",
        opt={"scope": "write"},
        tags=["campaigns"],
        sync_to_thread=True,
        status_code=200,
        responses=problem_responses(404, 409),
    )(handler)


@post(
    "/campaigns/{campaign:str}/trigger",
    opt={"scope": "write"},
    tags=["campaigns"],
    sync_to_thread=True,
    status_code=200,
    responses=problem_responses(404, 409),
)
def trigger_campaign(campaign: KeyParam, data: JSONBody[TriggerIn], crm: NamedDependency[CRM]) -> EnrollOut:
    """Enroll customers now (the explicit, transactional trigger of a live campaign)."""
    r = _svc(crm).trigger(campaign, data.customer_ids)
    return EnrollOut(entered=r.entered, held_out=r.held_out, skipped=dict(r.skipped))


HANDLERS = [
    list_campaigns,
    save_campaign,
    get_campaign,
    put_campaign,
    export_campaign,
    *(_lifecycle(v) for v in ("start", "pause", "resume", "stop")),
    campaign_report,
    simulate_campaign,
    campaign_chart,
    trigger_campaign,
]
