"""``ecrm serve`` and ``ecrm keys``: run the REST API and manage its keys
(``ecrm ingest`` is in :mod:`ecrm_api.ingest_cli`).

Both work on the ``ecrm`` command line's own CRM, built from its global
options (``ecrm --db URL --prefix P --workspace W``, or ``ECRM_DATABASE_URL``,
``ECRM_TABLE_PREFIX``, ``ECRM_WORKSPACE``).  Used outside ``ecrm`` (a host's
own click group), they build a CRM from those environment variables.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM

    from .keys import ApiKey, Keys

__all__ = ["serve", "keys", "parse_duration", "parse_rate"]

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhdw])\s*$")
_RATE_UNITS = ("second", "minute", "hour", "day")


def parse_duration(text: str, *, option: str) -> timedelta:
    """``"90d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"2w"`` -> a :class:`timedelta`."""
    m = _DURATION.match(text)
    if m is None:
        raise click.BadParameter(
            f"{text!r} is not a duration; write a number and a unit, e.g. 90d, 12h, 30m, 45s or 2w", param_hint=option
        )
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds > 100 * 365 * 86400:
        raise click.BadParameter(f"{text!r} is more than 100 years; give a shorter duration", param_hint=option)
    return timedelta(seconds=seconds)


def parse_rate(text: str) -> tuple[str, int] | None:
    """``"200/second"`` (or ``200/s``, ``3000/minute``, ...) -> ``("second", 200)``; ``"off"`` -> ``None``."""
    if text.strip().lower() in ("off", "none", "0"):
        return None
    count, sep, unit = text.strip().partition("/")
    unit = unit.strip().lower()
    unit = {"s": "second", "sec": "second", "m": "minute", "min": "minute", "h": "hour", "d": "day"}.get(unit, unit)
    unit = unit[:-1] if unit.endswith("s") and unit[:-1] in _RATE_UNITS else unit
    if not sep or not count.strip().isdigit() or int(count) < 1 or unit not in _RATE_UNITS:
        raise click.BadParameter(
            f"{text!r} is not a rate; write COUNT/UNIT (unit: second, minute, hour or day), e.g. 200/second, or 'off'",
            param_hint="--rate-limit",
        )
    return unit, int(count)


# ---------------------------------------------------------------------------
# the CRM of the invocation
# ---------------------------------------------------------------------------


def _crm(ctx: click.Context) -> CRM:
    """The ``ecrm`` CLI's CRM (or one from the environment), with this plugin registered."""
    from ecrm_core.crm import CRM

    from . import plugin
    from .schema import TABLE

    obj = ctx.find_root().obj
    crm: Any = obj if isinstance(obj, CRM) else getattr(obj, "crm", None)
    if callable(crm) and not isinstance(crm, CRM):
        crm = crm()
    if not isinstance(crm, CRM):
        crm = CRM(
            os.environ.get("ECRM_DATABASE_URL") or "sqlite:///ecrm.db",
            table_prefix=os.environ.get("ECRM_TABLE_PREFIX") or "ecrm_",
            workspace=os.environ.get("ECRM_WORKSPACE") or "default",
        )
        ctx.call_on_close(crm.close)
    if TABLE not in crm.db.tables:
        crm.register_plugin(plugin)
    return crm


def _where(ctx: click.Context, crm: CRM) -> str:
    where = getattr(ctx.find_root().obj, "where", None)
    if callable(where):
        return str(where())
    return f"{crm.db.engine.url.render_as_string(hide_password=True)} (workspace {crm.workspace!r})"


def _require_schema(ctx: click.Context, crm: CRM) -> None:
    """Stop with one clear line when migrations are pending (the API table included)."""
    status = crm.schema_status()
    if not status["up_to_date"]:
        pending = ", ".join(sorted(status["pending"])) or "?"
        raise click.ClickException(
            f"the database schema is not up to date (pending: {pending}) in {_where(ctx, crm)}; "
            "run `ecrm db upgrade` first"
        )


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


# ---------------------------------------------------------------------------
# ecrm serve
# ---------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say they are TCP
    # (with proto 0 every response whose body is written apart from its head waits ~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
            "choose another --port (0 picks a free one) or stop what uses it"
        ) from None
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


@click.command(
    "serve",
    context_settings=CONTEXT_SETTINGS,
    help="""Serve the REST API (Litestar on uvicorn) for the database of `ecrm --db`.

Refuses to start while migrations are pending (run `ecrm db upgrade`).
Clients authenticate with an API key: create one with `ecrm keys create`.
Pagination cursors are signed with ECRM_API_SECRET (16+ random bytes); without
it a random secret is used and cursors do not survive a restart.

\b
Examples:
  ecrm serve                                   # http://127.0.0.1:8000, docs at /docs
  ecrm --db sqlite:///shop.db serve --port 0   # a free port, printed
  ecrm serve --host 0.0.0.0 --rate-limit 1000/minute
  ecrm serve --path /crm --no-docs             # routes under /crm, no OpenAPI page
  ECRM_API_SECRET=$(openssl rand -hex 32) ecrm serve
  ecrm serve --ingest-processor worker         # tracking inbox processed by `ecrm worker`

One process: SQLite allows one writer at a time, and rate limits and the key
cache live in the process.  For more throughput run several `ecrm serve`
behind a proxy on PostgreSQL.
""",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on, e.g. 0.0.0.0 for all.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="TCP port; 0 picks a free one (printed).",
)
@click.option("--path", "route_path", default="", help="Prefix of every route, e.g. --path /crm (default: none).")
@click.option(
    "--rate-limit",
    default="200/second",
    show_default=True,
    help="Requests per API key, COUNT/UNIT (second, minute, hour, day), or 'off'.",
)
@click.option("--no-docs", is_flag=True, help="Do not serve the OpenAPI document and the docs page.")
@click.option(
    "--key-cache",
    type=click.FloatRange(0, 3600),
    default=2.0,
    show_default=True,
    help="Seconds an authenticated key is trusted before it is read again "
    "(a key revoked by `ecrm keys revoke` stops working within this time).",
)
@click.option(
    "--live-segments",
    type=click.Choice(["background", "commit", "off"]),
    default="background",
    show_default=True,
    help="Keep segments and lifecycle stages current: in a background thread a fraction of a second "
    "after each write (requests do not wait), at commit in the request, or not at all (run "
    "`ecrm segments refresh` from cron).",
)
@click.option(
    "--ingest-processor",
    type=click.Choice(["thread", "worker"]),
    default="thread",
    show_default=True,
    help="Where the tracking inbox is processed: a thread of this server, or only by `ecrm worker` "
    "(job ingest.process; run at least one).",
)
@click.option(
    "--tracking-sync",
    is_flag=True,
    help="The tracking routes answer once the messages are stored, not once they are in the inbox.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
    help="uvicorn's log level (info logs every request).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    route_path: str,
    rate_limit: str,
    no_docs: bool,
    key_cache: float,
    live_segments: str,
    ingest_processor: str,
    tracking_sync: bool,
    log_level: str,
) -> None:
    from ecrm_core.errors import ValidationError

    rate = parse_rate(rate_limit)
    crm = _crm(ctx)
    crm.segments.live = {"background": "background", "commit": True, "off": False}[live_segments]
    _require_schema(ctx, crm)
    from .app import create_app
    from .config import ApiConfig
    from .keys import Keys

    try:
        config = ApiConfig(
            path=route_path,
            rate_limit=rate,
            docs=not no_docs,
            key_cache_seconds=key_cache,  # type: ignore[arg-type]
            ingest_processor=ingest_processor,
            tracking_sync=tracking_sync,
        )
    except ValidationError as exc:
        option = {"path": "--path", "secret": "ECRM_API_SECRET"}.get(exc.field, exc.field)
        raise click.BadParameter(f"{exc.problem}; {exc.fix}", param_hint=option) from None
    app = create_app(crm, config)

    import uvicorn

    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    base = _url(host, bound_port) + route_path
    click.echo(f"ecrm API for {_where(ctx, crm)}")
    click.echo(f"listening on {base}  (Ctrl-C to stop)")
    if not no_docs:
        click.echo(f"docs: {base}/docs  (OpenAPI: {base}/docs/openapi.json)")
    limit = "off" if rate is None else f"{rate[1]}/{rate[0]} per key"
    click.echo(f"rate limit: {limit}")
    if not os.environ.get("ECRM_API_SECRET"):
        _echo_err(
            "warning: ECRM_API_SECRET is not set: pagination cursors are signed with a random secret "
            "and will not survive a restart"
        )
    if not Keys(crm).list():
        _echo_err(
            f"hint: workspace {crm.workspace!r} has no API key yet; create one with "
            "`ecrm keys create NAME --scope read --scope write`"
        )
    sys.stdout.flush()
    server = uvicorn.Server(
        uvicorn.Config(app, log_level=log_level, lifespan="on", access_log=log_level in ("info", "debug"))
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal
    # again: end with "stopped" and exit code 0 instead of a traceback.
    import signal
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        sock.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    click.echo("ecrm API stopped")


class _Stopped(Exception):
    pass


def _stopped(signum: int, frame: Any) -> None:
    raise _Stopped(signum)


# ---------------------------------------------------------------------------
# ecrm keys
# ---------------------------------------------------------------------------


@click.group(
    "keys",
    context_settings=CONTEXT_SETTINGS,
    help="""API keys: create, list, revoke and rotate them.

A key belongs to one workspace and has scopes: read (GET), write (create,
change, delete), ingest (tracking; a Segment/RudderStack write key) and admin
(everything).  Only a hash is stored: the token is printed once, at creation.

\b
Examples:
  ecrm keys create shop-backend --scope read --scope write
  ecrm keys create website --scope ingest --expires 90d
  ecrm --workspace shop_kr keys list --all
  ecrm keys rotate 3f2a9c0d1e4b5a69 --grace 1h
  ecrm keys revoke 3f2a9c0d1e4b5a69
""",
)
def keys() -> None:
    pass


def _keys(ctx: click.Context) -> Keys:
    from .keys import Keys

    crm = _crm(ctx)
    _require_schema(ctx, crm)
    return Keys(crm)


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else ""


def _short(value: Any) -> str:
    """A time for the table: UTC to the minute."""
    from datetime import UTC

    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value is not None else ""


def _key_doc(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "name": key.name,
        "workspace": key.workspace,
        "scopes": sorted(key.scopes),
        "created_at": _when(key.created_at),
        "expires_at": _when(key.expires_at) or None,
        "revoked_at": _when(key.revoked_at) or None,
        "rotated_from": key.rotated_from,
    }


def _get(k: Keys, key_id: str) -> ApiKey:
    from ecrm_core.errors import NotFound

    try:
        return k.get(key_id)
    except NotFound:
        raise click.ClickException(f"no API key {key_id!r}; `ecrm keys list --all` lists the key ids") from None


def _print_token(token: str, key: ApiKey, *, verb: str) -> None:
    from rich.console import Console

    out = Console(highlight=False, soft_wrap=True)
    out.print(
        f"{verb} key [bold]{key.key_id}[/] ({key.name!r}) in workspace {key.workspace!r}, "
        f"scopes {', '.join(sorted(key.scopes))}" + (f", expires {_when(key.expires_at)}" if key.expires_at else "")
    )
    click.echo(token)
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        "[yellow]Copy this token now: it cannot be shown again (only its hash is stored).[/]"
    )


@keys.command(
    "create",
    context_settings=CONTEXT_SETTINGS,
    help="""Create an API key named NAME and print its token (once).

\b
Examples:
  ecrm keys create shop-backend --scope read --scope write
  ecrm keys create website --scope ingest --expires 90d
  ecrm keys create ops --scope admin --workspace shop_kr --json | jq -r .token
""",
)
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    metavar="SCOPE",
    help="read, write, ingest or admin; repeat it or separate with commas (default: read).",
)
@click.option("--workspace", default=None, help="Workspace of the key (default: the one of `ecrm --workspace`).")
@click.option("--expires", default=None, metavar="DURATION", help="Expire after e.g. 90d, 12h, 2w (default: never).")
@click.option("--json", "as_json", is_flag=True, help="Print the key and its token as one JSON object.")
@click.pass_context
def create_command(
    ctx: click.Context, name: str, scopes: tuple[str, ...], workspace: str | None, expires: str | None, as_json: bool
) -> None:
    from ecrm_core.errors import ValidationError

    from .keys import SCOPES

    if not name.strip():
        raise click.BadParameter("the name is empty; give the key a name that says who uses it", param_hint="NAME")
    wanted = [s.strip() for item in (scopes or ("read",)) for s in item.split(",") if s.strip()]
    for s in wanted:
        if s not in SCOPES:
            raise click.BadParameter(f"unknown scope {s!r}; use {', '.join(SCOPES)}", param_hint="--scope")
    lifetime = parse_duration(expires, option="--expires") if expires else None
    k = _keys(ctx)
    try:
        new = k.create(
            name,
            scopes=wanted,
            workspace=workspace,
            expires_at=(k.crm.now() + lifetime) if lifetime is not None else None,
        )
    except ValidationError as exc:
        option = {"name": "NAME", "workspace": "--workspace", "scopes": "--scope"}.get(exc.field, exc.field)
        raise click.BadParameter(f"{exc.problem} (got {exc.value!r}); {exc.fix}", param_hint=option) from None
    if as_json:
        click.echo(json.dumps({**_key_doc(new.key), "token": new.token}))
        return
    _print_token(new.token, new.key, verb="created")


@keys.command(
    "list",
    context_settings=CONTEXT_SETTINGS,
    help="""List the API keys of the workspace (never their secrets).

\b
Examples:
  ecrm keys list
  ecrm --workspace shop_kr keys list --all
  ecrm keys list --json | jq -r '.[].key_id'
""",
)
@click.option("--all", "show_all", is_flag=True, help="Include revoked keys.")
@click.option("--workspace", default=None, help="Workspace to list (default: the one of `ecrm --workspace`).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@click.pass_context
def list_command(ctx: click.Context, show_all: bool, workspace: str | None, as_json: bool) -> None:
    from ecrm_core.errors import ValidationError
    from rich import box
    from rich.console import Console
    from rich.table import Table

    k = _keys(ctx)
    try:
        found = k.list(workspace=workspace, include_revoked=show_all)
    except ValidationError as exc:
        raise click.BadParameter(f"{exc.problem} (got {exc.value!r}); {exc.fix}", param_hint="--workspace") from None
    if as_json:
        click.echo(json.dumps([_key_doc(key) for key in found]))
        return
    ws = workspace or k.crm.workspace
    out = Console(highlight=False)
    if not found:
        out.print(
            f"no {'' if show_all else 'active '}API keys in workspace {ws!r}; "
            "create one with `ecrm keys create NAME --scope read`"
        )
        return
    now = k.crm.now()
    table = Table(
        title=f"API keys of workspace {ws!r}",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        pad_edge=False,
        show_edge=False,
    )
    table.add_column("key_id", no_wrap=True, min_width=16)
    widest = {"name": max(len(key.name) for key in found), "workspace": max(len(key.workspace) for key in found)}
    for column in ("name", "workspace", "scopes", "created", "expires", "revoked"):
        table.add_column(column, min_width=min(24, max(len(column), widest.get(column, 10))))
    for key in found:
        revoked = _short(key.revoked_at)
        if key.revoked_at is not None and key.revoked_at > now:
            revoked = f"{revoked} (grace)"
        expires = _short(key.expires_at)
        if key.expires_at is not None and key.expires_at <= now:
            expires = f"[red]{expires} (expired)[/]"
        table.add_row(
            key.key_id,
            key.name,
            key.workspace,
            ", ".join(sorted(key.scopes)),
            _short(key.created_at),
            expires,
            revoked,
            style="dim" if not key.active(now) else None,
        )
    out.print(table)


@keys.command(
    "revoke",
    context_settings=CONTEXT_SETTINGS,
    help="""Revoke the API key KEY_ID at once.

A running `ecrm serve` stops accepting it within its --key-cache time (2 s).

\b
Examples:
  ecrm keys revoke 3f2a9c0d1e4b5a69
""",
)
@click.argument("key_id")
@click.pass_context
def revoke_command(ctx: click.Context, key_id: str) -> None:
    k = _keys(ctx)
    key = _get(k, key_id)
    if key.revoked_at is not None and key.revoked_at <= k.crm.now():
        click.echo(f"key {key_id} ({key.name!r}) was already revoked at {_when(key.revoked_at)}")
        return
    done = k.revoke(key_id)
    click.echo(f"revoked key {key_id} ({done.name!r}) in workspace {done.workspace!r}")


@keys.command(
    "rotate",
    context_settings=CONTEXT_SETTINGS,
    help="""Replace the API key KEY_ID by a new one (same name, workspace, scopes).

The old key keeps working for the --grace period so clients can switch
over, then it is revoked.  The new token is printed once.

\b
Examples:
  ecrm keys rotate 3f2a9c0d1e4b5a69              # the old key stops at once
  ecrm keys rotate 3f2a9c0d1e4b5a69 --grace 1h
  ecrm keys rotate 3f2a9c0d1e4b5a69 --json | jq -r .token
""",
)
@click.argument("key_id")
@click.option("--grace", default="0s", show_default=True, metavar="DURATION", help="How long the old key still works.")
@click.option("--json", "as_json", is_flag=True, help="Print the new key and its token as one JSON object.")
@click.pass_context
def rotate_command(ctx: click.Context, key_id: str, grace: str, as_json: bool) -> None:
    from ecrm_core.errors import ValidationError

    period = parse_duration(grace, option="--grace")
    k = _keys(ctx)
    _get(k, key_id)
    try:
        new = k.rotate(key_id, grace=period)
    except ValidationError as exc:
        if exc.field != "key_id":
            raise
        raise click.ClickException(f"key {key_id} is revoked; create a new one with `ecrm keys create`") from None
    if as_json:
        click.echo(json.dumps({**_key_doc(new.key), "token": new.token}))
        return
    _print_token(new.token, new.key, verb="rotated: new")
    old_end = "now" if not period else f"at {_when(k.crm.now() + period)}"
    click.echo(f"the old key {key_id} stops working {old_end}")
