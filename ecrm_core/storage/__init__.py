"""Storage: table definitions, the database handle and migration helpers."""

from __future__ import annotations

from .database import DEFAULT_URL, Database, configure_sqlite
from .schema import CORE_TABLES, Amount, Naming, UTCDateTime, build_metadata

__all__ = [
    "DEFAULT_URL",
    "CORE_TABLES",
    "Amount",
    "Database",
    "Naming",
    "UTCDateTime",
    "build_metadata",
    "configure_sqlite",
    "migration_naming",
]


def migration_naming() -> Naming:
    """The :class:`Naming` of the database being migrated.

    Call it inside an Alembic revision (core or plugin) to get table names
    with the host's prefix: ``t = migration_naming().table``.
    """
    from alembic import context

    return context.config.attributes["naming"]  # type: ignore[no-any-return]
