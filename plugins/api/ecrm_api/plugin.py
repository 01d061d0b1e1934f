"""The ecrm plugin (entry point ``api`` in the group ``ecrm.plugins``).

It ships the ``api_keys`` and ingest tables (its own migration branch), the
``ecrm serve``, ``ecrm keys`` and ``ecrm ingest`` commands, the job
``ingest.process`` and the erasure of a deleted customer's waiting and
rejected messages (``ecrm_customers_deleting``, ``ecrm_customers_deleted``).  Importing it is cheap: Litestar
is imported only when an app is built.
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
    from ecrm_core.domain import Alias
    from ecrm_core.registry import MigrationSource
    from ecrm_core.storage import Naming

from . import __version__ as __version__

#: The ecrm hook API versions this plugin is written for.
ECRM_HOOK_API = ">=1.8,<2"  # ecrm_customers_deleting is 1.8

#: The plugin's name, whether loaded by entry point or passed by the host.
ECRM_PLUGIN_NAME = "api"

#: The Alembic branch with the plugin's table.
MIGRATION_BRANCH = "ecrm_api"

#: The branch's version directory, as a file system path.
VERSIONS_DIR = str(Path(__file__).resolve().parent / "migrations" / "versions")


@hookimpl
def ecrm_register_tables(metadata: sa.MetaData, naming: Naming) -> None:
    from .inbox import define_tables
    from .schema import define_table

    define_table(metadata, naming)
    define_tables(metadata, naming)


@hookimpl
def ecrm_register_migrations() -> list[MigrationSource]:
    from ecrm_core.registry import MigrationSource

    return [MigrationSource(branch=MIGRATION_BRANCH, location=VERSIONS_DIR)]


@hookimpl
def ecrm_register_commands(cli: click.Group) -> None:
    from .cli import keys, serve
    from .ingest_cli import ingest

    cli.add_command(serve)
    cli.add_command(keys)
    cli.add_command(ingest)


@hookimpl
def ecrm_customers_deleting(crm: CRM, conn: sa.Connection, aliases: Sequence[Alias]) -> None:
    """In the delete's transaction: the deleted people's tombstones (their
    waiting messages are dropped by the processor from now on) and their
    messages kept in ``ingest_rejected`` (found by identity: see
    :mod:`ecrm_api.erasure`)."""
    from .erasure import erase_in_transaction

    erase_in_transaction(crm, conn, aliases)


@hookimpl
def ecrm_customers_deleted(crm: CRM, aliases: Sequence[Alias]) -> None:
    """After the commit: their messages waiting in the ingest inbox."""
    from .erasure import erase_inbox

    erase_inbox(crm, aliases)


@hookimpl
def ecrm_register_jobs() -> list[Any]:
    """``ingest.process``: the processor of the tracking inbox (see :mod:`ecrm_api.processor`)."""
    from .processor import make_job

    return [make_job()]
