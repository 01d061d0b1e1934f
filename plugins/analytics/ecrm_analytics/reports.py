"""The catalogue of reports: one registration serves the CLI, the API and the admin.

An analysis registers a :class:`ReportSpec` — a name, a title, typed
parameters and a ``build(crm, **params) -> Report`` function — with
:func:`register`.  From that one registration:

* ``ecrm analytics NAME [--PARAM value] [--chart out.svg] [--json]`` prints
  the table and writes the chart;
* ``GET /analytics/reports/NAME?PARAM=value`` returns ``Report.to_dict()``
  and ``GET /analytics/reports/NAME/chart?format=svg|png`` the picture;
* :func:`report` (``report(crm, "rfm").to_dict()``) is the plain data an
  admin page renders.

Parameters are checked in one place (:meth:`Param.coerce`) whichever way
they arrive (CLI text, query string, Python), so bad input gets the same
clear error everywhere.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from attrs import field, frozen
from ecrm_core.errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM

    from .common import Report

__all__ = ["Param", "ReportSpec", "register", "report", "specs"]

#: Modules whose import registers the plugin's own reports.
BUILTIN_MODULES = ("ecrm_analytics.rfm", "ecrm_analytics.clv", "ecrm_analytics.churn")
#: The needs-analysis and sales reports (market basket, clusters, affinity, sales, attribution).
NEEDS_MODULES = (
    "ecrm_analytics.basket",
    "ecrm_analytics.clusters",
    "ecrm_analytics.affinity",
    "ecrm_analytics.sales",
    "ecrm_analytics.attribution",
)

_REGISTRY: dict[str, ReportSpec] = {}
_loaded = False


@frozen(kw_only=True)
class Param:
    """A report parameter: ``type`` is ``int``, ``float``, ``str`` or ``bool``; bounds and choices are checked."""

    name: str
    type: type
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    #: the parameter makes the report store what it computed: over HTTP only the ``POST`` route takes it (a ``GET``
    #: is safe); the CLI and Python take it as any other
    writes: bool = False

    def coerce(self, value: Any) -> Any:
        """``value`` (text from a CLI or query string, or a Python value) as this parameter's type."""
        if value is None:
            return self.default
        try:
            if self.type is bool:
                if isinstance(value, str):
                    if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(value)
                    out: Any = value.lower() in ("1", "true", "yes")
                else:
                    out = bool(value)
            elif self.type is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError(value)
                out = int(value)
            elif self.type is float:
                if isinstance(value, bool):
                    raise ValueError(value)
                out = float(value)
                if out != out or out in (float("inf"), float("-inf")):
                    raise ValueError(value)
            else:
                out = str(value)
        except (TypeError, ValueError):
            raise ValidationError(
                self.name, value, f"not a valid {self.type.__name__}", self.help or "see the report's parameters"
            ) from None
        if self.min is not None and out < self.min:
            raise ValidationError(self.name, value, f"less than {self.min:g}", f"use at least {self.min:g}")
        if self.max is not None and out > self.max:
            raise ValidationError(self.name, value, f"more than {self.max:g}", f"use at most {self.max:g}")
        if self.choices is not None and out not in self.choices:
            raise ValidationError(self.name, value, "not a choice", f"use one of {', '.join(self.choices)}")
        return out


def _params(value: Any) -> tuple[Param, ...]:
    return tuple(value)


@frozen(kw_only=True)
class ReportSpec:
    """A report: ``build(crm, **params)`` returns a :class:`~ecrm_analytics.common.Report`."""

    name: str
    title: str
    build: Callable[..., Report]
    params: tuple[Param, ...] = field(default=(), converter=_params)
    description: str = ""

    def coerce(self, given: Mapping[str, Any], *, writes: bool = False) -> dict[str, Any]:
        """The parameters for :attr:`build`: defaults filled in, unknown names refused.

        A parameter that makes the report store what it computed
        (:attr:`Param.writes`) is refused, unless it asks for its default (not
        saving) or ``writes=True``: a caller that
        must not change anything (an HTTP ``GET``, an admin page) cannot be
        talked into saving by its query string.  The Python API, the CLI and
        the ``POST`` route pass ``writes=True``.
        """
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValidationError(
                unknown[0], given[unknown[0]], f"not a parameter of the {self.name} report",
                f"use one of: {', '.join(known) or '(none)'}",
            )  # fmt: skip
        if not writes:
            for name in given:
                p = known[name]
                if p.writes and p.coerce(given[name]) != p.default:
                    raise ValidationError(
                        name, given[name], "saves what the report computed, which a read cannot do",
                        f"POST /analytics/reports/{self.name}, or ecrm analytics {self.name} --{name.replace('_', '-')}",
                    )  # fmt: skip
        return {name: p.coerce(given.get(name)) for name, p in known.items()}


def register(spec: ReportSpec) -> ReportSpec:
    """Add a report to the catalogue (a name registered twice is an error)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name].build is not spec.build:
        raise ValueError(f"analytics report {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def specs() -> dict[str, ReportSpec]:
    """Every report, by name (the plugin's own are loaded on first use)."""
    global _loaded
    if not _loaded:
        for module in (*BUILTIN_MODULES, *NEEDS_MODULES):
            importlib.import_module(module)
        _loaded = True
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> ReportSpec:
    found = specs().get(name)
    if found is None:
        from ecrm_core.errors import NotFound

        raise NotFound("analytics report", name)
    return found


def report(crm: CRM, name: str, **params: Any) -> Report:
    """Build report ``name`` for ``crm``'s workspace: plain data for the admin UI (``.to_dict()``)."""
    spec = get(name)
    return spec.build(crm, **spec.coerce(params, writes=True))
