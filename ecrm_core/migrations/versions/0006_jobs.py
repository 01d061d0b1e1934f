"""The worker's job state: one row per (job, workspace) with schedule, lease and last outcome.

Revision ID: 0006_jobs
Revises: 0005_segment_errors
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ecrm_core.storage import UTCDateTime, migration_naming

revision = "0006_jobs"
down_revision = "0005_segment_errors"
branch_labels = None
depends_on = None


def upgrade() -> None:
    naming = migration_naming()
    t = naming.table
    op.create_table(
        t("jobs"),
        sa.Column("job", sa.String(64), primary_key=True),
        sa.Column("workspace_id", sa.String(64), primary_key=True),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_until", UTCDateTime()),
        sa.Column("next_run_at", UTCDateTime()),
        sa.Column("last_started_at", UTCDateTime()),
        sa.Column("last_finished_at", UTCDateTime()),
        sa.Column("last_done", sa.Integer, nullable=False),
        sa.Column("last_more", sa.Boolean, nullable=False),
        sa.Column("last_message", sa.String(500)),
        sa.Column("last_error", sa.String(2000)),
        sa.Column("last_error_at", UTCDateTime()),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("runs", sa.Integer, nullable=False),
        sa.Column("total_done", sa.BigInteger, nullable=False),
        schema=naming.schema,
    )


def downgrade() -> None:
    naming = migration_naming()
    op.drop_table(naming.table("jobs"), schema=naming.schema)
