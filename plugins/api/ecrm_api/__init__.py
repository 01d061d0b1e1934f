"""ecrm-api: the open REST API of ecrm, as a Litestar app.

::

    from ecrm_core import CRM
    from ecrm_api import create_app

    app = create_app(CRM("sqlite:///shop-crm.db"))

See ``docs/plugins/api.md``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import ApiConfig
from .keys import SCOPES, ApiKey, Keys, NewKey


def create_app(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See :func:`ecrm_api.app.create_app` (imported lazily: Litestar loads only when an app is built)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["ApiConfig", "ApiKey", "Keys", "NewKey", "SCOPES", "create_app", "__version__"]
