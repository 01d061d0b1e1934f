"""Customers: create, upsert, find, update, merge, consent, bulk upsert.

One service, :class:`Customers` (``crm.customers``), built in three layers so
that each module keeps to one responsibility: :mod:`.reads` (lookups, search,
identity resolution), :mod:`.writes` (create, update, consent, upsert, bulk
upsert) and :mod:`.service` (merge and delete).
"""

from ._common import SEARCH_SORTS, CustomerPage, UpsertResult
from .service import Customers

__all__ = ["Customers", "CustomerPage", "SEARCH_SORTS", "UpsertResult"]
