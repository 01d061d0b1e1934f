"""``ecrm serve`` and ``ecrm keys`` (being built)."""

from __future__ import annotations

import click


@click.command("serve")
def serve() -> None:
    """Serve the REST API (being built)."""
    raise click.UsageError("not built yet")


@click.group("keys")
def keys() -> None:
    """API keys (being built)."""
