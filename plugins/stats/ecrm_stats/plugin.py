"""The ecrm plugin (entry point ``stats`` in the group ``ecrm.plugins``).

Importing this module is cheap: SQLAlchemy work lives in
:mod:`ecrm_stats.store` and the CLI in :mod:`ecrm_stats.cli`, both imported
by the hooks that need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ecrm_core.hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover - typing only
    import click
    import sqlalchemy as sa
    from ecrm_core.crm import CRM
    from ecrm_core.domain import InteractionBatch, MergeRecord
    from ecrm_core.registry import MigrationSource
    from ecrm_core.storage import Naming

__version__ = "0.1.0"

#: The ecrm hook API versions this plugin is written for.
ECRM_HOOK_API = ">=1.2,<2"

#: The plugin's name, whether loaded by entry point or passed by the host.
ECRM_PLUGIN_NAME = "stats"

#: The Alembic branch with the plugin's table.
MIGRATION_BRANCH = "ecrm_stats"

#: The branch's version directory, as a file system path.
VERSIONS_DIR = str(Path(__file__).resolve().parent / "migrations" / "versions")


@hookimpl
def ecrm_register_tables(metadata: sa.MetaData, naming: Naming) -> None:
    from .schema import define_table

    define_table(metadata, naming)


@hookimpl
def ecrm_register_migrations() -> list[MigrationSource]:
    from ecrm_core.registry import MigrationSource

    return [MigrationSource(branch=MIGRATION_BRANCH, location=VERSIONS_DIR)]


@hookimpl
def ecrm_interactions_inserted(crm: CRM, conn: sa.Connection, batch: InteractionBatch) -> None:
    # In the core's transaction: the stats commit (or roll back) with the
    # interactions, and cost no COMMIT of their own.
    from . import store

    store.apply_batch(crm, batch, conn)


@hookimpl
def ecrm_customers_merged(crm: CRM, merge: MergeRecord) -> None:
    from . import store

    store.fold_merge(crm, merge)


@hookimpl
def ecrm_register_commands(cli: click.Group) -> None:
    from .cli import stats

    cli.add_command(stats)
