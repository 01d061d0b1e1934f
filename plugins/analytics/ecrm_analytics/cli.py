"""``ecrm analytics ...``: one command per report, plus ``refresh``, ``rates`` and ``customer``.

Every report of the catalogue (:mod:`ecrm_analytics.reports`) is a command:
``ecrm analytics rfm --chart rfm.svg`` prints its table (``--json`` prints
``Report.to_dict()``) and writes its chart (``.svg`` or ``.png``).  Report
parameters are options (``--holdout-weeks 26``), checked like the API's.

The commands work on the ``ecrm`` command line's CRM (``ecrm --db URL
--workspace W analytics ...``); used outside ``ecrm`` they build one from
``ECRM_DATABASE_URL``.  Errors print the field and the fix and exit with
status 1.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM

    from .reports import ReportSpec

__all__ = ["analytics", "open_crm"]


def open_crm(ctx: click.Context) -> CRM:
    """The CRM a command works on, with the analytics plugin registered."""
    import os

    from ecrm_core.crm import CRM

    obj = ctx.find_root().obj
    crm = obj if isinstance(obj, CRM) else getattr(obj, "crm", None)
    if callable(crm) and not isinstance(crm, CRM):
        crm = crm()
    if not isinstance(crm, CRM):
        crm = CRM(os.environ.get("ECRM_DATABASE_URL"), workspace=os.environ.get("ECRM_WORKSPACE") or "default")
        ctx.call_on_close(crm.close)
    from . import plugin

    if "analytics_rfm" not in crm.db.tables:
        crm.register_plugin(plugin)
    return crm


def _run(fn: Any, *args: Any, **kw: Any) -> Any:
    from ecrm_core.errors import EcrmError

    try:
        return fn(*args, **kw)
    except (EcrmError, LookupError) as exc:
        raise click.ClickException(str(exc)) from None


def _console() -> Any:
    from rich.console import Console

    return Console()


def _report_command(spec: ReportSpec) -> click.Command:
    def callback(chart: str | None, as_json: bool, limit: int, **params: Any) -> None:
        from .reports import report

        ctx = click.get_current_context()
        crm = open_crm(ctx)
        given = {k: v for k, v in params.items() if v is not None}
        result = _run(report, crm, spec.name, **given)
        if as_json:
            click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        else:
            _console().print(result.to_rich(limit=limit))
        if chart:
            path = _run(result.write_chart, chart)
            click.echo(f"chart written to {path}", err=as_json)

    options = [
        click.Option(["--chart"], type=click.Path(dir_okay=False), help="Write the chart to this .svg or .png file."),
        click.Option(["--json", "as_json"], is_flag=True, help="Print the report as JSON (what the API returns)."),
        click.Option(["--limit"], type=click.IntRange(1, 10_000), default=50, show_default=True, help="Rows shown."),
    ]
    for p in spec.params:
        kind: Any = {int: int, float: float, bool: click.BOOL}.get(p.type, str)
        if p.choices:
            kind = click.Choice(p.choices)
        options.append(
            click.Option(
                [f"--{p.name.replace('_', '-')}", p.name],
                type=kind,
                default=None,
                help=f"{p.help} (default {p.default!r})",
            )
        )
    return click.Command(
        spec.name, callback=callback, params=options, help=spec.description or spec.title, short_help=spec.title
    )


class _AnalyticsGroup(click.Group):
    """Fixed commands plus one command per registered report (looked up lazily)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from .reports import specs

        return sorted(set(super().list_commands(ctx)) | set(specs()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is not None:
            return found
        from .reports import specs

        spec = specs().get(cmd_name)
        return None if spec is None else _report_command(spec)


@click.group("analytics", cls=_AnalyticsGroup)
def analytics() -> None:
    """Customer value analysis: RFM, lifetime value, churn and retention (ecrm-analytics)."""


@analytics.command("refresh")
@click.option("--full", is_flag=True, help="Recompute every customer, not only those whose sales changed.")
@click.option("--clv/--no-clv", default=True, show_default=True, help="Also refit the lifetime-value model.")
def refresh_command(full: bool, clv: bool) -> None:
    """Bring RFM (and the CLV model) up to date now, with progress."""
    from .service import analytics as service

    crm = open_crm(click.get_current_context())
    result = _run(service(crm).refresh, full=full, clv=clv, progress=True)
    _console().print(result.describe())


@analytics.command("rates")
@click.option("--currency", default=None, help="The reporting currency (ISO 4217).")
@click.option("--rate", "rates", multiple=True, metavar="CODE=RATE", help="Units of the reporting currency per unit.")
@click.option("--clear", is_flag=True, help="Remove every rate (with --rate: replace them).")
def rates_command(currency: str | None, rates: tuple[str, ...], clear: bool) -> None:
    """Show or set the reporting currency and conversion rates."""
    from .common import get_rates, set_rates

    crm = open_crm(click.get_current_context())
    if currency is None and not rates and not clear:
        current = get_rates(crm)
    else:
        given: dict[str, Any] = {} if clear else dict(get_rates(crm).rates)
        for item in rates:
            code, sep, value = item.partition("=")
            if not sep:
                raise click.BadParameter(f"{item!r}: write CODE=RATE, e.g. USD=0.92", param_hint="--rate")
            try:
                given[code] = float(value)
            except ValueError:
                raise click.BadParameter(f"{item!r}: the rate is not a number", param_hint="--rate") from None
        current = _run(set_rates, crm, currency, given)
    click.echo(json.dumps(current.to_dict(), indent=2))


@analytics.command("customer")
@click.argument("customer_id", type=int)
def customer_command(customer_id: int) -> None:
    """What analytics knows about one customer (RFM, CLV: what the conditions read)."""
    from .service import analytics as service

    crm = open_crm(click.get_current_context())
    click.echo(json.dumps(_run(service(crm).customer, customer_id), indent=2, ensure_ascii=False))


@analytics.command("attributes")
@click.option(
    "--copy/--no-copy", default=None, help="Copy the results into customers.attributes on each refresh, or not."
)
def attributes_command(copy: bool | None) -> None:
    """Show or set whether refreshes copy the results into customer attributes (off by default)."""
    from .attributes import copy_enabled, set_copy

    crm = open_crm(click.get_current_context())
    if copy is None:
        click.echo(json.dumps({"copy": copy_enabled(crm)}))
        return
    changed = _run(set_copy, crm, copy)
    click.echo(json.dumps({"copy": copy, "customers_changed": changed}))
