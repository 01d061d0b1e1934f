"""The plugin's table, defined for the host's table prefix and schema."""

from __future__ import annotations

import sqlalchemy as sa
from ecrm_core.storage import Amount, Naming, UTCDateTime

__all__ = ["TABLE", "define_table"]

#: Short name of the table (``crm.db.tables[TABLE]``); the host's prefix is put in front.
TABLE = "customer_stats"


def define_table(metadata: sa.MetaData, naming: Naming) -> sa.Table:
    """Define ``<prefix>customer_stats`` on ``metadata`` (once; later calls return it).

    One row per (workspace, customer, interaction kind): how many
    interactions, the sum of their amounts (``NULL`` when none carried an
    amount) and the first and last time one occurred.  There is deliberately
    no index besides the primary key: every ingested batch upserts into this
    table, so each index costs on every ingest, while the foreign key's
    cascade (customers are rarely deleted) may scan.  The migration
    ``stats_0001`` creates exactly this table; a test checks they agree.
    """
    name = naming.table(TABLE)
    key = f"{naming.schema}.{name}" if naming.schema else name
    existing = metadata.tables.get(key)
    if existing is not None:
        return existing
    customers = naming.table("customers")
    target = f"{naming.schema}.{customers}.id" if naming.schema else f"{customers}.id"
    table = sa.Table(
        name,
        metadata,
        sa.Column("workspace_id", sa.String(64), primary_key=True),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey(target, ondelete="CASCADE"), primary_key=True),
        sa.Column("kind", sa.String(64), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("amount_sum", Amount()),
        sa.Column("first_at", UTCDateTime(), nullable=False),
        sa.Column("last_at", UTCDateTime(), nullable=False),
        schema=naming.schema,
        sqlite_with_rowid=False,  # the primary key is the table: one B-tree per upsert, not two
    )
    return table
