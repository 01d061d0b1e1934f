"""ecrm_stats: the customer_stats table.

Revision ID: stats_0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from ecrm_core.storage import Amount, UTCDateTime, migration_naming

revision = "stats_0001"
down_revision = None
branch_labels = ("ecrm_stats",)
depends_on = "0001_core"


def upgrade() -> None:
    naming = migration_naming()
    t = naming.table
    schema = naming.schema
    target = f"{schema}.{t('customers')}.id" if schema else f"{t('customers')}.id"
    op.create_table(
        t("customer_stats"),
        sa.Column("workspace_id", sa.String(64), primary_key=True),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey(target, ondelete="CASCADE"), primary_key=True),
        sa.Column("kind", sa.String(64), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("amount_sum", Amount()),
        sa.Column("first_at", UTCDateTime(), nullable=False),
        sa.Column("last_at", UTCDateTime(), nullable=False),
        schema=schema,
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    naming = migration_naming()
    op.drop_table(naming.table("customer_stats"), schema=naming.schema)
