"""The plugin's own hook: product availability from the host's inventory (ERP, stock service).

An integration implements it like any ecrm hook (``@hookimpl``)::

    class Stock:
        @hookimpl
        def personalize_unavailable(self, crm, skus):
            return {s for s in skus if stock_level(s) == 0}

Every implementation is called once per decision with the candidate
products (at most a few hundred); the union of their answers is left out.
One that raises is recorded in ``crm.plugins.failures`` and ignored (the
catalogue's own ``available`` flag still applies).  Keep it fast: it runs
inside every decision (cache stock levels on your side).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("ecrm")


@hookspec
def personalize_unavailable(crm: Any, skus: Sequence[str]) -> Collection[str] | None:
    """The products among ``skus`` that must not be recommended now (out of stock, withdrawn).

    :param crm: the CRM of the decision (its workspace).
    :param skus: candidate product ids.
    :return: the unavailable ones (or ``None``).
    """
