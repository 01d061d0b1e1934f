"""The ecrm plugin (entry point ``personalize`` in the group ``ecrm.plugins``).

Importing it is cheap: the engine, scikit-learn and the routes are imported
by the hooks and calls that use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecrm_core.hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover - typing only
    from collections.abc import Sequence

    import click
    import sqlalchemy as sa
    from ecrm_core.channels import Purpose
    from ecrm_core.crm import CRM
    from ecrm_core.domain import Alias, MergeRecord
    from ecrm_core.registry import DemoStage, InteractionKind, JobSpec, MigrationSource, StrategySpec
    from ecrm_core.storage import Naming

__version__ = "0.1.0"

#: hook API versions this plugin is written for (``ecrm_register_demo_stages`` is 1.4)
ECRM_HOOK_API = ">=1.8,<2"  # 1.7: crm.customers.computed; 1.8: ecrm_customers_deleting

ECRM_PLUGIN_NAME = "personalize"
MIGRATION_BRANCH = "ecrm_personalize"
VERSIONS_DIR = str(Path(__file__).resolve().parent / "migrations" / "versions")


@hookimpl
def ecrm_register_tables(metadata: sa.MetaData, naming: Naming) -> None:
    from .schema import define_tables

    define_tables(metadata, naming)


@hookimpl
def ecrm_register_migrations() -> list[MigrationSource]:
    from ecrm_core.registry import MigrationSource

    return [MigrationSource(branch=MIGRATION_BRANCH, location=VERSIONS_DIR)]


@hookimpl
def ecrm_register_strategies() -> list[StrategySpec]:
    from ecrm_core.registry import StrategySpec

    from .strategies import Bandit, Greeting, PreferenceCentre, Ranked

    return [
        StrategySpec(
            name="greeting", kind="cosmetic", factory=Greeting, description=str(Greeting.__doc__).split("\n")[0]
        ),
        StrategySpec(name="ranked", kind="transparent", factory=Ranked, description=str(Ranked.__doc__).split("\n")[0]),
        StrategySpec(name="bandit", kind="adaptive", factory=Bandit, description=str(Bandit.__doc__).split("\n")[0]),
        StrategySpec(
            name="preferences",
            kind="collaborative",
            factory=PreferenceCentre,
            description=str(PreferenceCentre.__doc__).split("\n")[0],
        ),
    ]


@hookimpl
def ecrm_register_interaction_kinds() -> list[InteractionKind]:
    from ecrm_core.registry import InteractionKind

    return [
        InteractionKind(name="personalize_impression", description="a personalized decision was shown"),
        InteractionKind(name="personalize_click", description="an item of a personalized decision was clicked"),
        InteractionKind(name="personalize_conversion", description="a personalized decision led to a conversion"),
    ]


@hookimpl
def ecrm_register_message_purposes() -> list[Purpose]:
    from ecrm_core.channels import Purpose

    return [Purpose(name="recommendations", description="product recommendations (set in the preference centre)")]


@hookimpl
def ecrm_register_jobs() -> list[JobSpec]:
    from ecrm_core.registry import JobSpec

    from .recommend import refresh_tick

    return [
        JobSpec(
            name="personalize.refresh",
            tick=refresh_tick,
            every=900.0,
            exclusive=True,
            lease=1800.0,
            description="recompute the recommendation lists when purchases, views or the catalogue changed",
        )
    ]


@hookimpl
def ecrm_register_demo_stages() -> list[DemoStage]:
    from ecrm_core.registry import DemoStage

    from .demo import run_demo

    return [
        DemoStage(
            name="personalize.decide", title="Personalization: greeting and recommendations", run=run_demo, order=300
        )
    ]


@hookimpl
def ecrm_startup(crm: CRM) -> None:
    from . import hookspecs

    pm = crm.plugins.pm
    caller = getattr(pm.hook, "personalize_unavailable", None)
    if caller is None or getattr(caller, "spec", None) is None:
        pm.add_hookspecs(hookspecs)


def strategy(crm: CRM, name: str) -> Any:
    """The strategy object registered as ``name`` (built once per CRM), or ``None``."""
    from .state import state

    spec = crm.registry.strategies.get(name)
    if spec is None:
        return None
    st = state(crm)
    key = (id(spec), name)
    found = st.strategies.get(key)
    if found is None:
        found = spec.factory(crm)
        try:
            found._plugin = spec.plugin or "personalize"
        except AttributeError:
            pass
        st.strategies[key] = found
    return found


@hookimpl
def ecrm_customers_merging(crm: CRM, conn: sa.Connection, merge: MergeRecord) -> None:
    """In the merge's transaction: preferences join, outcomes move."""
    from .people import on_merged

    on_merged(crm, conn, merge.source_id, merge.target_id)


@hookimpl
def ecrm_customers_deleting(crm: CRM, conn: sa.Connection, customer_ids: list[int], aliases: Sequence[Alias]) -> None:
    """In the delete's transaction: preferences and decision outcomes."""
    from .people import on_deleted

    on_deleted(crm, conn, customer_ids, aliases)


@hookimpl
def ecrm_register_commands(cli: click.Group) -> None:
    from .cli import personalize

    cli.add_command(personalize)


@hookimpl
def ecrm_register_routes() -> list[Any]:
    # The routes are for ecrm-api (which mounts them); without it there is nothing to serve.
    from importlib.util import find_spec

    if find_spec("ecrm_api") is None:
        return []
    from .routes import HANDLERS

    return list(HANDLERS)
