"""The ecrm plugin (entry point ``campaigns`` in the group ``ecrm.plugins``).

Importing it is cheap: the engine, the service and the CLI are imported by
the hooks that use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecrm_core.hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover - typing only
    from collections.abc import Sequence

    import click
    import sqlalchemy as sa
    from ecrm_core.crm import CRM
    from ecrm_core.domain import Customer, CustomerChange, InteractionBatch, MergeRecord
    from ecrm_core.registry import JobSpec, MigrationSource
    from ecrm_core.services.segments import Segment
    from ecrm_core.storage import Naming

    from .hookspecs import Action

__version__ = "0.1.0"

#: The ecrm hook API versions this plugin is written for (``ecrm_register_demo_stages`` is 1.4).
ECRM_HOOK_API = ">=1.8,<2"  # ecrm_customers_deleting is 1.8

ECRM_PLUGIN_NAME = "campaigns"
MIGRATION_BRANCH = "ecrm_campaigns"
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
def ecrm_register_jobs() -> list[JobSpec]:
    from ecrm_core.registry import JobSpec

    from .engine import BATCH, run_steps
    from .triggers import run_schedules

    return [
        JobSpec(
            name="campaigns.steps",
            tick=run_steps,
            every=1.0,
            description=f"run due journey steps, {BATCH} enrollments a tick (claimed under a lease)",
        ),
        JobSpec(
            name="campaigns.schedule",
            tick=run_schedules,
            every=60.0,
            exclusive=True,
            lease=600.0,
            description="schedule and date (birthday, anniversary) triggers that are due",
        ),
    ]


@hookimpl
def ecrm_startup(crm: CRM) -> None:
    from . import hookspecs

    pm = crm.plugins.pm
    caller = getattr(pm.hook, "campaigns_register_actions", None)
    if caller is None or getattr(caller, "spec", None) is None:
        pm.add_hookspecs(hookspecs)


def actions(crm: CRM) -> dict[str, Action]:
    """The actions plugins registered (``campaigns_register_actions``), by name."""
    from ecrm_core.errors import PluginError

    ecrm_startup(crm)
    out: dict[str, Any] = {}
    for impl in crm.plugins.pm.hook.campaigns_register_actions.get_hookimpls():
        found: Any = impl.function(**({"crm": crm} if "crm" in impl.argnames else {}))
        for action in found or ():
            if action.name in out:
                raise PluginError(
                    f"campaign action {action.name!r} is registered twice (second by {impl.plugin_name!r})"
                )
            out[action.name] = action
    return out


def call_action(crm: CRM, name: str, args: dict[str, Any], customer_ids: list[int], campaign: str, step: str) -> None:
    action = actions(crm).get(name)
    if action is None:
        raise LookupError(f"campaign action {name!r} is not registered (is its plugin installed?)")
    action.call(crm, customer_ids, args, campaign, step)


@hookimpl
def ecrm_segment_entered(crm: CRM, segment: Segment, customer_ids: list[int]) -> None:
    from .triggers import on_segment

    on_segment(crm, segment.slug, customer_ids, entered=True)


@hookimpl
def ecrm_segment_exited(crm: CRM, segment: Segment, customer_ids: list[int]) -> None:
    from .triggers import on_segment

    on_segment(crm, segment.slug, customer_ids, entered=False)


@hookimpl
def ecrm_interactions_recorded(crm: CRM, batch: InteractionBatch) -> None:
    from .triggers import on_interactions

    on_interactions(crm, batch)
    if "purchase" in batch.kinds:
        from . import dates

        if dates.FIRST_PURCHASE in dates.tracked(crm):
            dates.sync(crm, dates.FIRST_PURCHASE, batch.customer_ids)


def _sync_dates(crm: CRM, ids: list[int]) -> None:
    from . import dates

    if not ids:
        return
    for source in dates.tracked(crm) - {dates.FIRST_PURCHASE}:
        dates.sync(crm, source, ids)


@hookimpl
def ecrm_customers_created(crm: CRM, customers: Sequence[Customer]) -> None:
    # new customers' date attributes (birthday...) into campaign_dates, one set-based sync per batch
    _sync_dates(crm, [c.id for c in customers if c.id is not None])


@hookimpl
def ecrm_customers_updated(crm: CRM, changes: Sequence[CustomerChange]) -> None:
    # a changed attribute or timezone: the customers' rows are recomputed (set-based)
    _sync_dates(
        crm,
        [ch.after.id for ch in changes if ch.after.id is not None and ch.changed & {"attributes", "timezone"}],
    )


@hookimpl
def ecrm_customers_merging(crm: CRM, conn: sa.Connection, merge: MergeRecord) -> None:
    """In the merge's transaction: the source's journeys move to the target."""
    from .triggers import on_merged

    on_merged(crm, conn, merge.source_id, merge.target_id)


@hookimpl
def ecrm_customers_merged(crm: CRM, merge: MergeRecord) -> None:
    from . import dates

    for source in dates.tracked(crm):  # the survivor's dates are recomputed, the source's dropped
        dates.sync(crm, source, [merge.source_id, merge.target_id])


@hookimpl
def ecrm_customers_deleting(crm: CRM, conn: sa.Connection, customer_ids: list[int]) -> None:
    """In the delete's transaction: the deleted customers' journey state."""
    from .triggers import on_deleted

    on_deleted(crm, conn, customer_ids)


@hookimpl
def ecrm_register_demo_stages() -> list[Any]:
    from ecrm_core.registry import DemoStage

    from .demo import winback_stage

    return [
        DemoStage(
            name="campaigns.winback",
            title="A win-back campaign with a 20 % holdout, replayed on the shop",
            run=winback_stage,
            order=200,
        )
    ]


@hookimpl
def ecrm_register_commands(cli: click.Group) -> None:
    from .cli import campaigns

    cli.add_command(campaigns)


@hookimpl
def ecrm_register_routes() -> list[Any]:
    # The routes are for ecrm-api (which mounts them); without it there is nothing to serve.
    from importlib.util import find_spec

    if find_spec("ecrm_api") is None:
        return []
    from .routes import HANDLERS

    return list(HANDLERS)
