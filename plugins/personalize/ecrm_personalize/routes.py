"""REST routes (mounted by ecrm-api through ``ecrm_register_routes``).

* ``POST /personalize/decide`` — a decision for a customer or a visitor
  (the ``ecrm_visitor`` cookie or ``visitor`` in the body); a new visitor
  gets a signed cookie (``Set-Cookie`` and ``visitor`` in the answer);
* ``POST /personalize/outcomes`` — impressions, clicks, conversions against
  decision ids (idempotent; an unknown id is ``rejected`` in the answer);
* ``POST /personalize/identify`` — a visitor logged in: stitch them onto
  the customer;
* ``GET|PUT /personalize/placements[/{name}]``, ``GET
  /personalize/placements/{name}/arms``, ``GET
  /personalize/placements/{name}/uplift``;
* ``GET|PUT /personalize/preferences/{customer_id}`` — the preference centre;
* ``GET /personalize/evaluation`` — the offline evaluation (JSON, or its
  chart with ``?format=svg|png``).

Bad input is a 422 problem naming the field; the defined fallbacks (unknown
placement, customer, visitor cookie) are 200 answers with ``fallback`` set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio.to_thread
import msgspec
from ecrm_api.problems import problem_responses
from litestar import Request, Response, get, post, put
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from .tokens import COOKIE_NAME, VISITOR_MAX_AGE

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["HANDLERS"]

#: the most placements one page lists (each at most 32 KB: ``MAX_PLACEMENT_BYTES``)
PLACEMENTS_PAGE = 50

Slug = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
CustomerId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
NameParam = Annotated[
    str, Parameter(description="the placement's name", min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
]
CustomerParam = Annotated[int, Parameter(description="the customer's id", ge=1, le=2**63 - 1)]


class DecideIn(msgspec.Struct, forbid_unknown_fields=True):
    """Who (a customer id, or a visitor cookie; neither: a new visitor), where, and the page's context."""

    placement: Slug
    customer_id: CustomerId | None = None
    visitor: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    #: analytics.js's ``anonymousId``, trusted as given (the caller holds an API key)
    anonymous_id: Annotated[str, msgspec.Meta(min_length=1, max_length=320)] | None = None
    context: Annotated[dict[str, Any], msgspec.Meta(max_length=50)] | None = None


class OutcomeIn(msgspec.Struct, forbid_unknown_fields=True):
    decision: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    event: Literal["impression", "click", "conversion"]
    item: Annotated[str, msgspec.Meta(max_length=200)] = ""
    value: Annotated[float, msgspec.Meta(ge=-1e12, le=1e12)] | None = None


class OutcomesIn(msgspec.Struct, forbid_unknown_fields=True):
    outcomes: Annotated[list[OutcomeIn], msgspec.Meta(min_length=1, max_length=1000)]


class IdentifyIn(msgspec.Struct, forbid_unknown_fields=True):
    visitor: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    customer_id: CustomerId


class PreferencesIn(msgspec.Struct, forbid_unknown_fields=True):
    interests: Annotated[list[str], msgspec.Meta(max_length=50)] | None = None
    exclude: Annotated[list[str], msgspec.Meta(max_length=50)] | None = None
    needs: Annotated[list[str], msgspec.Meta(max_length=50)] | None = None
    frequency: Literal["daily", "weekly", "monthly", "never"] | None = None
    offers: bool | None = None
    presentation: dict[str, str] | None = None
    channels: dict[str, bool] | None = None


def _svc(crm: CRM) -> Any:
    from .service import Personalize

    return Personalize(crm)


def _inline(crm: CRM) -> bool:
    """Whether a decision may run on the event loop: on a SQLite file ecrm opened itself (its reads
    are a few indexed page reads, ~1 ms of CPU in all, that a worker thread would only add a thread
    hop and GIL hand-offs to) and with no ``personalize_unavailable`` hook implemented (an
    integration may call a remote inventory).  Otherwise (PostgreSQL: network round trips; a
    host's connection) it runs in a worker thread."""
    db = crm.db
    return bool(db.is_sqlite and not db.joined and not crm.plugins.has_impls("personalize_unavailable"))


@post(
    "/personalize/decide",
    opt={"scope": "read"},
    tags=["personalize"],
    status_code=200,
    responses=problem_responses(),
)
async def decide(data: JSONBody[DecideIn], crm: NamedDependency[CRM], request: Request[Any, Any, Any]) -> Response[Any]:
    """A decision: ranked items and offers, the adaptive alternatives, the presentation variant, an
    explanation and the decision id to report outcomes against.  Unknown placements, customers and
    invalid, expired or other-workspace visitor cookies get defined fallbacks (``fallback`` says
    which), never someone else's history."""
    visitor = data.visitor
    if visitor is None and data.customer_id is None and data.anonymous_id is None:
        visitor = request.cookies.get(COOKIE_NAME)

    def run() -> Any:
        return _svc(crm).decide(
            None,
            data.placement,
            data.context,
            customer_id=data.customer_id,
            visitor=visitor,
            anonymous_id=data.anonymous_id,
        )

    d = run() if _inline(crm) else await anyio.to_thread.run_sync(run)
    cookies = []
    if d.visitor is not None:
        cookies.append(
            Cookie(
                key=COOKIE_NAME, value=d.visitor, max_age=VISITOR_MAX_AGE, httponly=True, secure=True, samesite="lax"
            )
        )
    return Response(d.to_dict(), cookies=cookies)


@post(
    "/personalize/outcomes",
    opt={"scope": "write"},
    tags=["personalize"],
    sync_to_thread=True,
    status_code=200,
    responses=problem_responses(),
)
def outcomes(data: JSONBody[OutcomesIn], crm: NamedDependency[CRM]) -> dict[str, Any]:
    """Report outcomes against decision ids.  Each answer is ``recorded``, ``duplicate`` (reported
    before: nothing changed) or ``rejected`` (unknown, forged or other-workspace decision id)."""
    results = _svc(crm).report_many([msgspec.structs.asdict(o) for o in data.outcomes])
    return {"results": [r.to_dict() for r in results]}


@post(
    "/personalize/identify",
    opt={"scope": "write"},
    tags=["personalize"],
    sync_to_thread=True,
    status_code=200,
    responses=problem_responses(404),
)
def identify(data: JSONBody[IdentifyIn], crm: NamedDependency[CRM]) -> dict[str, Any]:
    """A visitor logged in: their cookie's history stitches onto the customer (alias, merge)."""
    merged = _svc(crm).identify(data.visitor, data.customer_id)
    return {"customer_id": data.customer_id, "merged": merged}


@get(
    "/personalize/placements",
    opt={"scope": "read"},
    tags=["personalize"],
    sync_to_thread=True,
    responses=problem_responses(),
)
def list_placements(
    crm: NamedDependency[CRM],
    limit: Annotated[
        int, Parameter(ge=1, le=PLACEMENTS_PAGE, description=f"placements per page (1-{PLACEMENTS_PAGE})")
    ] = 20,
    after: Annotated[
        str | None, Parameter(min_length=1, max_length=64, description="the `next` of the previous page")
    ] = None,
) -> dict[str, Any]:
    """The placements of the workspace by name, a page at a time (``next``: the ``after`` of the next page)."""
    items = _svc(crm).placements(limit=limit + 1, after=after)
    more = len(items) > limit
    items = items[:limit]
    return {"items": [p.to_dict() for p in items], "next": items[-1].name if more else None}


@get(
    "/personalize/placements/{name:str}",
    opt={"scope": "read"},
    tags=["personalize"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def get_placement(name: NameParam, crm: NamedDependency[CRM]) -> dict[str, Any]:
    """One placement."""
    return _svc(crm).placement(name).to_dict()  # type: ignore[no-any-return]


@put(
    "/personalize/placements/{name:str}",
    opt={"scope": "write"},
    tags=["personalize"],
    sync_to_thread=True,
    responses=problem_responses(),
)
def put_placement(
    name: NameParam,
    data: JSONBody[Annotated[dict[str, Any], msgspec.Meta(max_length=20)]],
    crm: NamedDependency[CRM],
) -> dict[str, Any]:
    """Create or replace a placement (strategies, recommender, k, alternatives, control share…)."""
    from ecrm_core.errors import ValidationError

    try:
        return _svc(crm).define(name, **{k: v for k, v in data.items() if k != "name"}).to_dict()  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise exc.at("body") from None


def _existing(crm: CRM, name: str) -> None:
    """NotFound (a 404) unless the workspace has the placement ``name`` (read without
    touching the decision path's cache of it)."""
    from ecrm_core.errors import NotFound
    from ecrm_core.validation import check_slug

    from .engine import load_placement

    if load_placement(crm, check_slug(name, "placement", "placement name")) is None:
        raise NotFound("placement", name)


@get(
    "/personalize/placements/{name:str}/arms",
    opt={"scope": "read"},
    tags=["personalize"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def placement_arms(
    name: NameParam,
    crm: NamedDependency[CRM],
    limit: Annotated[int, Parameter(ge=1, le=1000, description="segments per page (1-1,000)")] = 100,
    after: Annotated[
        str | None, Parameter(min_length=1, max_length=128, description="the `next` of the previous page")
    ] = None,
) -> dict[str, Any]:
    """The bandit state: trials and wins per segment and alternative, ``limit`` segments
    a page in name order (``next``: pass it as ``after`` for the following page).
    404 for a placement the workspace does not have."""
    _existing(crm, name)
    segments = _svc(crm).arms(name, limit=limit + 1, after=after)
    names = list(segments)
    more = len(names) > limit
    if more:
        del segments[names[limit]]
    return {"placement": name, "segments": segments, "next": names[limit - 1] if more else None}


@get(
    "/personalize/placements/{name:str}/uplift",
    opt={"scope": "read"},
    tags=["personalize"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def placement_uplift(name: NameParam, crm: NamedDependency[CRM]) -> dict[str, Any]:
    """Personalized vs control group: impressions, clicks, conversions, rates and lift.
    404 for a placement the workspace does not have."""
    _existing(crm, name)
    return _svc(crm).uplift(name)  # type: ignore[no-any-return]


@get(
    "/personalize/preferences/{customer_id:int}",
    opt={"scope": "read"},
    tags=["personalize"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def get_preferences(customer_id: CustomerParam, crm: NamedDependency[CRM]) -> dict[str, Any]:
    """What the customer told the preference centre."""
    return {"customer_id": customer_id, "preferences": _svc(crm).preferences(customer_id)}


@put(
    "/personalize/preferences/{customer_id:int}",
    opt={"scope": "write"},
    tags=["personalize"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def put_preferences(
    customer_id: CustomerParam, data: JSONBody[PreferencesIn], crm: NamedDependency[CRM]
) -> dict[str, Any]:
    """Store the customer's answers (merged into earlier ones); channels and frequency set the
    consent of the ``recommendations`` purpose."""
    from ecrm_core.errors import ValidationError

    answers = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
    try:
        prefs = _svc(crm).set_preferences(customer_id, source="api", **answers)
    except ValidationError as exc:
        raise exc.at("body") from None
    return {"customer_id": customer_id, "preferences": prefs}


@get(
    "/personalize/evaluation",
    opt={"scope": "read"},
    tags=["personalize"],
    sync_to_thread=True,
    responses=problem_responses(),
)
def evaluation(
    crm: NamedDependency[CRM],
    k: Annotated[int, Parameter(ge=1, le=100)] = 10,
    format: Annotated[Literal["json", "svg", "png"], Parameter(description="json, svg or png")] = "json",
) -> Response[Any]:
    """The offline evaluation (hit-rate@k, coverage, novelty per recommender vs popularity), as JSON or its chart."""
    ev = _svc(crm).evaluate(k=k)
    if format == "json":
        return Response({**ev.to_dict(), "chart": ev.chart().to_dict()})
    from ecrm_core.charts import FORMATS, render

    return Response(render(ev.chart(), format), media_type=FORMATS[format])


HANDLERS = [
    decide,
    outcomes,
    identify,
    list_placements,
    get_placement,
    put_placement,
    placement_arms,
    placement_uplift,
    get_preferences,
    put_preferences,
    evaluation,
]
