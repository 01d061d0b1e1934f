"""``ecrm segments …`` and ``ecrm lifecycle …``: segments and lifecycle stages from the shell."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .base import CONTEXT_SETTINGS, State, _progress, pass_state

if TYPE_CHECKING:  # pragma: no cover
    from ..services.segments import CancelToken, Segment

__all__ = ["segments_group", "lifecycle_group"]

RULE_HELP = """RULE is rule text, e.g. 'purchase.count(90d) >= 3 and country in ("KR", "JP")'
(see docs/rules.md); @FILE reads it from a file (text, or a JSON tree), - from stdin."""


def _read_rule(rule: str) -> Any:
    if rule == "-":
        text = sys.stdin.read()
    elif rule.startswith("@"):
        path = Path(rule[1:])
        if not path.is_file():
            raise click.BadParameter(f"no such file: {path}", param_hint="RULE")
        text = path.read_text(encoding="utf-8")
    else:
        return rule
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="RULE") from None
    return stripped


def _ids(value: str | None) -> list[int] | None:
    if value is None:
        return None
    text = sys.stdin.read() if value == "-" else (Path(value[1:]).read_text() if value.startswith("@") else value)
    out = []
    for n, part in enumerate(text.replace("\n", ",").split(","), 1):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise click.BadParameter(f"item {n}: {part!r} is not a customer id", param_hint="--customers")
        out.append(int(part))
    return out


def _segment_row(seg: Segment) -> dict[str, Any]:
    return {
        "slug": seg.slug,
        "name": seg.name,
        "kind": seg.kind,
        "members": seg.member_count,
        "rule": seg.text,
        "refreshed_at": seg.refreshed_at.isoformat() if seg.refreshed_at else None,
        "error": seg.error,
        "error_at": seg.error_at.isoformat() if seg.error_at else None,
    }


@contextmanager
def _cancel_on_ctrl_c(token: CancelToken) -> Iterator[None]:
    """Ctrl-C cancels the running query cleanly instead of killing the process."""
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        token.cancel()

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (embedded use): keep the default
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------
# ecrm segments
# ---------------------------------------------------------------------------
def segments_group() -> click.Group:
    group = click.Group(
        "segments",
        context_settings=CONTEXT_SETTINGS,
        help="""Segments: groups of customers defined by a rule (kept current) or uploaded.

\b
Examples:
  ecrm segments preview 'purchase.count(90d) >= 3 and purchase.sum(90d) > 100'
  ecrm segments create vip 'purchase.count(90d) >= 3' --name "VIP customers"
  ecrm segments create beta --static --customers 1,2,3
  ecrm segments refresh                 # all segments and lifecycle stages (cron)
  ecrm segments members vip --format csv > vip.csv
""",
    )
    for command in (seg_list, seg_create, seg_preview, seg_refresh, seg_members, seg_show, seg_delete):
        group.add_command(command)
    return group


@click.command("list", context_settings=CONTEXT_SETTINGS, help="List the segments with their size and rule.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def seg_list(state: State, as_json: bool) -> None:
    segments = state.crm().segments.list()
    if as_json:
        click.echo(json.dumps([_segment_row(s) for s in segments], indent=2, ensure_ascii=False))
        return
    if not segments:
        state.out.print("no segments yet: create one with `ecrm segments create SLUG RULE`")
        return
    from rich.table import Table

    table = Table("slug", "name", "kind", "members", "rule", "refreshed")
    for s in segments:
        table.add_row(
            f"[red]✗[/] {s.slug}" if s.error else s.slug,
            s.name,
            s.kind,
            f"{s.member_count:,}",
            s.text or "",
            s.refreshed_at.strftime("%Y-%m-%d %H:%M") if s.refreshed_at else "never",
        )
    state.out.print(table)
    for s in segments:
        if s.error:
            _print_failure(state, s.slug, s.error, s.error_at)


def _print_failure(state: State, slug: str, error: str, when: Any = None) -> None:
    from rich.markup import escape

    at = f" (since {when:%Y-%m-%d %H:%M})" if when is not None else ""
    state.out.print(
        f"[red]✗ FAILED[/] {escape(slug)}{at}: {escape(error)}\n"
        "  refreshes skip it and keep its last members; fix or delete its rule"
    )


@click.command(
    "create",
    context_settings=CONTEXT_SETTINGS,
    help=f"""Create a segment SLUG from RULE (or an uploaded list with --static).

{RULE_HELP}

A rule segment is filled at once and kept current from then on.

\b
Examples:
  ecrm segments create vip 'purchase.count(90d) >= 3 and purchase.sum(90d) > 100'
  ecrm segments create lapsed-kr 'lifecycle_stage == "lapsed" and country == "KR"'
  ecrm segments create beta --static --customers @beta-ids.txt
""",
)
@click.argument("slug")
@click.argument("rule", required=False)
@click.option("--name", help="A display name (default: the slug).")
@click.option("--description", default="", help="What the segment is for.")
@click.option("--static", is_flag=True, help="An uploaded list instead of a rule.")
@click.option(
    "--customers", "customers", metavar="IDS", help="Static members: 1,2,3 or @FILE (one id per line) or - (stdin)."
)
@click.option("--no-refresh", is_flag=True, help="Do not fill the segment now (the next refresh will).")
@pass_state
def seg_create(
    state: State,
    slug: str,
    rule: str | None,
    name: str | None,
    description: str,
    static: bool,
    customers: str | None,
    no_refresh: bool,
) -> None:
    if static and rule:
        raise click.UsageError("a --static segment takes --customers, not a RULE")
    if not static and not rule:
        raise click.UsageError("give a RULE (or --static for an uploaded list)")
    if customers and not static:
        raise click.UsageError("--customers is for --static segments")
    crm = state.crm()
    seg = crm.segments.create(
        slug,
        None if static else _read_rule(rule or ""),
        name=name,
        description=description,
        static=static,
        customer_ids=_ids(customers) or (),
        refresh=not no_refresh,
    )
    state.out.print(f"created segment [bold]{seg.slug}[/] ({seg.kind}) with {seg.member_count:,} members")


@click.command(
    "preview",
    context_settings=CONTEXT_SETTINGS,
    help=f"""Count who RULE selects, show a sample and the SQL, store nothing.

{RULE_HELP}

Ctrl-C (or --timeout) cancels a long count cleanly.  Warnings say when
the database must read a whole table because no index serves a condition.

\b
Examples:
  ecrm segments preview 'purchase.last() older_than 180d'
  ecrm segments preview @rule.txt --sample 20 --sql
""",
)
@click.argument("rule")
@click.option("--sample", type=click.IntRange(0, 1000), default=10, show_default=True, help="How many members to show.")
@click.option("--sql", "show_sql", is_flag=True, help="Print the SQL statement and its query plan.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (count, sample ids, sql, plan, warnings).")
@pass_state
def seg_preview(state: State, rule: str, sample: int, show_sql: bool, timeout: float | None, as_json: bool) -> None:
    from ..services.segments import Cancelled, CancelToken

    crm = state.crm()
    token = CancelToken(timeout)
    try:
        with _cancel_on_ctrl_c(token):
            p = crm.segments.preview(_read_rule(rule), sample=sample, cancel=token)
    except Cancelled:
        raise click.ClickException("preview cancelled; nothing was stored") from None
    if as_json:
        doc = {
            "rule": p.text,
            "count": p.count,
            "sample": [c.id for c in p.sample],
            "sql": p.sql,
            "plan": list(p.plan),
            "warnings": list(p.warnings),
        }
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    out = state.out
    out.print(f"[bold]{p.count:,}[/] customers match  [dim]{p.text}[/]")
    if p.sample:
        from rich.table import Table

        table = Table("id", "email", "name", "stage", title=f"sample ({len(p.sample)})")
        for c in p.sample:
            table.add_row(str(c.id), c.email or "", c.name or "", c.lifecycle_stage)
        out.print(table)
    for w in p.warnings:
        out.print(f"[yellow]warning:[/] {w}")
    if show_sql:
        from rich.syntax import Syntax

        out.print(Syntax(p.sql, "sql", word_wrap=True))
        out.print("plan:\n  " + "\n  ".join(p.plan))


@click.command(
    "refresh",
    context_settings=CONTEXT_SETTINGS,
    help="""Bring segment membership and lifecycle stages up to date.

Without SLUG: every rule segment (in dependency order) and the lifecycle
stages — run it periodically (e.g. hourly from cron) so that rules with time
windows follow the clock.  With SLUG: that segment and the segments using it.
With --customers: only those customers (incremental).

\b
Examples:
  ecrm segments refresh
  ecrm segments refresh vip
  ecrm segments refresh --customers 17,42
""",
)
@click.argument("slug", required=False)
@click.option("--customers", metavar="IDS", help="Only these customers: 1,2,3 or @FILE or - (stdin).")
@pass_state
def seg_refresh(state: State, slug: str | None, customers: str | None) -> None:
    crm = state.crm()
    with _progress(state) as progress:
        task = progress.add_task("refreshing", total=None, detail="")

        def step(name: str, done: int, total: int) -> None:
            progress.update(task, total=total, completed=done, detail=name)

        report = crm.segments.refresh(slug, customer_ids=_ids(customers), progress=step)
    from rich.table import Table

    if report.changes:
        table = Table("segment", "entered", "exited", "members")
        for ch in report.changes:
            table.add_row(
                ch.segment.slug, f"{len(ch.entered):,}", f"{len(ch.exited):,}", f"{ch.segment.member_count:,}"
            )
        state.out.print(table)
    scope = "all customers" if report.customers is None else f"{report.customers:,} customers"
    state.out.print(
        f"refreshed {scope} in {report.seconds:.2f}s: {report.entered:,} entered, {report.exited:,} exited, "
        f"{report.stage_changes:,} lifecycle stage changes"
        + (f", {len(report.failed)} failed" if report.failed else "")
    )
    for f in report.failed:
        _print_failure(state, f.slug, f.error)
    if report.failed:  # the others were refreshed; cron still sees the failure
        click.get_current_context().exit(1)


@click.command(
    "members",
    context_settings=CONTEXT_SETTINGS,
    help="""List the members of segment SLUG (by customer id).

\b
Examples:
  ecrm segments members vip
  ecrm segments members vip --format ids --limit 100000 > vip-ids.txt
  ecrm segments members vip --after 5000 --limit 1000 --format json
""",
)
@click.argument("slug")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True, help="How many to list.")
@click.option("--after", type=click.IntRange(0), help="Start after this customer id (paging).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "ids"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@pass_state
def seg_members(state: State, slug: str, limit: int, after: int | None, fmt: str) -> None:
    crm = state.crm()
    members = crm.segments.members(slug, limit=limit, after=after)
    ids = [m.customer_id for m in members]
    if fmt == "ids":
        click.echo("\n".join(map(str, ids)))
        return
    customers = {c.id: c for c in crm.customers.list(limit=len(ids), after=ids[0] - 1)} if ids else {}
    rows: list[dict[str, Any]] = [
        {
            "customer_id": m.customer_id,
            "email": getattr(customers.get(m.customer_id), "email", None),
            "name": getattr(customers.get(m.customer_id), "name", None),
            "entered_at": m.entered_at.isoformat(),
        }
        for m in members
    ]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    elif fmt == "csv":
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=["customer_id", "email", "name", "entered_at"])
        writer.writeheader()
        writer.writerows(rows)
    else:
        from rich.table import Table

        table = Table("id", "email", "name", "entered", title=f"{slug}: {len(rows)} shown")
        for r in rows:
            table.add_row(str(r["customer_id"]), r["email"] or "", r["name"] or "", r["entered_at"][:16])
        state.out.print(table)
        if len(rows) == limit:
            state.out.print(f"[dim]more: --after {ids[-1]}[/]")


@click.command("show", context_settings=CONTEXT_SETTINGS, help="Show one segment: rule, size, dates.")
@click.argument("slug")
@pass_state
def seg_show(state: State, slug: str) -> None:
    seg = state.crm().segments.get(slug)
    row = _segment_row(seg)
    for key, value in row.items():
        if key in ("error", "error_at") and value is None:
            continue
        state.out.print(f"[bold]{key:>12}[/]  {value if value is not None else ''}")
    if seg.error:
        _print_failure(state, seg.slug, seg.error, seg.error_at)


@click.command("delete", context_settings=CONTEXT_SETTINGS, help="Delete segment SLUG and its membership.")
@click.argument("slug")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def seg_delete(state: State, slug: str, yes: bool) -> None:
    crm = state.crm()
    seg = crm.segments.get(slug)
    if not yes:
        click.confirm(f"delete segment {seg.slug} ({seg.member_count:,} members)?", abort=True)
    crm.segments.delete(slug)
    state.out.print(f"deleted segment {seg.slug}")


# ---------------------------------------------------------------------------
# ecrm lifecycle
# ---------------------------------------------------------------------------
def lifecycle_group() -> click.Group:
    group = click.Group(
        "lifecycle",
        context_settings=CONTEXT_SETTINGS,
        help="""Lifecycle stages (prospect, new, active, at risk, lapsed, won back): rules and counts.

\b
Examples:
  ecrm lifecycle show
  ecrm lifecycle set 'active=purchase.last() within 60d' 'prospect=purchase.count() == 0'
  ecrm lifecycle set --reset
  ecrm lifecycle refresh
""",
    )
    group.add_command(life_show)
    group.add_command(life_set)
    group.add_command(life_refresh)
    return group


@click.command(
    "show", context_settings=CONTEXT_SETTINGS, help="The stage rules in the order tried, and customers per stage."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def life_show(state: State, as_json: bool) -> None:
    crm = state.crm()
    rules = {r.stage: r for r in crm.lifecycle.rules()}
    counts = crm.lifecycle.counts()
    stages = crm.registry.lifecycle_stages
    if as_json:
        doc = [
            {
                "stage": s,
                "phase": stages[s].phase if s in stages else None,
                "customers": n,
                "rule": rules[s].text if s in rules else None,
                "position": rules[s].position if s in rules else None,
            }
            for s, n in counts.items()
        ]
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    from rich.table import Table

    total = sum(counts.values()) or 1
    table = Table("stage", "phase", "customers", "", "tried", "rule")
    for s, n in counts.items():
        bar = "█" * round(20 * n / total)
        r = rules.get(s)
        table.add_row(
            s,
            stages[s].phase if s in stages else "?",
            f"{n:,}",
            bar,
            str(r.position + 1) if r else "",
            r.text if r else "[dim](set by hand)[/]",
        )
    state.out.print(table)


@click.command(
    "set",
    context_settings=CONTEXT_SETTINGS,
    help="""Replace the stage rules: STAGE=RULE pairs, in the order they are tried.

The first rule that holds gives a customer's stage.  Customers move at
once (a refresh runs).  --reset goes back to the plugins' defaults.

\b
Examples:
  ecrm lifecycle set 'active=purchase.sum(365d) >= 500' 'prospect=purchase.count() == 0'
  ecrm lifecycle set --reset
""",
)
@click.argument("pairs", nargs=-1, metavar="STAGE=RULE...")
@click.option("--reset", is_flag=True, help="Use the default rules again.")
@pass_state
def life_set(state: State, pairs: tuple[str, ...], reset: bool) -> None:
    crm = state.crm()
    if reset == bool(pairs):
        raise click.UsageError("give STAGE=RULE pairs, or --reset")
    if reset:
        crm.lifecycle.reset()
    else:
        items = []
        for p in pairs:
            stage, sep, rule = p.partition("=")
            if not sep or not stage.strip():
                raise click.BadParameter(f"{p!r}: write STAGE=RULE, e.g. 'active=purchase.last() within 90d'")
            items.append((stage.strip(), rule.strip()))
        crm.lifecycle.set_rules(items)
    moved = crm.lifecycle.refresh()
    state.out.print(f"lifecycle rules {'reset' if reset else 'set'}; {moved:,} customers changed stage")


@click.command(
    "refresh", context_settings=CONTEXT_SETTINGS, help="Move every customer to the stage the rules give now."
)
@pass_state
def life_refresh(state: State) -> None:
    moved = state.crm().lifecycle.refresh()
    state.out.print(f"{moved:,} customers changed stage")
