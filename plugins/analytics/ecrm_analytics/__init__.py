"""ecrm-analytics: customer value analysis whose results flow back into targeting.

``analytics(crm)`` is the Python API (see docs/plugins/analytics)::

    from ecrm_analytics import analytics, report
    analytics(crm).refresh(full=True, clv=True)     # RFM + CLV for every customer
    report(crm, "rfm").to_dict()                     # plain data for an admin page
    analytics(crm).customer(42)["rfm"]["group"]      # 'champions'

Shared building blocks (money in one reporting currency, reports) are in
:mod:`ecrm_analytics.common`; the report catalogue in :mod:`ecrm_analytics.reports`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .plugin import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .common import Rates, Report, get_rates, set_rates
    from .reports import Param, ReportSpec, register, report
    from .service import Analytics, RefreshResult, analytics

__all__ = [
    "Analytics",
    "Param",
    "Rates",
    "RefreshResult",
    "Report",
    "ReportSpec",
    "__version__",
    "analytics",
    "get_rates",
    "register",
    "report",
    "set_rates",
]

_EXPORTS = {
    "Analytics": "service",
    "RefreshResult": "service",
    "analytics": "service",
    "Rates": "common",
    "Report": "common",
    "get_rates": "common",
    "set_rates": "common",
    "Param": "reports",
    "ReportSpec": "reports",
    "register": "reports",
    "report": "reports",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ecrm_analytics' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"ecrm_analytics.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
