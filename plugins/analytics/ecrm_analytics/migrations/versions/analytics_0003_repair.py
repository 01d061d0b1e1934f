"""ecrm_analytics: bring databases migrated by an early ``analytics_0001`` to the current shape.

An early version of ``analytics_0001`` (on main for a few hours) created
``analytics_rfm.purchase_days`` (NOT NULL, no longer written) and no partial
covering index on sales.  This revision drops the column and creates the
index where they differ; on a database created by the current
``analytics_0001`` it changes nothing.

Revision ID: analytics_0003_repair
Revises: analytics_0002_needs
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from ecrm_core.storage import migration_naming

from ecrm_analytics.schema import RFM, SALES_INDEX_COLUMNS, SALES_INDEX_WHERE, sales_index

revision = "analytics_0003_repair"
down_revision = "analytics_0002_needs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    naming = migration_naming()
    inspector = sa.inspect(op.get_bind())
    rfm = naming.table(RFM)
    if "purchase_days" in {c["name"] for c in inspector.get_columns(rfm, schema=naming.schema)}:
        with op.batch_alter_table(rfm, schema=naming.schema) as batch:
            batch.drop_column("purchase_days")
    interactions = naming.table("interactions")
    if sales_index(naming) not in {i["name"] for i in inspector.get_indexes(interactions, schema=naming.schema)}:
        where = sa.text(SALES_INDEX_WHERE)
        op.create_index(
            sales_index(naming), interactions, list(SALES_INDEX_COLUMNS), schema=naming.schema,
            sqlite_where=where, postgresql_where=where,
        )  # fmt: skip


def downgrade() -> None:
    pass  # nothing to undo: the current analytics_0001 already has this shape
