"""``ecrm customers``: import customers from files, show one customer's 360° view."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import BatchError, RowError
from .base import CONTEXT_SETTINGS, State, _money, _progress, _when, pass_state

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from ..crm import CRM
    from ..services.interactions import CustomerView

__all__ = ["customers_group", "render_view"]


def customers_group() -> click.Group:
    group = click.Group(
        "customers",
        context_settings=CONTEXT_SETTINGS,
        help="""Customers: import them from files, look at one.

\b
Examples:
  ecrm customers import customers.csv
  ecrm customers import signups.jsonl --skip-invalid
  ecrm customers show 42
  ecrm customers index country
""",
    )
    group.add_command(customers_import)
    group.add_command(customers_show)
    group.add_command(customers_index)
    return group


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
    from ..importer import CustomerFileReader

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
    from ..errors import NotFound

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


@click.command(
    "index",
    context_settings=CONTEXT_SETTINGS,
    help="""Index attributes that segment rules filter on; with no KEY, list them.

An attribute index (crm.customers.indexes) is built on the expression the
rule compiler writes for attributes.KEY (or a declared attribute KEY), after
the workspace: counts, previews and refreshes of rules such as
country == "KR" then read only the matching customers instead of every
customer's attributes.  Building one reads every customer once and holds
the write lock meanwhile (seconds per million customers on SQLite).

\b
Examples:
  ecrm customers index                 # the indexed attributes
  ecrm customers index country         # index attributes.country
  ecrm customers index country --drop  # remove it
""",
)
@click.argument("key", required=False)
@click.option("--drop", is_flag=True, help="Remove the index of KEY instead of creating it.")
@pass_state
def customers_index(state: State, key: str | None, drop: bool) -> None:
    crm = state.crm()
    indexes = crm.customers.indexes
    if key is None:
        if drop:
            raise click.UsageError("--drop needs the KEY of the index to remove")
        keys = indexes.list()
        state.out.print("\n".join(keys) if keys else "no attribute indexes")
        return
    if drop:
        gone = indexes.drop(key)
        state.out.print(f"dropped the index of {key!r}" if gone else f"{key!r} had no index")
        return
    name = indexes.create(key)
    state.out.print(f"attributes.{key} is indexed ({name})")


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
