"""ecrm-stats: per-customer interaction aggregates, maintained incrementally.

One row per (workspace, customer, interaction kind) in ``<prefix>customer_stats``
with ``count``, ``amount_sum``, ``first_at`` and ``last_at`` — the basis for
recency/frequency/monetary (RFM) analytics.

The plugin object is :mod:`ecrm_stats.plugin` (entry point ``stats``).  The
read API is re-exported here lazily, so importing the package stays cheap::

    from ecrm_stats import stats_for
    s = stats_for(crm, customer_id)
    s["purchase"].count, s.recency(), s.monetary()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "CustomerStats": "ecrm_stats.store",
    "KindStats": "ecrm_stats.store",
    "stats_for": "ecrm_stats.store",
    "rebuild": "ecrm_stats.store",
    "stats_table": "ecrm_stats.store",
    "plugin": "ecrm_stats.plugin",
}

__all__ = ["CustomerStats", "KindStats", "__version__", "plugin", "rebuild", "stats_for", "stats_table"]

if TYPE_CHECKING:  # pragma: no cover
    from . import plugin
    from .store import CustomerStats, KindStats, rebuild, stats_for, stats_table


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ecrm_stats' has no attribute {name!r}")
    import importlib

    mod = importlib.import_module(module)
    value = mod if name == "plugin" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
