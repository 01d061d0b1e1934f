"""REST routes (mounted by ecrm-api through ``ecrm_register_routes``).

* ``GET /analytics/reports`` — the catalogue: each report's name, title and parameters;
* ``GET /analytics/reports/{report}?param=value`` — ``Report.to_dict()`` (one route per
  registered report, its parameters declared in the OpenAPI document);
* ``GET /analytics/reports/{report}/chart?format=svg|png`` — the chart (``image/svg+xml``/``image/png``);
* ``POST /analytics/reports/{report}?param=value`` — for the reports that can store what they computed
  (``basket``'s ``save_rules``, ``clusters``' ``save``): the same report, those parameters accepted (scope
  ``write``).  The ``GET`` routes never write: they do not take those parameters (400 naming them);
* ``GET /analytics/customers/{customer_id}`` — what analytics knows about one customer;
* ``POST /analytics/refresh`` — recompute the customers whose sales changed now.

Report parameters come from the query string and are checked by the
report's :class:`~ecrm_analytics.reports.Param` (422 naming the parameter);
an unknown parameter is refused.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Annotated, Any

from ecrm_api.problems import problem_responses
from litestar import Response, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter, QueryParameter

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

    from .reports import ReportSpec

__all__ = ["handlers", "report_handlers"]

ReportName = Annotated[
    str, Parameter(description="the report's name", min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
]
CustomerId = Annotated[int, Parameter(ge=1, le=2**63 - 1, description="the customer's id")]


def _build(crm: CRM, report: str, params: dict[str, Any], *, writes: bool = False) -> Any:
    from ecrm_core.errors import ValidationError

    from .reports import get as get_spec

    spec = get_spec(report)
    try:
        kwargs = spec.coerce({k: v for k, v in params.items() if v is not None}, writes=writes)
    except ValidationError as exc:
        raise exc.at("query") from None
    try:
        return spec.build(crm, **kwargs)
    except ValidationError as exc:  # a parameter the data refuses (e.g. a support too low): still the query's
        if exc.field in kwargs:
            raise exc.at("query") from None
        raise


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
                    {"name": p.name, "type": p.type.__name__, "default": p.default, "help": p.help, "writes": p.writes}
                    for p in s.params
                ],
            }
            for s in specs().values()
        ]
    }


def _describe(p: Any) -> str:
    bounds = ""
    if p.min is not None or p.max is not None:
        bounds = f", {p.min if p.min is not None else ''}..{p.max if p.max is not None else ''}"
    choices = f", one of {', '.join(repr(c) for c in p.choices)}" if p.choices else ""
    return f"{p.help} ({p.type.__name__}{bounds}{choices}; default {p.default!r})"


def report_handlers(spec: ReportSpec) -> list[Any]:
    """The routes of one report, with its parameters declared as query parameters: ``GET`` (data, chart) with
    the parameters that only read, and ``POST`` with all of them when some store what the report computed.

    Parameters are taken as text and checked by the report's
    :class:`~ecrm_analytics.reports.Param` (a 422 naming ``query.<param>``),
    exactly as the CLI checks them.
    """
    from ecrm_core.crm import CRM
    from ecrm_core.errors import ValidationError

    def query_params(writes: bool = False) -> list[inspect.Parameter]:
        return [
            inspect.Parameter(
                p.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[str | None, QueryParameter(name=p.name, description=_describe(p), max_length=200)],
            )
            for p in spec.params
            if writes or not p.writes
        ]

    crm_param = inspect.Parameter("crm", inspect.Parameter.KEYWORD_ONLY, annotation=NamedDependency[CRM])

    def data(crm: CRM, **params: Any) -> dict[str, Any]:
        return _build(crm, spec.name, params).to_dict()  # type: ignore[no-any-return]

    data.__signature__ = inspect.Signature([crm_param, *query_params()], return_annotation=dict[str, Any])  # type: ignore[attr-defined]
    data.__annotations__ = {p.name: p.annotation for p in inspect.signature(data).parameters.values()}
    data.__annotations__["return"] = dict[str, Any]
    data.__name__ = data.__qualname__ = f"report_{spec.name}"
    data.__doc__ = f"{spec.title}: {spec.description or 'the report as data'} (``Report.to_dict()``)."

    fmt = inspect.Parameter(
        "format",
        inspect.Parameter.KEYWORD_ONLY,
        default="svg",
        annotation=Annotated[str, QueryParameter(name="format", description="svg or png", max_length=8)],
    )

    def chart(crm: CRM, format: str = "svg", **params: Any) -> Response[bytes]:
        from ecrm_core.charts import FORMATS, render

        if format not in FORMATS:
            raise ValidationError("query.format", format, "not a chart format", f"use one of {', '.join(FORMATS)}")
        result = _build(crm, spec.name, params)
        if result.chart is None:
            from ecrm_core.errors import NotFound

            raise NotFound("chart of report", spec.name)
        return Response(render(result.chart, format), media_type=FORMATS[format])

    chart.__signature__ = inspect.Signature([crm_param, fmt, *query_params()], return_annotation=Response[bytes])  # type: ignore[attr-defined]
    chart.__annotations__ = {p.name: p.annotation for p in inspect.signature(chart).parameters.values()}
    chart.__annotations__["return"] = Response[bytes]
    chart.__name__ = chart.__qualname__ = f"report_{spec.name}_chart"
    chart.__doc__ = f"The chart of {spec.title} as image/svg+xml (``?format=png``: image/png)."
    common: dict[str, Any] = {"opt": {"scope": "read"}, "tags": ["analytics"], "sync_to_thread": True}
    out = [
        get(f"/analytics/reports/{spec.name}", responses=problem_responses(), **common)(data),
        get(
            f"/analytics/reports/{spec.name}/chart",
            media_type="image/svg+xml",
            responses=problem_responses(404),
            **common,
        )(chart),
    ]
    writing = [p.name for p in spec.params if p.writes]
    if writing:

        def store(crm: CRM, **params: Any) -> dict[str, Any]:
            return _build(crm, spec.name, params, writes=True).to_dict()  # type: ignore[no-any-return]

        store.__signature__ = inspect.Signature(
            [crm_param, *query_params(writes=True)], return_annotation=dict[str, Any]
        )  # type: ignore[attr-defined]
        store.__annotations__ = {p.name: p.annotation for p in inspect.signature(store).parameters.values()}
        store.__annotations__["return"] = dict[str, Any]
        store.__name__ = store.__qualname__ = f"report_{spec.name}_store"
        store.__doc__ = (
            f"{spec.title}, computed and, with {' or '.join(f'``{w}=true``' for w in writing)}, stored "
            "(``Report.to_dict()``)."
        )
        out.append(
            post(
                f"/analytics/reports/{spec.name}",
                opt={"scope": "write"},
                tags=["analytics"],
                sync_to_thread=True,
                status_code=200,
                responses=problem_responses(),
            )(store)
        )
    return out


@get(
    "/analytics/reports/{report:str}",
    opt={"scope": "read"},
    tags=["analytics"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def unknown_report(report: ReportName) -> None:
    """Any other report name: 404 naming the reports there are."""
    from ecrm_core.errors import NotFound

    raise NotFound("analytics report", report)


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
def refresh(
    crm: NamedDependency[CRM],
    full: Annotated[bool, QueryParameter(name="full", description="recompute everyone")] = False,
) -> dict[str, Any]:
    """Recompute now the customers whose sales changed (``?full=true``: everyone); the CLV model is not refit."""
    from .service import analytics

    return analytics(crm).refresh(full=full, clv=False).to_dict()


def handlers() -> list[Any]:
    """Every route: the fixed ones and two per registered report."""
    from .reports import specs

    out: list[Any] = [list_reports, unknown_report, get_customer_analytics, refresh]
    for spec in specs().values():
        out += report_handlers(spec)
    return out
