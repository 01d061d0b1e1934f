"""Attribute indexes: an index on one key of ``customers.attributes``.

Rules compile ``attributes.country == "KR"`` (or a declared attribute
``country``) to an expression on the JSON column; without an index the
database reads every customer's attributes to count the segment (about a
second per million customers on SQLite).  An attribute index is built on the
very expression the rule compiler writes (:func:`ecrm_core.rules.sql.attribute_expression`),
after the workspace, so counts, previews and refreshes of rules on that
attribute read only the matching customers.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from ...errors import ValidationError
from ...rules.sql import attribute_expression

if TYPE_CHECKING:  # pragma: no cover
    from ...storage import Database

__all__ = ["AttributeIndexes"]

_SQLITE_KEY = re.compile(r"""json_extract\(attributes, '\$\."([^"]+)"'\)""")
_PG_KEY = re.compile(r"attributes ->> '([^']+)'")


class AttributeIndexes:
    """``crm.customers.indexes``: create, list and drop attribute indexes."""

    def __init__(self, db: Database, table: str) -> None:
        self.db, self.table = db, table

    def _name(self, key: str) -> str:
        tail = key if re.fullmatch(r"[A-Za-z0-9_]{1,40}", key) else hashlib.sha1(key.encode()).hexdigest()[:12]
        return f"ix_{self.table}_attr_{tail}"

    def _expression(self, key: str) -> str:
        try:
            return attribute_expression(key, self.db.dialect)
        except ValueError as exc:
            raise ValidationError("attribute", key, "cannot be indexed", str(exc)) from None

    def create(self, key: str) -> str:
        """Index attribute ``key`` (idempotent); return the index's name.

        The build reads every customer once (seconds per million on SQLite)
        and holds the write lock meanwhile (on PostgreSQL a plain ``CREATE
        INDEX``: writes to the customers wait for it).
        """
        expr = self._expression(key)
        name = self._name(key)
        with self.db.write() as conn:
            conn.exec_driver_sql(f'CREATE INDEX IF NOT EXISTS "{name}" ON "{self.table}" (workspace_id, {expr})')
        return name

    def drop(self, key: str) -> bool:
        """Drop the index of attribute ``key``; ``False`` if there was none."""
        self._expression(key)
        name = self._name(key)
        if key not in self.list():
            return False
        with self.db.write() as conn:
            conn.exec_driver_sql(f'DROP INDEX IF EXISTS "{name}"')
        return True

    def list(self) -> list[str]:
        """The indexed attribute keys, sorted."""
        with self.db.read() as conn:
            if self.db.dialect == "sqlite":
                rows = conn.exec_driver_sql(
                    "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
                    (self.table,),
                ).all()
                pattern = _SQLITE_KEY
            else:
                rows = conn.exec_driver_sql(
                    "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND schemaname = current_schema()",
                    (self.table,),
                ).all()
                pattern = _PG_KEY
        prefix = f"ix_{self.table}_attr_"
        found = set()
        for (sql,) in rows:
            if prefix in sql:
                m = pattern.search(sql)
                if m:
                    found.add(m.group(1))
        return sorted(found)
