"""The ecrm plugin (entry point ``analytics`` in the group ``ecrm.plugins``).

Importing it is cheap: numpy/scipy, the SQL and the CLI are imported by the
hooks and functions that use them.

Hooks:

* ``ecrm_register_tables`` / ``ecrm_register_migrations``: the plugin's
  tables (:mod:`ecrm_analytics.schema`), Alembic branch ``ecrm_analytics``;
* ``ecrm_interactions_inserted``: marks the customers of purchases and
  refunds in the ingest transaction (:mod:`ecrm_analytics.store`);
* ``ecrm_register_jobs``: ``analytics.refresh`` (exclusive) recomputes the
  marked customers and refits the CLV model when it is due;
* ``ecrm_register_condition_types``: ``rfm(...)``, ``clv(...)``, ``churn(...)``
  for segment, lifecycle and offer rules;
* ``ecrm_register_attributes``: the types of the attributes copied into
  ``customers.attributes`` when a workspace turns copying on (:mod:`ecrm_analytics.attributes`);
* ``ecrm_computed_attributes``: the same four values, read from the plugin's
  tables, for every send's templates (``customer.attributes.rfm_group``) and
  ``crm.customers.computed`` (personalization) — nothing copied;
* ``ecrm_customers_merged`` / ``ecrm_customers_deleted``: recompute / erase;
* ``ecrm_register_commands`` (``ecrm analytics``), ``ecrm_register_routes``
  (``/analytics/...``), ``ecrm_register_demo_stages``.
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
    from ecrm_core.domain import InteractionBatch, MergeRecord
    from ecrm_core.registry import AttributeDef, ConditionType, DemoStage, JobSpec, MigrationSource
    from ecrm_core.storage import Naming

__version__ = "0.1.0"

#: The ecrm hook API versions this plugin is written for (``ecrm_computed_attributes`` is 1.7).
ECRM_HOOK_API = ">=1.8,<2"  # 1.7: ecrm_computed_attributes; 1.8: ecrm_customers_deleting

ECRM_PLUGIN_NAME = "analytics"
MIGRATION_BRANCH = "ecrm_analytics"
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
def ecrm_interactions_inserted(crm: CRM, conn: sa.Connection, batch: InteractionBatch) -> None:
    # In the core's transaction: the marks commit (or roll back) with the purchases.
    from .store import mark_batch

    mark_batch(crm, conn, batch)


@hookimpl
def ecrm_register_jobs() -> list[JobSpec]:
    from ecrm_core.registry import JobSpec

    from .service import BATCH, refresh_tick

    return [
        JobSpec(
            name="analytics.refresh",
            tick=refresh_tick,
            every=30.0,
            exclusive=True,
            lease=900.0,
            description=f"recompute RFM of customers whose sales changed ({BATCH} a tick); refit CLV daily",
        ),
        *needs_jobs(),
    ]


def needs_jobs() -> list[JobSpec]:
    from ecrm_core.registry import JobSpec

    from .needs import needs_tick

    return [
        JobSpec(
            name="analytics.needs",
            tick=needs_tick,
            every=3600.0,
            exclusive=True,
            lease=1800.0,
            description="recompute the stored basket rules and customer clusters once a day",
        )
    ]


@hookimpl
def ecrm_register_condition_types() -> list[ConditionType]:
    from .conditions import condition_types
    from .needs import condition_types as needs_condition_types

    return [*condition_types(), *needs_condition_types()]


@hookimpl
def ecrm_register_attributes() -> list[AttributeDef]:
    from .conditions import attribute_defs
    from .needs import attribute_defs as needs_attribute_defs

    return [*attribute_defs(), *needs_attribute_defs()]


@hookimpl
def ecrm_computed_attributes(crm: CRM, customer_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    # The results as attributes of the person (templates: customer.attributes.rfm_group),
    # read from the plugin's tables: one query per 500 customers, nothing copied.
    from .attributes import values

    return values(crm, customer_ids)


@hookimpl
def ecrm_customers_merging(crm: CRM, conn: sa.Connection, merge: MergeRecord) -> None:
    """In the merge's transaction: forget the source's rows, mark the target for
    recomputation (the worker's ``analytics.refresh`` does it if the process dies
    before ``ecrm_customers_merged``)."""
    from .clusters import forget as forget_cluster
    from .store import forget, mark

    forget(crm, conn, [merge.source_id])
    forget_cluster(crm, conn, [merge.source_id])
    mark(crm, conn, [merge.target_id])


@hookimpl
def ecrm_customers_merged(crm: CRM, merge: MergeRecord) -> None:
    """After the commit: recompute the survivor now, and place them in a cluster again."""
    from . import needs
    from .service import on_merged

    on_merged(crm, merge.target_id)
    needs.on_merged(crm, merge.target_id)


@hookimpl
def ecrm_customers_deleting(crm: CRM, conn: sa.Connection, customer_ids: list[int]) -> None:
    """In the delete's transaction: every analytics row of the deleted customers."""
    from . import needs
    from .store import forget

    forget(crm, conn, customer_ids)
    needs.on_deleted(crm, conn, customer_ids)


@hookimpl
def ecrm_register_commands(cli: click.Group) -> None:
    from .cli import analytics

    cli.add_command(analytics)


@hookimpl
def ecrm_register_routes() -> list[Any]:
    # The routes are for ecrm-api (which mounts them); without it there is nothing to serve.
    from importlib.util import find_spec

    if find_spec("ecrm_api") is None:
        return []
    from .routes import handlers

    return handlers()


@hookimpl
def ecrm_register_demo_stages() -> list[DemoStage]:
    from .demo import demo_stages
    from .needs_demo import demo_stages as needs_demo_stages

    return [*demo_stages(), *needs_demo_stages()]
