"""The ecrm plugin (entry point ``admin`` in the group ``ecrm.plugins``).

It ships the ``admin_users`` and ``admin_sessions`` tables (migration branch
``ecrm_admin``), the ``ecrm admin`` commands, and — through the core's own
``ecrm_register_admin_pages`` hook, like any plugin — the campaign pages when
``ecrm-campaigns`` is loaded.  Importing it is cheap: Litestar and Jinja2 are
imported only when an app is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ecrm_core.hookspecs import hookimpl

from . import __version__ as __version__

if TYPE_CHECKING:  # pragma: no cover - typing only
    import click
    import sqlalchemy as sa
    from ecrm_core.crm import CRM
    from ecrm_core.registry import AdminPage, AdminWidget, DemoStage, MigrationSource
    from ecrm_core.storage import Naming

#: The ecrm hook API versions this plugin is written for (``AdminPage.role`` etc. are 1.6).
ECRM_HOOK_API = ">=1.6,<2"

#: The plugin's name, whether loaded by entry point or passed by the host.
ECRM_PLUGIN_NAME = "admin"

#: The Alembic branch with the plugin's tables.
MIGRATION_BRANCH = "ecrm_admin"

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
def ecrm_register_commands(cli: click.Group) -> None:
    from .cli import admin

    cli.add_command(admin)


@hookimpl
def ecrm_register_demo_stages() -> list[DemoStage]:
    from .demo import demo_stages

    return demo_stages()


def _loaded(crm: CRM, name: str) -> bool:
    info = crm.plugins.info.get(name)
    return info is not None and info.status == "loaded"


@hookimpl
def ecrm_register_admin_pages(crm: CRM) -> list[AdminPage]:
    """The campaign, analytics and personalization pages, for those plugins loaded in this CRM."""
    out: list[AdminPage] = []
    if _loaded(crm, "campaigns"):
        from .contrib import campaigns

        out += campaigns.pages()
    if _loaded(crm, "analytics"):
        from .contrib import analytics

        out += analytics.pages()
    if _loaded(crm, "personalize"):
        from .contrib import personalize

        out += personalize.pages()
    return out


@hookimpl
def ecrm_register_admin_widgets(crm: CRM) -> list[AdminWidget]:
    """The analytics value scores and the personalization preferences on the customer view."""
    out: list[AdminWidget] = []
    if _loaded(crm, "analytics"):
        from .contrib import analytics

        out += analytics.widgets()
    if _loaded(crm, "personalize"):
        from .contrib import personalize

        out += personalize.widgets()
    return out


# The admin stores nothing about customers (only its own users and sessions):
# it has no rows to erase on ``ecrm_customers_deleted`` or move on ``ecrm_customers_merged``.
