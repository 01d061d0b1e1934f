"""ecrm-admin: the admin web UI of ecrm (Litestar, server-rendered Jinja2, htmx).

::

    from ecrm_admin import create_admin
    app = create_admin(crm, path="/admin")     # an ASGI app; mount it in the host

Public names: :func:`create_admin`, :class:`AdminConfig`, :class:`AdminRequest`,
:class:`AdminUser`, :class:`Users`, :class:`Html`, :class:`Redirect`,
:class:`Forbidden`, :func:`table`.  Importing this package imports no web
framework.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "create_admin": "ecrm_admin.app",
    "AdminRequest": "ecrm_admin.app",
    "Html": "ecrm_admin.app",
    "Redirect": "ecrm_admin.app",
    "Forbidden": "ecrm_admin.app",
    "AdminConfig": "ecrm_admin.config",
    "AdminUser": "ecrm_admin.users",
    "Users": "ecrm_admin.users",
    "table": "ecrm_admin.render",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ecrm_admin' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
