"""ecrm-core: an embeddable, plugin-based e-CRM for Python.

Public names are re-exported here lazily (PEP 562), so ``import ecrm_core``
imports nothing heavy: SQLAlchemy, pluggy and the plugins load when a
:class:`CRM` is first built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "CRM": "ecrm_core.crm",
    "hookimpl": "ecrm_core.hookspecs",
    "HOOK_API_VERSION": "ecrm_core.hookspecs",
    "Alias": "ecrm_core.domain",
    "Consent": "ecrm_core.domain",
    "Customer": "ecrm_core.domain",
    "CustomerChange": "ecrm_core.domain",
    "Interaction": "ecrm_core.domain",
    "InteractionBatch": "ecrm_core.domain",
    "MergeRecord": "ecrm_core.domain",
    "Offer": "ecrm_core.domain",
    "DEFAULT_WORKSPACE": "ecrm_core.domain",
    "EcrmError": "ecrm_core.errors",
    "ValidationError": "ecrm_core.errors",
    "BatchError": "ecrm_core.errors",
    "RowError": "ecrm_core.errors",
    "NotFound": "ecrm_core.errors",
    "Conflict": "ecrm_core.errors",
    "IdempotencyConflict": "ecrm_core.errors",
    "SchemaNotInitialised": "ecrm_core.errors",
    "PluginError": "ecrm_core.errors",
    "HookApiVersionError": "ecrm_core.errors",
    "HookFailed": "ecrm_core.errors",
    "InteractionKind": "ecrm_core.registry",
    "LifecycleStage": "ecrm_core.registry",
    "AttributeDef": "ecrm_core.registry",
    "ChannelSpec": "ecrm_core.registry",
    "ConditionType": "ecrm_core.registry",
    "StrategySpec": "ecrm_core.registry",
    "AdminPage": "ecrm_core.registry",
    "AdminWidget": "ecrm_core.registry",
    "MigrationSource": "ecrm_core.registry",
    "JobSpec": "ecrm_core.registry",
    "DemoStage": "ecrm_core.registry",
    "JobResult": "ecrm_core.registry",
    "JobContext": "ecrm_core.registry",
    "RuleError": "ecrm_core.rules",
    "Segment": "ecrm_core.services.segments",
    "Preview": "ecrm_core.services.segments",
    "RefreshReport": "ecrm_core.services.segments",
    "CancelToken": "ecrm_core.services.segments",
    "Cancelled": "ecrm_core.services.segments",
    "StageChange": "ecrm_core.services.lifecycle",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover
    from .crm import CRM
    from .domain import (
        DEFAULT_WORKSPACE,
        Alias,
        Consent,
        Customer,
        CustomerChange,
        Interaction,
        InteractionBatch,
        MergeRecord,
        Offer,
    )
    from .errors import (
        BatchError,
        Conflict,
        EcrmError,
        HookApiVersionError,
        HookFailed,
        IdempotencyConflict,
        NotFound,
        PluginError,
        RowError,
        SchemaNotInitialised,
        ValidationError,
    )
    from .hookspecs import HOOK_API_VERSION, hookimpl
    from .registry import (
        AdminPage,
        AdminWidget,
        AttributeDef,
        ChannelSpec,
        ConditionType,
        DemoStage,
        InteractionKind,
        JobContext,
        JobResult,
        JobSpec,
        LifecycleStage,
        MigrationSource,
        StrategySpec,
    )
    from .rules import RuleError
    from .services.lifecycle import StageChange
    from .services.segments import Cancelled, CancelToken, Preview, RefreshReport, Segment


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ecrm_core' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
