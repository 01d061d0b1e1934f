"""The plugins page (loaded, failed, versions, hook API, recent failures) and the users page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ecrm_core.errors import ValidationError

from ..app import AdminRequest, Redirect, Route

if TYPE_CHECKING:  # pragma: no cover
    from ..app import AdminApp


def plugins(request: AdminRequest) -> Any:
    from ecrm_core.hookspecs import HOOK_API_VERSION

    crm = request.crm
    infos = sorted(crm.plugins.info.values(), key=lambda i: (i.status != "failed", i.source, i.name))
    failures = list(reversed(crm.plugins.failures))[:50]
    reg = crm.registry
    pages = sorted(reg.admin_pages.values(), key=lambda p: p.path)
    widgets = sorted(reg.admin_widgets.values(), key=lambda w: w.name)
    return request.admin.page(
        request,
        "plugins.html",
        title="Plugins",
        infos=infos,
        failures=failures,
        hook_api=HOOK_API_VERSION,
        pages=pages,
        widgets=widgets,
    )


def users(request: AdminRequest) -> Any:
    error = None
    store = request.admin.users
    if request.method == "POST":
        f = request.form
        try:
            spaces = [s.strip() for s in (f.get("workspaces") or "*").split(",") if s.strip()]
            if f.get("action") == "create":
                store.create(
                    f.get("username", ""),
                    f.get("password", ""),
                    role=f.get("role", "agent"),
                    workspaces=spaces,
                    display_name=f.get("display_name") or None,
                )
            else:
                store.update(
                    f.get("username", ""),
                    role=f.get("role") or None,
                    disabled=True if f.get("action") == "disable" else None,
                )
            return Redirect(request.url("/users"))
        except ValidationError as exc:
            error = str(exc)
    page = request.admin.page(request, "users.html", title="Users", items=store.list(), error=error)
    if error:
        page.status = 400
    return page


def routes(admin: AdminApp) -> list[Route]:
    return [
        Route(path="/plugins", methods=("GET",), view=plugins, role="admin", name="Plugins"),
        Route(path="/users", methods=("GET", "POST"), view=users, role="admin", name="Users"),
    ]
