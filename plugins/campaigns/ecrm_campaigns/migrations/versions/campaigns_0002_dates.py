"""ecrm_campaigns: campaign_dates (the indexed dates of date triggers).

Revision ID: campaigns_0002
Revises: campaigns_0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op
from ecrm_core.storage import migration_naming

from ecrm_campaigns.schema import DATES, columns

revision = "campaigns_0002"
down_revision = "campaigns_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    naming = migration_naming()
    op.create_table(naming.table(DATES), *columns(naming, DATES), schema=naming.schema)


def downgrade() -> None:
    naming = migration_naming()
    op.drop_table(naming.table(DATES), schema=naming.schema)
