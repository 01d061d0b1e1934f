"""The ``ecrm demo`` stage of the admin: an admin user for the demo shop and how to open it."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.registry import DemoStage

__all__ = ["demo_stages", "run_admin_stage"]

USER = "demo-admin"


def run_admin_stage(crm: Any, progress: Any) -> Any:
    """Create (or reset) the user ``demo-admin`` with a fresh random password and say how to log in."""
    from rich.table import Table

    from .users import Users

    users = Users(crm)
    password = secrets.token_urlsafe(12)
    try:
        users.get(USER)
    except Exception:
        users.create(USER, password, role="admin", display_name="Demo admin")
    else:
        users.update(USER, password=password, role="admin", disabled=False)
    where = crm.db.engine.url.render_as_string(hide_password=True)
    table = Table(title="The admin web UI", show_header=False)
    table.add_row("serve it", f"ecrm --db {where} admin serve   (then http://127.0.0.1:8100/admin)")
    table.add_row("user", USER)
    table.add_row("password", f"{password}   (new on every `ecrm demo`)")
    table.add_row("pages", ", ".join(sorted(p.path for p in crm.registry.admin_pages.values() if p.nav)) or "-")
    return table


def demo_stages() -> list[DemoStage]:
    from ecrm_core.registry import DemoStage

    return [
        DemoStage(name="admin.login", title="The admin web UI: a user to log in with", run=run_admin_stage, order=900)
    ]
