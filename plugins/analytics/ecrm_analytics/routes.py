"""REST routes (mounted by ecrm-api through ``ecrm_register_routes``).

* ``GET /analytics/reports`` — the catalogue: each report's name, title and parameters;
* ``GET /analytics/reports/{report}?param=value`` — ``Report.to_dict()``;
* ``GET /analytics/reports/{report}/chart?format=svg|png`` — the chart (``image/svg+xml``/``image/png``);
* ``GET /analytics/customers/{customer_id}`` — what analytics knows about one customer;
* ``POST /analytics/refresh`` — recompute the customers whose sales changed now.

Report parameters come from the query string and are checked by the
report's :class:`~ecrm_analytics.reports.Param` (422 naming the parameter);
an unknown parameter is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from ecrm_api.problems import problem_responses
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["HANDLERS"]

ReportName = Annotated[
    str, Parameter(description="the report's name", min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
]
CustomerId = Annotated[int, Parameter(ge=1, le=2**63 - 1, description="the customer's id")]


def _params(request: Request[Any, Any, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    from ecrm_core.errors import ValidationError

    out: dict[str, Any] = {}
    for key in request.query_params:
        if key in skip:
            continue
        values = request.query_params.getall(key)
        if len(values) != 1:
            raise ValidationError(f"query.{key}", values, "given more than once", "give each parameter once")
        out[key] = values[0]
    return out


def _build(crm: CRM, report: str, params: dict[str, Any]) -> Any:
    from ecrm_core.errors import ValidationError

    from .reports import get as get_spec

    spec = get_spec(report)
    try:
        kwargs = spec.coerce(params)
    except ValidationError as exc:
        raise exc.at("query") from None
    return spec.build(crm, **kwargs)


@get(
    "/analytics/reports", opt={"scope": "read"}, tags=["analytics"], sync_to_thread=True, responses=problem_responses()
)
def list_reports() -> dict[str, Any]:
    """The analytics reports and their parameters."""
    from .reports import specs

    return {
        "items": [
            {
                "name": s.name,
                "title": s.title,
                "description": s.description,
                "params": [
                    {"name": p.name, "type": p.type.__name__, "default": p.default, "help": p.help} for p in s.params
                ],
            }
            for s in specs().values()
        ]
    }


@get(
    "/analytics/reports/{report:str}",
    opt={"scope": "read"},
    tags=["analytics"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def get_report(report: ReportName, request: Request[Any, Any, Any], crm: NamedDependency[CRM]) -> dict[str, Any]:
    """A report as data: summary, columns, rows and the chart description."""
    return _build(crm, report, _params(request)).to_dict()  # type: ignore[no-any-return]


@get(
    "/analytics/reports/{report:str}/chart",
    opt={"scope": "read"},
    tags=["analytics"],
    sync_to_thread=True,
    media_type="image/svg+xml",
    responses=problem_responses(404),
)
def get_report_chart(report: ReportName, request: Request[Any, Any, Any], crm: NamedDependency[CRM]) -> Response[bytes]:
    """A report's chart, rendered (``?format=png`` for PNG; SVG by default)."""
    from ecrm_core.charts import FORMATS, render
    from ecrm_core.errors import ValidationError

    fmt = request.query_params.get("format", "svg")
    if fmt not in FORMATS:
        raise ValidationError("query.format", fmt, "not a chart format", f"use one of {', '.join(FORMATS)}")
    result = _build(crm, report, _params(request, skip=("format",)))
    if result.chart is None:
        from ecrm_core.errors import NotFound

        raise NotFound("chart of report", report)
    return Response(render(result.chart, fmt), media_type=FORMATS[fmt])


@get(
    "/analytics/customers/{customer_id:int}",
    opt={"scope": "read"},
    tags=["analytics"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def get_customer_analytics(customer_id: CustomerId, crm: NamedDependency[CRM]) -> dict[str, Any]:
    """What analytics knows about one customer: RFM scores and group, lifetime value, churn risk."""
    from .service import analytics

    return analytics(crm).customer(customer_id)


@post("/analytics/refresh", opt={"scope": "write"}, tags=["analytics"], sync_to_thread=True, status_code=200)
def refresh(crm: NamedDependency[CRM], full: bool = False) -> dict[str, Any]:
    """Recompute now the customers whose sales changed (``?full=true``: everyone); the CLV model is not refit."""
    from .service import analytics

    return analytics(crm).refresh(full=full, clv=False).to_dict()


HANDLERS = [list_reports, get_report, get_report_chart, get_customer_analytics, refresh]
