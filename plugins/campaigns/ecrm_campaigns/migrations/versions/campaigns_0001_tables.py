"""ecrm_campaigns: campaigns, campaign_versions, campaign_enrollments.

Revision ID: campaigns_0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op
from ecrm_core.storage import migration_naming

from ecrm_campaigns.schema import CAMPAIGNS, ENROLLMENTS, VERSIONS, columns

# the tables of this revision (later ones add theirs)
TABLES = (CAMPAIGNS, VERSIONS, ENROLLMENTS)

revision = "campaigns_0001"
down_revision = None
branch_labels = ("ecrm_campaigns",)
depends_on = "0006_jobs"


def upgrade() -> None:
    naming = migration_naming()
    for table in TABLES:
        op.create_table(naming.table(table), *columns(naming, table), schema=naming.schema)


def downgrade() -> None:
    naming = migration_naming()
    for table in reversed(TABLES):
        op.drop_table(naming.table(table), schema=naming.schema)
