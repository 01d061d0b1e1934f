"""The ecrm plugin (entry point ``email`` in the group ``ecrm.plugins``).

Registers the ``email`` channel, the ``email_templates`` table (its own
migration branch ``ecrm_email``) and the ``ecrm email`` commands.  Importing
it is cheap: Jinja2, lxml and smtplib load when the channel is first used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecrm_core.hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover - typing only
    import click
    import sqlalchemy as sa
    from ecrm_core.registry import ChannelSpec, MigrationSource
    from ecrm_core.storage import Naming

from . import __version__ as __version__

#: The ecrm hook API versions this plugin is written for (channels: 1.1).
ECRM_HOOK_API = ">=1.1,<2"

ECRM_PLUGIN_NAME = "email"

MIGRATION_BRANCH = "ecrm_email"

VERSIONS_DIR = str(Path(__file__).resolve().parent / "migrations" / "versions")


def _build(crm: Any) -> Any:
    from .channel import EmailChannel

    return EmailChannel(crm)


@hookimpl
def ecrm_register_channels() -> list[ChannelSpec]:
    from ecrm_core.registry import ChannelSpec

    from .channel import CAPABILITIES

    return [
        ChannelSpec(
            name="email",
            factory=_build,
            capabilities=CAPABILITIES,
            description="e-mail over SMTP: templates, one-click unsubscribe, tracking, bounces",
        )
    ]


@hookimpl
def ecrm_register_tables(metadata: sa.MetaData, naming: Naming) -> None:
    from .schema import define_table

    define_table(metadata, naming)


@hookimpl
def ecrm_register_migrations() -> list[MigrationSource]:
    from ecrm_core.registry import MigrationSource

    return [MigrationSource(branch=MIGRATION_BRANCH, location=VERSIONS_DIR)]


@hookimpl
def ecrm_register_commands(cli: click.Group) -> None:
    from .cli import email_group

    cli.add_command(email_group)
