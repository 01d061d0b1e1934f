"""The admin's own pages, each module one area; :func:`builtin_routes` lists them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..app import AdminApp, Route

#: (section, order, title, path, lowest role) of the built-in navigation entries.
BUILTIN_NAV = (
    ("Work", 10, "Dashboard", "/", "agent"),
    ("Work", 20, "Customers", "/customers", "agent"),
    ("Marketing", 10, "Segments", "/segments", "agent"),
    ("Marketing", 20, "Offers", "/offers", "agent"),
    ("Marketing", 30, "E-mail templates", "/templates", "marketer"),
    ("Messages", 10, "Messages", "/messages", "agent"),
    ("Messages", 20, "Dead letters", "/messages?status=dead", "agent"),
    ("System", 10, "Plugins", "/plugins", "admin"),
    ("System", 20, "Users", "/users", "admin"),
)


def builtin_routes(admin: AdminApp) -> list[Route]:
    from . import auth, customers, dashboard, marketing, messages, system

    out: list[Route] = []
    for module in (auth, dashboard, customers, marketing, messages, system):
        out.extend(module.routes(admin))
    return out
