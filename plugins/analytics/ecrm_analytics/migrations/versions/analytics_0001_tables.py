"""ecrm_analytics: settings, dirty marks, RFM, CLV and per-analysis state; a partial covering index on sales.

Revision ID: analytics_0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from ecrm_core.storage import migration_naming

from ecrm_analytics.schema import SALES_INDEX_COLUMNS, SALES_INDEX_WHERE, TABLES, columns, sales_index

revision = "analytics_0001"
down_revision = None
branch_labels = ("ecrm_analytics",)
depends_on = "0006_jobs"


def upgrade() -> None:
    naming = migration_naming()
    for table in TABLES:
        op.create_table(naming.table(table), *columns(naming, table), schema=naming.schema)
    where = sa.text(SALES_INDEX_WHERE)
    op.create_index(
        sales_index(naming),
        naming.table("interactions"),
        list(SALES_INDEX_COLUMNS),
        schema=naming.schema,
        sqlite_where=where,
        postgresql_where=where,
    )


def downgrade() -> None:
    naming = migration_naming()
    op.drop_index(sales_index(naming), table_name=naming.table("interactions"), schema=naming.schema)
    for table in reversed(TABLES):
        op.drop_table(naming.table(table), schema=naming.schema)
