"""Segments (rules and static lists), their materialised members, lifecycle rules.

Revision ID: 0002_segments
Revises: 0001_core
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ecrm_core.storage import UTCDateTime, migration_naming

revision = "0002_segments"
down_revision = "0001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    naming = migration_naming()
    t = naming.table
    schema = naming.schema

    def fk(table: str) -> str:
        return f"{schema}.{t(table)}.id" if schema else f"{t(table)}.id"

    op.create_table(
        t("segments"),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("slug", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.String(2000), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("rule", sa.JSON),
        sa.Column("member_count", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("refreshed_at", UTCDateTime()),
        sa.UniqueConstraint("workspace_id", "slug", name=f"uq_{t('segments')}_ws_slug"),
        schema=schema,
    )
    op.create_table(
        t("segment_members"),
        sa.Column("segment_id", sa.Integer, sa.ForeignKey(fk("segments"), ondelete="CASCADE"), primary_key=True),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey(fk("customers"), ondelete="CASCADE"), primary_key=True),
        sa.Column("entered_at", UTCDateTime(), nullable=False),
        sqlite_with_rowid=False,
        schema=schema,
    )
    op.create_index(f"ix_{t('segment_members')}_customer", t("segment_members"), ["customer_id"], schema=schema)
    op.create_table(
        t("lifecycle_rules"),
        sa.Column("workspace_id", sa.String(64), primary_key=True),
        sa.Column("stage", sa.String(64), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("rule", sa.JSON, nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        schema=schema,
    )


def downgrade() -> None:
    naming = migration_naming()
    t = naming.table
    op.drop_table(t("lifecycle_rules"), schema=naming.schema)
    op.drop_index(f"ix_{t('segment_members')}_customer", t("segment_members"), schema=naming.schema)
    op.drop_table(t("segment_members"), schema=naming.schema)
    op.drop_table(t("segments"), schema=naming.schema)
