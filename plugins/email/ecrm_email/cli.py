"""``ecrm email …``: templates, previews and the inbound (bounce) mail server."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
from ecrm_core.cli import CONTEXT_SETTINGS, State, pass_state

__all__ = ["email_group"]


def _read(value: str | None, what: str) -> str | None:
    """TEXT, @FILE or - (stdin)."""
    if value is None:
        return None
    if value == "-":
        return sys.stdin.read()
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise click.BadParameter(f"no such file: {path}", param_hint=what)
        return path.read_text(encoding="utf-8")
    return value


def _templates(state: State) -> Any:
    from .templates import Templates

    crm = state.crm()
    conf = crm.channels.config("email")
    return Templates(crm, directory=conf.get("templates_dir"))


@click.group(
    "email",
    context_settings=CONTEXT_SETTINGS,
    help="""The e-mail channel: templates, previews, the inbound bounce server.

\b
  ecrm email templates save welcome --subject "Welcome, {{ customer.first_name }}" --html @welcome.html
  ecrm email templates list
  ecrm email preview welcome --html-out /tmp/welcome.html
  ecrm --config ecrm.toml email inbound --port 2525     receive DSN bounces and complaints

Sending is done by the delivery worker: `ecrm messages work` (see `ecrm messages --help`).
""",
)
def email_group() -> None:
    pass


@email_group.group("templates", context_settings=CONTEXT_SETTINGS)
def templates_group() -> None:
    """Templates stored in the database (per workspace)."""


@templates_group.command("list", context_settings=CONTEXT_SETTINGS)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def templates_list(state: State, as_json: bool) -> None:
    """List stored templates."""
    items = _templates(state).list()
    if as_json:
        click.echo(json.dumps(items, default=str, indent=2))
        return
    from rich.table import Table

    table = Table(title="e-mail templates")
    for col in ("name", "subject", "parts", "updated"):
        table.add_column(col)
    for t in items:
        parts = "+".join(p for p in ("html", "text") if t.get(p))
        table.add_row(t["name"], t.get("subject") or "", parts, str(t.get("updated_at") or ""))
    state.out.print(table)


@templates_group.command("save", context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@click.option("--subject", required=True, help="The subject template, e.g. 'Hello {{ customer.first_name }}'.")
@click.option("--html", "html", help="The HTML part: text, @FILE or - for stdin.")
@click.option("--text", "text", help="The text part: text, @FILE or - (derived from the HTML when omitted).")
@click.option("--description", default="", help="What the template is for.")
@pass_state
def templates_save(state: State, name: str, subject: str, html: str | None, text: str | None, description: str) -> None:
    """Create or replace template NAME (it is checked first: a syntax error names the line)."""
    _templates(state).save(
        name, subject=subject, html=_read(html, "--html"), text=_read(text, "--text"), description=description
    )
    state.out.print(f"template {name!r} saved")


@templates_group.command("delete", context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@pass_state
def templates_delete(state: State, name: str) -> None:
    """Delete template NAME."""
    _templates(state).delete(name)
    state.out.print(f"template {name!r} deleted")


@email_group.command("preview", context_settings=CONTEXT_SETTINGS)
@click.argument("template")
@click.option("--sample", help='JSON merged into the sample data, e.g. \'{"customer": {"first_name": "Bo"}}\'.')
@click.option("--html-out", type=click.Path(dir_okay=False, path_type=Path), help="Write the HTML part to a file.")
@pass_state
def preview(state: State, template: str, sample: str | None, html_out: Path | None) -> None:
    """Render TEMPLATE with sample data; print the subject and the text part."""
    data = None
    if sample:
        try:
            data = json.loads(sample)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--sample") from None
        if not isinstance(data, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--sample")
    rendered = _templates(state).preview(template, data)
    state.out.print(f"[bold]Subject:[/] {rendered.subject}\n")
    click.echo(rendered.text)
    if html_out is not None and rendered.html is not None:
        html_out.write_text(rendered.html, encoding="utf-8")
        state.err.print(f"HTML written to {html_out}")


@email_group.command("inbound", context_settings=CONTEXT_SETTINGS)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=2525, show_default=True)
@pass_state
def inbound(state: State, host: str, port: int) -> None:
    """Run an SMTP server that receives bounces (DSNs) and complaints (ARF) and applies them.

    Point the bounce address (channels.email.bounce_address, the MAIL FROM of
    every message) at it; a bounced address is suppressed, a complaint stops
    marketing mail.
    """
    from .inbound import serve_inbound

    controller = serve_inbound(state.crm(), host, port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    state.err.print(f"receiving bounces on {controller.hostname}:{controller.port}; Ctrl-C stops")
    try:
        stop.wait()
    finally:
        controller.stop()
