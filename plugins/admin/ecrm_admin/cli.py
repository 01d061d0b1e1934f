"""``ecrm admin``: manage the admin's users and serve the admin.

Works on the ``ecrm`` command line's own CRM (``ecrm --db URL …``), or one
built from ``ECRM_DATABASE_URL`` / ``ECRM_TABLE_PREFIX`` / ``ECRM_WORKSPACE``.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["admin"]


def _crm(ctx: click.Context) -> CRM:
    from ecrm_core.crm import CRM

    from . import plugin
    from .schema import USERS

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
    if USERS not in crm.db.tables:
        crm.register_plugin(plugin)
    status = crm.schema_status()
    if not status["up_to_date"]:
        raise click.ClickException(
            f"the database schema is not up to date (pending: {', '.join(sorted(status['pending']))}); "
            "run `ecrm db upgrade` first"
        )
    return crm


@click.group()
def admin() -> None:
    """The admin web UI: its users, and serving it."""


@admin.group()
def users() -> None:
    """The admin's own users (scrypt-hashed passwords, roles, workspaces)."""


@users.command("create")
@click.argument("username")
@click.option("--role", type=click.Choice(["agent", "marketer", "admin"]), default="agent", show_default=True)
@click.option("--workspace", "workspaces", multiple=True, help="a workspace the user may see (repeat; default: all)")
@click.option("--name", "display_name", default=None, help="the name shown in the admin")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input (else prompted)")
@click.pass_context
def create_user(
    ctx: click.Context,
    username: str,
    role: str,
    workspaces: tuple[str, ...],
    display_name: str | None,
    password_stdin: bool,
) -> None:
    """Create a user who logs in with a password."""
    from ecrm_core.errors import ValidationError

    from .users import Users

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user = Users(_crm(ctx)).create(
            username, password, role=role, workspaces=list(workspaces) or None, display_name=display_name
        )
    except ValidationError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {user.username} ({user.role}; workspaces: {', '.join(user.workspaces)})")


@users.command("list")
@click.pass_context
def list_users(ctx: click.Context) -> None:
    """The enabled users."""
    from .users import Users

    for u in Users(_crm(ctx)).list():
        click.echo(f"{u.username}\t{u.role}\t{','.join(u.workspaces)}")


@users.command("set")
@click.argument("username")
@click.option("--role", type=click.Choice(["agent", "marketer", "admin"]), default=None)
@click.option("--disable", is_flag=True, help="disable the user (their sessions end)")
@click.option("--password-stdin", is_flag=True, help="read a new password from standard input")
@click.pass_context
def set_user(ctx: click.Context, username: str, role: str | None, disable: bool, password_stdin: bool) -> None:
    """Change a user's role, password or disable them; their sessions end."""
    from ecrm_core.errors import EcrmError

    from .users import Users

    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    try:
        u = Users(_crm(ctx)).update(username, role=role, password=password, disabled=True if disable else None)
    except EcrmError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{u.username}: {u.role}" + (" (disabled)" if disable else ""))


@admin.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8100, show_default=True, type=int)
@click.option("--path", default="/admin", show_default=True, help="the path the admin is served under")
@click.option("--insecure-cookies", is_flag=True, help="session cookie without Secure (plain HTTP off localhost)")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, path: str, insecure_cookies: bool) -> None:
    """Serve the admin with uvicorn (behind HTTPS in production)."""
    import uvicorn

    from .app import create_admin

    crm = _crm(ctx)
    app = create_admin(crm, path=path, secure_cookies=not insecure_cookies)
    click.echo(f"ecrm admin on http://{host}:{port}{path or '/'}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
