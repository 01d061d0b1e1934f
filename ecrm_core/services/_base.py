"""What every service of the facade shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:  # pragma: no cover
    from ..crm import CRM
    from ..storage import Database


class Service:
    """A part of the facade (``crm.customers``…), bound to one CRM view."""

    def __init__(self, crm: CRM) -> None:
        self.crm = crm

    @property
    def db(self) -> Database:
        return self.crm.db

    @property
    def workspace(self) -> str:
        return self.crm.workspace

    def t(self, name: str) -> sa.Table:
        return self.db.tables[name]

    def ready(self) -> None:
        self.db.check_schema()
