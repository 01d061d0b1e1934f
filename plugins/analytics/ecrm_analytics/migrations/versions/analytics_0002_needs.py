"""ecrm_analytics: needs analysis — stored basket rules and customer clusters.

Revision ID: analytics_0002_needs
Revises: analytics_0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op
from ecrm_core.storage import migration_naming

from ecrm_analytics.schema import NEEDS_TABLES, columns

revision = "analytics_0002_needs"
down_revision = "analytics_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    naming = migration_naming()
    for table in NEEDS_TABLES:
        op.create_table(naming.table(table), *columns(naming, table), schema=naming.schema)


def downgrade() -> None:
    naming = migration_naming()
    for table in reversed(NEEDS_TABLES):
        op.drop_table(naming.table(table), schema=naming.schema)
