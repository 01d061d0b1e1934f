"""The ``ecrm`` command line.

Entry point ``ecrm = ecrm_core.cli:main``.  Every command builds its
:class:`~ecrm_core.CRM` lazily from the top-level options, so ``ecrm --help``
and ``ecrm plugins`` never open the database.  Plugins add commands through
the ``ecrm_register_commands`` hook; a plugin that fails is reported by
``ecrm plugins`` and never stops the CLI.

Embedding or testing: :func:`make_cli` returns a fresh :class:`click.Group`
(pass ``plugins=[...]`` to add plugin objects, ``entrypoints=False`` to skip
installed plugins)::

    from click.testing import CliRunner
    from ecrm_core.cli import make_cli

    result = CliRunner().invoke(make_cli(plugins=[MyPlugin()]), ["--db", "sqlite:///t.db", "init"])
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .errors import BatchError, EcrmError, PluginError, RowError

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console
    from rich.progress import Progress

    from .crm import CRM
    from .plugins import Plugins
    from .services.interactions import CustomerView

__all__ = ["main", "make_cli"]

log = logging.getLogger("ecrm.cli")

DEFAULT_DB = "sqlite:///ecrm.db"
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# ---------------------------------------------------------------------------
# state shared by the commands of one invocation
# ---------------------------------------------------------------------------


@dataclass
class State:
    """``ctx.obj``: the top-level options and a lazily built CRM."""

    db: str
    prefix: str
    workspace: str
    plugin_objects: Sequence[Any]
    entrypoints: bool
    plugins: Plugins
    load_error: str | None = None
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    _crm: CRM | None = field(default=None, repr=False)
    _out: Console | None = field(default=None, repr=False)
    _err: Console | None = field(default=None, repr=False)

    def crm(self) -> CRM:
        """The CRM for this invocation, built on first use and closed at exit."""
        if self._crm is None:
            from .crm import CRM

            self._crm = CRM(
                self.db,
                table_prefix=self.prefix,
                workspace=self.workspace,
                plugins=self.plugin_objects,
                load_entrypoints=self.entrypoints,
                channels=self.config.get("channels"),
                secret=self.config.get("secret"),
            )
            click.get_current_context().find_root().call_on_close(self._crm.close)
        return self._crm

    @property
    def out(self) -> Console:
        if self._out is None:
            from rich.console import Console

            self._out = Console(highlight=False)
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, highlight=False)
        return self._err

    def where(self) -> str:
        """The database URL without its password, and the prefix/workspace."""
        from sqlalchemy.engine import make_url

        try:
            url = make_url(self.db).render_as_string(hide_password=True)
        except Exception:  # an unparsable URL is reported when the CRM is built
            url = self.db
        return f"{url} (table prefix {self.prefix!r}, workspace {self.workspace!r})"


pass_state = click.make_pass_decorator(State)


class EcrmGroup(click.Group):
    """The top-level group: turns ecrm and database errors into clear messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EcrmError as exc:
            raise click.ClickException(_message(exc)) from None
        except Exception as exc:
            from sqlalchemy.exc import SQLAlchemyError

            if isinstance(exc, SQLAlchemyError):
                detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
                raise click.ClickException(
                    f"database error: {detail} (database: {ctx.obj.where() if ctx.obj else '?'})"
                ) from None
            raise


def _message(exc: EcrmError) -> str:
    if isinstance(exc, PluginError):
        return f"{exc} (run `ecrm plugins` to see every plugin's status)"
    return str(exc)


# ---------------------------------------------------------------------------
# top level
# ---------------------------------------------------------------------------

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
    from .plugins import Plugins

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
    cli.add_command(_db_group())
    cli.add_command(_customers_group())
    from .cli_segments import lifecycle_group, segments_group

    cli.add_command(segments_group())
    cli.add_command(lifecycle_group())
    from .cli_messages import messages_group

    cli.add_command(messages_group())
    from .cli_worker import worker_group

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


# ---------------------------------------------------------------------------
# init / db
# ---------------------------------------------------------------------------


def _upgrade(state: State, revision: str) -> None:
    crm = state.crm()
    crm.upgrade(revision)
    status = crm.schema_status()
    state.out.print(
        f"ecrm schema is up to date ({', '.join(sorted(status['heads']))}) in {state.where()}", soft_wrap=True
    )


@click.command(
    "init",
    context_settings=CONTEXT_SETTINGS,
    help="""Create ecrm's tables, or bring them up to date.

Safe to run again: only missing migrations are applied (core and every
plugin's migration branch).

\b
Examples:
  ecrm init
  ecrm --db sqlite:///shop.db init
  ecrm --db postgresql+psycopg://crm@localhost/shop --prefix crm_ init
""",
)
@pass_state
def init_command(state: State) -> None:
    _upgrade(state, "heads")


def _db_group() -> click.Group:
    group = click.Group(
        "db",
        context_settings=CONTEXT_SETTINGS,
        help="""Database schema: upgrade it or show its migration status.

\b
Examples:
  ecrm db upgrade
  ecrm db status --check
""",
    )
    group.add_command(db_upgrade)
    group.add_command(db_status)
    return group


@click.command(
    "upgrade",
    context_settings=CONTEXT_SETTINGS,
    help="""Apply pending migrations (core and plugin branches).

\b
Examples:
  ecrm db upgrade
  ecrm --db sqlite:///shop.db db upgrade --revision heads
""",
)
@click.option(
    "--revision", default="heads", show_default=True, help="Alembic revision to upgrade to, e.g. --revision 0001_core."
)
@pass_state
def db_upgrade(state: State, revision: str) -> None:
    _upgrade(state, revision)


@click.command(
    "status",
    context_settings=CONTEXT_SETTINGS,
    help="""Show the schema's current and latest migration revisions.

With --check the exit code is 1 when the schema is missing or out of
date (for deploy scripts).

\b
Examples:
  ecrm db status
  ecrm --db sqlite:///shop.db db status --check && echo up to date
""",
)
@click.option("--check", is_flag=True, help="Exit with code 1 unless the schema is up to date.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON, e.g. for scripts.")
@pass_state
def db_status(state: State, check: bool, as_json: bool) -> None:
    status = state.crm().schema_status()
    current, heads, ok = sorted(status["current"]), sorted(status["heads"]), bool(status["up_to_date"])
    pending = sorted(status.get("pending", set(heads) - set(current)))
    if as_json:
        doc = {"database": state.where(), "current": current, "heads": heads, "pending": pending, "up_to_date": ok}
        click.echo(json.dumps(doc))
    else:
        from rich.table import Table

        state.out.print(f"Database: {state.where()}", soft_wrap=True)
        table = Table(show_header=False)
        table.add_row("current", ", ".join(current) or "(none: not initialised)")
        table.add_row("latest", ", ".join(heads))
        if pending:
            table.add_row("pending", ", ".join(pending))
        table.add_row("status", "[green]up to date[/]" if ok else "[yellow]out of date[/]")
        state.out.print(table)
        if not ok:
            state.out.print("Run `ecrm db upgrade` (or `ecrm init`) to bring it up to date.")
    if check and not ok:
        raise click.exceptions.Exit(1)


# ---------------------------------------------------------------------------
# plugins
# ---------------------------------------------------------------------------

_STATUS_STYLE = {"loaded": "green", "failed": "bold red", "disabled": "dim"}


@click.command(
    "plugins",
    context_settings=CONTEXT_SETTINGS,
    help="""List the plugins: where each came from, its status, version, hooks and error.

Plugins that failed to load are listed with the reason (they never stop
ecrm).  Hook failures (a plugin that raised while registering) are listed
below the table.  Does not open the database.

\b
Examples:
  ecrm plugins
  ecrm plugins --json | jq '.plugins[] | select(.status == "failed")'
  ECRM_DISABLE_PLUGINS=ecrm_stats ecrm plugins
""",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
@pass_state
def plugins_command(state: State, as_json: bool) -> None:
    infos = list(state.plugins.info.values())
    failures = list(state.plugins.failures)
    startup_error = state.load_error
    if startup_error is None:
        try:
            crm = state.crm()
        except EcrmError as exc:
            startup_error = str(exc)
        else:
            failures += list(crm.plugins.failures)
    if as_json:
        doc = {
            "plugins": [
                {
                    "name": i.name,
                    "source": i.source,
                    "status": i.status,
                    "version": i.version,
                    "hooks": list(i.hooks),
                    "hook_api": i.hook_api,
                    "error": i.error,
                }
                for i in infos
            ],
            "hook_failures": [
                {"plugin": f.plugin, "hook": f.hook, "error": f.error, "at": f.at.isoformat()} for f in failures
            ],
            "startup_error": startup_error,
        }
        click.echo(json.dumps(doc, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="ecrm plugins", title_justify="left")
    for column in ("name", "source", "status", "version", "hooks"):
        table.add_column(column, no_wrap=column in ("source", "status", "version"), overflow="fold")
    table.add_column("error", overflow="fold", min_width=20)
    for i in infos:
        table.add_row(
            escape(i.name),
            i.source,
            f"[{_STATUS_STYLE.get(i.status, '')}]{i.status}[/]",
            escape(i.version or ""),
            "\n".join(h.removeprefix("ecrm_") for h in i.hooks),
            f"[red]{escape(i.error)}[/]" if i.error else "",
        )
    state.out.print(table)
    failed = sum(1 for i in infos if i.status == "failed")
    loaded = sum(1 for i in infos if i.status == "loaded")
    state.out.print(f"{loaded} loaded, {failed} failed, {len(infos) - loaded - failed} disabled")
    if failures:
        state.out.print("[bold red]Hook failures[/] (the plugin was skipped for that hook):")
        for f in failures:
            state.out.print(f"  {escape(f.plugin)} in {f.hook}: {escape(f.error)}", soft_wrap=True)
    if startup_error:
        state.out.print(
            f"[bold red]The CRM cannot start with these plugins:[/] {escape(startup_error)}", soft_wrap=True
        )


# ---------------------------------------------------------------------------
# customers
# ---------------------------------------------------------------------------


def _customers_group() -> click.Group:
    group = click.Group(
        "customers",
        context_settings=CONTEXT_SETTINGS,
        help="""Customers: import them from files, look at one.

\b
Examples:
  ecrm customers import customers.csv
  ecrm customers import signups.jsonl --skip-invalid
  ecrm customers show 42
""",
    )
    group.add_command(customers_import)
    group.add_command(customers_show)
    return group


@contextmanager
def _progress(state: State) -> Iterator[Progress]:
    """A rich progress display on stderr (silent when stderr is not a terminal)."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=state.err,
        transient=True,
        disable=not state.err.is_terminal,
    ) as progress:
        yield progress


class _Rollback(Exception):
    """Internal: undo an all-or-nothing import."""


@click.command(
    "import",
    context_settings=CONTEXT_SETTINGS,
    help="""Create or update customers from a CSV or JSON Lines file.

Rows are matched to existing customers by external_id, email, phone or
alias: a match is updated, anything else is created.  The file is streamed
(any size works) and written set-based in one transaction.

\b
By default the import is all or nothing: if any row is rejected, nothing
is stored, every rejected row is listed with its file line and reason, and
the exit code is 1.  With --skip-invalid the valid rows are stored and the
rejected ones listed (exit code 0).

\b
CSV: a header row, then one customer per line.  Columns:
  external_id, email, phone, name, lifecycle_stage, timezone, locale
  attr.<name>        an attribute, e.g. attr.plan
  consent.<channel>  true/false, yes/no, granted/denied, e.g. consent.email
  alias.<kind>       an extra identity, e.g. alias.cookie
An empty cell means "not given" (the stored value is kept).

\b
JSONL: one object per line, e.g.
  {"email": "ada@example.com", "name": "Ada", "attributes": {"plan": "pro"},
   "consent": {"email": "granted"}, "aliases": [["cookie", "c-123"]]}

\b
Examples:
  ecrm customers import customers.csv
  ecrm customers import export.txt --format csv --delimiter ';'
  ecrm customers import signups.jsonl.gz --skip-invalid
""",
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    help="File format; by default from the extension (.csv, .jsonl, .ndjson, optionally .gz).",
)
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Store the valid rows and report the rejected ones, instead of storing nothing when a row is bad.",
)
@click.option("--encoding", default="utf-8-sig", show_default=True, help="Text encoding of the file, e.g. latin-1.")
@click.option("--delimiter", default=",", show_default=True, help="CSV cell separator, e.g. --delimiter ';'.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Rows per set-based batch, e.g. --batch-size 5000.",
)
@click.option(
    "--show-errors",
    type=click.IntRange(0),
    default=50,
    show_default=True,
    help="How many rejected rows to list (0 lists all), e.g. --show-errors 0.",
)
@pass_state
def customers_import(
    state: State,
    file: Path,
    fmt: str | None,
    skip_invalid: bool,
    encoding: str,
    delimiter: str,
    batch_size: int,
    show_errors: int,
) -> None:
    from .importer import CustomerFileReader

    if len(delimiter) != 1:
        raise click.BadParameter("must be a single character", param_hint="--delimiter")
    crm = state.crm()
    crm.customers.ready()  # a missing schema is reported before the file is read
    created: tuple[int, ...] = ()
    updated: set[int] = set()
    rejected: list[RowError] = []
    with CustomerFileReader(file, fmt, encoding=encoding, delimiter=delimiter) as reader, _progress(state) as bar:
        task = bar.add_task(f"importing {file.name}", total=reader.size, detail="")

        def progress(_rows: int) -> None:
            bar.update(task, completed=reader.position, detail=f"{reader.records:,} rows")

        if skip_invalid:
            result = crm.customers.upsert_many(
                reader, on_error="skip", batch_size=batch_size, progress=progress, first_line=reader.first_line
            )
            created, updated = result.created, set(result.updated)
            rejected = [*reader.errors, *reader.locate(result.errors)]
        else:
            try:
                with crm.db.write() as conn:
                    try:
                        result = crm.using(conn).customers.upsert_many(
                            reader,
                            on_error="raise",
                            batch_size=batch_size,
                            progress=progress,
                            first_line=reader.first_line,
                        )
                    except BatchError as exc:
                        rejected = [*reader.errors, *reader.locate(exc.errors)]
                        raise _Rollback from None
                    if reader.errors:
                        rejected = list(reader.errors)
                        raise _Rollback
                    created, updated = result.created, set(result.updated)
            except _Rollback:
                pass
    rejected.sort(key=lambda e: (e.line or 0, e.index))
    out = state.out
    name = click.format_filename(file)
    if rejected and not skip_invalid:
        _print_rejected(state, rejected, show_errors)
        out.print(
            f"[bold red]Nothing was stored:[/] {len(rejected)} of {reader.records} row(s) in {name} were rejected. "
            f"Fix them and import again, or pass --skip-invalid to store the {reader.records - len(rejected)} "
            "valid row(s).",
            soft_wrap=True,
        )
        raise click.exceptions.Exit(1)
    if rejected:
        _print_rejected(state, rejected, show_errors)
    out.print(
        f"Imported {name}: {len(created)} created, {len(updated)} updated, {len(rejected)} rejected "
        f"({reader.records} row(s) read).",
        soft_wrap=True,
    )


def _print_rejected(state: State, rejected: Sequence[RowError], limit: int) -> None:
    from rich.text import Text

    out = state.out
    out.print(Text(f"Rejected rows ({len(rejected)}):", style="bold"))
    shown = rejected if limit == 0 else rejected[:limit]
    for e in shown:
        where = f"line {e.line}" if e.line is not None else f"row {e.index + 1}"
        out.print(Text(f"  {where}: {e.error}"), soft_wrap=True)
    if len(shown) < len(rejected):
        out.print(f"  ... and {len(rejected) - len(shown)} more (--show-errors 0 lists all)")


def _lookup(crm: CRM, ref: str) -> int:
    """A customer id from an id, e-mail, phone (+…) or external id."""
    from .errors import NotFound

    if ref.isdigit():
        return int(ref)
    if "@" in ref:
        found = crm.customers.find(email=ref)
    elif ref.startswith("+"):
        found = crm.customers.find(phone=ref)
    else:
        found = crm.customers.find(external_id=ref)
    if found is None or found.id is None:
        raise NotFound("customer", ref)
    return found.id


@click.command(
    "show",
    context_settings=CONTEXT_SETTINGS,
    help="""Show the 360° view of a customer: who they are, how ecrm knows them,
what they did on each channel, and their latest interactions.

CUSTOMER is an id, an e-mail address, a phone number (+…) or an external id.

\b
Examples:
  ecrm customers show 42
  ecrm customers show ada@example.com --recent 50
  ecrm customers show user-1001
""",
)
@click.argument("customer")
@click.option(
    "--recent",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="How many latest interactions to list.",
)
@pass_state
def customers_show(state: State, customer: str, recent: int) -> None:
    crm = state.crm()
    view = crm.interactions.view(_lookup(crm, customer), recent=recent)
    render_view(state.out, view)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else ""


def _money(amount: Decimal | None, currency: str | None = None) -> str:
    if amount is None:
        return ""
    digits = 0 if currency in ("KRW", "JPY") else 2
    text = f"{amount:,.{digits}f}"
    return f"{text} {currency}" if currency else text


def render_view(out: Console, view: CustomerView) -> None:
    """Print a :class:`~ecrm_core.services.interactions.CustomerView` as rich tables."""
    from rich.markup import escape
    from rich.table import Table

    c = view.customer
    who = Table(title=f"Customer {c.id}", title_justify="left", show_header=False)
    who.add_column("field", style="bold")
    who.add_column("value", overflow="fold")
    rows = [
        ("name", c.name),
        ("email", c.email),
        ("phone", c.phone),
        ("external id", c.external_id),
        ("lifecycle stage", c.lifecycle_stage),
        ("timezone", c.timezone),
        ("locale", c.locale),
        ("consent", ", ".join(f"{ch}: {s.status}" for ch, s in sorted(c.consent.items()))),
        ("attributes", ", ".join(f"{k}={v}" for k, v in sorted(c.attributes.items()))),
        ("created", _when(c.created_at)),
        ("updated", _when(c.updated_at)),
    ]
    for label, value in rows:
        who.add_row(label, escape(str(value)) if value else "[dim]-[/]")
    out.print(who)

    aliases = Table(title="Known as", title_justify="left")
    aliases.add_column("kind")
    aliases.add_column("value", overflow="fold")
    for a in view.aliases:
        aliases.add_row(escape(a.kind), escape(a.value))
    out.print(aliases)

    summary = Table(title="Activity by kind and channel", title_justify="left")
    for column, justify in (("kind", "left"), ("channel", "left"), ("count", "right"), ("amount", "right")):
        summary.add_column(column, justify=justify)  # type: ignore[arg-type]
    summary.add_column("first")
    summary.add_column("last")
    for s in view.summary:
        summary.add_row(s.kind, s.channel or "", f"{s.count:,}", _money(s.amount), _when(s.first_at), _when(s.last_at))
    if not view.summary:
        summary.add_row("[dim]no interactions yet[/]", "", "", "", "", "")
    out.print(summary)

    latest = Table(title=f"Latest {len(view.recent)} interaction(s)", title_justify="left")
    for column in ("when", "kind", "channel", "amount", "details"):
        latest.add_column(column, overflow="fold", justify="right" if column == "amount" else "left")
    for i in view.recent:
        details = ", ".join(f"{k}={v}" for k, v in i.properties.items())
        latest.add_row(_when(i.occurred_at), i.kind, i.channel or "", _money(i.amount, i.currency), escape(details))
    out.print(latest)


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------


class _RichDemoProgress:
    """Shows :func:`~ecrm_core.demo.build_demo`'s stages as progress bars."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def start(self, stage: str, total: int | None) -> None:
        if self.task is not None:
            previous = next(t for t in self.progress.tasks if t.id == self.task)
            self.progress.update(self.task, completed=previous.total or 1, total=previous.total or 1)
        self.task = self.progress.add_task(stage, total=total, detail="")

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)


@click.command(
    "demo",
    context_settings=CONTEXT_SETTINGS,
    help="""Build a sample web shop and show what ecrm knows about it.

Generates customers (names, e-mails, phones, time zones, locales and
consent from six countries), two years of interactions (page and product
views, carts, purchases in five currencies with seasonal peaks, refunds,
newsletters, opens and clicks, complaints, inquiries; some customers churn,
some come back, a few buy a lot) and a few offers.  Then prints counts,
activity by kind and channel, revenue by month, top customers, active
offers and the 360° view of the best customer.

The schema is created if needed.  If the workspace already holds the
demo, it is reused as it is; --fresh deletes the demo data (demo-*
customers with their interactions, demo.* offers) and builds it again.
A workspace with customers that are not demo data is never touched.

Installed plugins add stages after the shop (hook ecrm_register_demo_stages):
a campaign run, an analytics report…; --core-only skips them.

\b
Examples:
  ecrm --db sqlite:///demo.db demo
  ecrm --db sqlite:///demo.db demo --customers 500 --seed 7 --fresh
  ecrm --db sqlite:///shop.db --workspace demo demo
""",
)
@click.option(
    "--customers",
    "n_customers",
    type=click.IntRange(1, 1_000_000),
    default=3000,
    show_default=True,
    help="How many customers to generate, e.g. --customers 200.",
)
@click.option("--seed", type=int, default=None, help="Random seed (default: a fixed one, so every demo looks alike).")
@click.option("--months", type=click.IntRange(1, 120), default=24, show_default=True, help="Months of history.")
@click.option("--fresh", is_flag=True, help="Delete existing demo data and build it again.")
@click.option(
    "--core-only",
    is_flag=True,
    help="Skip the stages installed plugins add (a campaign run, an analytics report…).",
)
@pass_state
def demo_command(state: State, n_customers: int, seed: int | None, months: int, fresh: bool, core_only: bool) -> None:
    try:
        import faker  # noqa: F401
    except ImportError:
        raise click.ClickException("the demo needs Faker: pip install 'ecrm-core[demo]'") from None
    from .demo import DEFAULT_SEED, build_demo, shop_report

    crm = state.crm()
    with _progress(state) as bar:
        summary = build_demo(
            crm,
            customers=n_customers,
            seed=DEFAULT_SEED if seed is None else seed,
            months=months,
            fresh=fresh,
            progress=_RichDemoProgress(bar),
        )
    out = state.out
    if summary.reused:
        out.print(
            f"Reusing the demo already in {state.where()}: {summary.customers:,} customers. "
            "Pass --fresh to build it again.",
            soft_wrap=True,
        )
    else:
        out.print(
            f"Built the demo shop in {state.where()}: {summary.customers:,} customers, "
            f"{summary.interactions:,} interactions, {summary.offers} offers in {summary.seconds:.1f}s "
            f"(seed {summary.seed}).",
            soft_wrap=True,
        )
    render_report(state, shop_report(crm))
    if not core_only:
        _run_demo_stages(state, crm)


def _run_demo_stages(state: State, crm: Any) -> None:
    """Run the stages plugins add to the demo; show each one's output or error."""
    from rich.markup import escape

    from .demo_stages import run_demo_stages

    if not crm.registry.demo_stages:
        return
    with _progress(state) as bar:
        outcomes = run_demo_stages(crm, _RichDemoProgress(bar))
    out = state.out
    for outcome in outcomes:
        out.rule(f"{escape(outcome.title)} [dim]({escape(outcome.plugin or '?')})[/]")
        if outcome.ok:
            if outcome.output is not None:
                out.print(outcome.output)
        else:
            out.print(f"[red]this stage failed: {escape(outcome.error or '')}[/] (the others went on)", soft_wrap=True)


def render_report(state: State, report: Any) -> None:
    """Print a :class:`~ecrm_core.demo.ShopReport`: what ecrm knows."""
    from rich.markup import escape
    from rich.table import Table

    out = state.out
    out.rule("What ecrm knows")
    counts = Table(title="Totals", title_justify="left", show_header=False)
    counts.add_row("customers", f"{report.customers:,}")
    counts.add_row("interactions", f"{report.interactions:,}")
    for stage, n in report.by_stage:
        counts.add_row(f"  stage {stage}", f"{n:,}")
    out.print(counts)

    kinds = Table(title="Interactions by kind and channel", title_justify="left")
    kinds.add_column("kind")
    kinds.add_column("channel")
    kinds.add_column("count", justify="right")
    for kind, channel, n in report.by_kind_channel:
        kinds.add_row(kind, channel or "", f"{n:,}")
    out.print(kinds)

    if report.revenue_by_month:
        peak = max((v for _, v in report.revenue_by_month), default=Decimal(1)) or Decimal(1)
        chart = Table(title="Net revenue by month (≈ EUR at fixed demo rates)", title_justify="left")
        chart.add_column("month")
        chart.add_column("revenue", justify="right")
        chart.add_column("", no_wrap=True)
        for month, value in report.revenue_by_month:
            width = max(0, int(30 * value / peak))
            chart.add_row(month, f"{value:,.0f}", "[cyan]" + "█" * width + "[/]")
        out.print(chart)
        currencies = Table(title="Revenue by currency", title_justify="left")
        currencies.add_column("currency")
        currencies.add_column("orders", justify="right")
        currencies.add_column("net revenue", justify="right")
        for currency, total, orders in report.revenue_by_currency:
            currencies.add_row(currency, f"{orders:,}", _money(total, currency))
        out.print(currencies)

    if report.top_customers:
        top = Table(title="Top customers by spend", title_justify="left")
        for column in ("id", "name", "email", "stage", "orders", "spend", "≈ EUR"):
            top.add_column(column, justify="right" if column in ("id", "orders", "spend", "≈ EUR") else "left")
        for t in report.top_customers:
            top.add_row(
                str(t.id),
                escape(t.name or ""),
                escape(t.email or ""),
                t.lifecycle_stage,
                str(t.orders),
                _money(t.spend, t.currency),
                f"{t.spend_eur:,.0f}",
            )
        out.print(top)

    if report.by_phase and report.customers:
        phases = Table(title="Customers by lifecycle phase (stages kept current by rules)", title_justify="left")
        phases.add_column("phase")
        phases.add_column("customers", justify="right")
        phases.add_column("", no_wrap=True)
        for phase, n in report.by_phase:
            phases.add_row(phase, f"{n:,}", "[green]" + "█" * round(30 * n / report.customers) + "[/]")
        out.print(phases)

    if report.segments:
        segs = Table(title="Segments (live: kept current as events arrive)", title_justify="left")
        for column in ("segment", "members", "rule"):
            segs.add_column(column, justify="right" if column == "members" else "left")
        for seg in report.segments:
            segs.add_row(escape(seg.name), f"{seg.member_count:,}", escape(seg.text or "(static list)"))
        out.print(segs)

    offers = Table(title="Active offers", title_justify="left")
    for column in ("code", "name", "kind", "priority", "channels", "valid until"):
        offers.add_column(column)
    for o in report.active_offers:
        offers.add_row(
            escape(o.code),
            escape(o.name),
            o.kind,
            str(o.priority),
            ", ".join(o.channels) or "any",
            _when(o.valid_until),
        )
    if not report.active_offers:
        offers.add_row("[dim]none[/]", "", "", "", "", "")
    out.print(offers)

    if report.top_customers:
        best = report.top_customers[0]
        out.rule(f"360° view of the best customer ({best.id})")
        render_view(out, state.crm().interactions.view(best.id, recent=10))
        out.print(f"Explore more: ecrm --db {state.db} customers show <id|email>", soft_wrap=True)
