"""The ``ecrm`` group: top-level options, plugin commands, ``main`` and logging."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ..errors import PluginError
from .base import CONTEXT_SETTINGS, DEFAULT_DB, EcrmGroup, State
from .customers import customers_group
from .db import db_group, init_command
from .demo import demo_command
from .plugins import plugins_command

__all__ = ["main", "make_cli"]

log = logging.getLogger("ecrm.cli")


TOP_HELP = """\
ecrm: an embeddable, plugin-based e-CRM on your own database.

\b
Quick start:
  ecrm init                                   # create the tables in ./ecrm.db
  ecrm customers import customers.csv         # load customers (CSV or JSONL)
  ecrm customers show ada@example.com         # the 360° view of one customer
  ecrm segments preview 'purchase.count(90d) >= 3'   # who matches a rule
  ecrm lifecycle show                         # customers per lifecycle stage
  ecrm demo                                   # a sample shop to explore
  ecrm worker                                 # run delivery, refreshes and plugin jobs
  ecrm --db postgresql+psycopg://u@host/crm db status

Options can also come from the environment: ECRM_DATABASE_URL, ECRM_TABLE_PREFIX,
ECRM_WORKSPACE.  Installed plugins load automatically (ECRM_PLUGINS=a,b allows only
those, ECRM_DISABLE_PLUGINS=c blocks some); `ecrm plugins` shows them.
"""


def make_cli(plugins: Sequence[Any] = (), *, entrypoints: bool = True) -> click.Group:
    """Build the ``ecrm`` command group, with the commands of plugins.

    :param plugins: plugin objects to load besides the installed ones (hosts
        and tests); they are also registered on the CRM the commands build.
    :param entrypoints: load installed plugins (entry points ``ecrm.plugins``).

    Plugins are loaded without touching the database; each one's
    ``ecrm_register_commands`` is called in isolation, so a broken plugin
    cannot stop the CLI (``ecrm plugins`` shows what failed).
    """
    from ..plugins import Plugins

    manager = Plugins()
    load_error: str | None = None
    try:
        manager.load(plugins=plugins, entrypoints=entrypoints)
    except PluginError as exc:
        load_error = str(exc)
        log.error("ecrm: %s", exc)

    @click.group(cls=EcrmGroup, context_settings=CONTEXT_SETTINGS, help=TOP_HELP)
    @click.option(
        "--db",
        "db",
        envvar="ECRM_DATABASE_URL",
        default=DEFAULT_DB,
        show_default=True,
        metavar="URL",
        help="SQLAlchemy database URL (env ECRM_DATABASE_URL), e.g. sqlite:///shop.db or "
        "postgresql+psycopg://user@localhost/shop.",
    )
    @click.option(
        "--prefix",
        envvar="ECRM_TABLE_PREFIX",
        default="ecrm_",
        show_default=True,
        help="Prefix of ecrm's table names (env ECRM_TABLE_PREFIX), e.g. --prefix crm_ to share a database.",
    )
    @click.option(
        "--workspace",
        envvar="ECRM_WORKSPACE",
        default="default",
        show_default=True,
        help="Workspace (tenant) to work in (env ECRM_WORKSPACE), e.g. --workspace shop_kr.",
    )
    @click.option(
        "--config",
        "config_file",
        envvar="ECRM_CONFIG",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A TOML file (env ECRM_CONFIG) with channel settings and the signing secret, e.g. "
        '[channels.email] from = "Shop <news@shop.example>"; see docs/channels.md.',
    )
    @click.version_option(package_name="ecrm-core", prog_name="ecrm", message="%(prog)s %(version)s")
    @click.pass_context
    def cli(ctx: click.Context, db: str, prefix: str, workspace: str, config_file: Path | None) -> None:
        ctx.obj = State(
            db=db,
            prefix=prefix,
            workspace=workspace,
            plugin_objects=tuple(plugins),
            entrypoints=entrypoints,
            plugins=manager,
            load_error=load_error,
            config=_read_config(config_file),
        )

    for command in (init_command, plugins_command, demo_command):
        cli.add_command(command)
    cli.add_command(db_group())
    cli.add_command(customers_group())
    from .segments import lifecycle_group, segments_group

    cli.add_command(segments_group())
    cli.add_command(lifecycle_group())
    from .messages import messages_group

    cli.add_command(messages_group())
    from .worker import worker_group

    cli.add_command(worker_group())

    builtins = dict(cli.commands)
    manager.collect("ecrm_register_commands", cli=cli)
    for name, command in builtins.items():
        if cli.commands.get(name) is not command:
            log.warning("ecrm: a plugin tried to replace the built-in command %r; kept the built-in one", name)
            cli.commands[name] = command
    return cli


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{path}: not valid TOML: {exc}", param_hint="--config") from None
    unknown = sorted(set(data) - {"channels", "secret"})
    if unknown:
        raise click.BadParameter(
            f"{path}: unknown section(s) {', '.join(unknown)}; known: channels, secret", param_hint="--config"
        )
    return data


def main(argv: Sequence[str] | None = None, *, plugins: Sequence[Any] = (), entrypoints: bool = True) -> None:
    """Run the ``ecrm`` command line (the console-script entry point).

    :param argv: arguments (default: ``sys.argv[1:]``).
    :param plugins: extra plugin objects (see :func:`make_cli`).
    """
    _configure_logging()
    cli = make_cli(plugins=plugins, entrypoints=entrypoints)
    cli.main(args=list(argv) if argv is not None else None, prog_name="ecrm")


class _OneLine(logging.Formatter):
    """``ecrm: message`` on stderr; tracebacks only with ECRM_DEBUG=1."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and not os.environ.get("ECRM_DEBUG"):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        text = super().format(record)
        return text if text.startswith("ecrm") else f"ecrm: {text}"


def _configure_logging() -> None:
    logger = logging.getLogger("ecrm")
    if logger.handlers or logging.getLogger().handlers:
        return  # the host configured logging
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if os.environ.get("ECRM_DEBUG") else logging.WARNING)
    logger.propagate = False
