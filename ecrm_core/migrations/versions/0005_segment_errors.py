"""Segments and lifecycle rules record why they last failed to evaluate.

A stored rule that the database refuses, or that no longer validates (its
condition type's plugin was uninstalled), is skipped by refreshes; ``error``
says why and ``error_at`` when, until it evaluates again.

Revision ID: 0005_segment_errors
Revises: 0004_covering_customer_index
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ecrm_core.storage import UTCDateTime, migration_naming

revision = "0005_segment_errors"
down_revision = "0004_covering_customer_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    naming = migration_naming()
    t, schema = naming.table, naming.schema
    for table in ("segments", "lifecycle_rules"):
        with op.batch_alter_table(t(table), schema=schema) as batch:
            batch.add_column(sa.Column("error", sa.String(2000)))
            batch.add_column(sa.Column("error_at", UTCDateTime()))


def downgrade() -> None:
    naming = migration_naming()
    t, schema = naming.table, naming.schema
    for table in ("segments", "lifecycle_rules"):
        with op.batch_alter_table(t(table), schema=schema) as batch:
            batch.drop_column("error_at")
            batch.drop_column("error")
