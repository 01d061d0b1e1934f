"""ecrm_api: the ingest inbox, its rejected messages and the processor's log.

Revision ID: api_0002
Revises: api_0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from ecrm_core.storage import UTCDateTime, migration_naming

revision = "api_0002"
down_revision = "api_0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    naming = migration_naming()
    op.create_table(
        naming.table("ingest_inbox"),
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("call", sa.String(16)),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        schema=naming.schema,
    )
    op.create_table(
        naming.table("ingest_rejected"),
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False, index=True),
        sa.Column("inbox_id", sa.BigInteger),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("rejected_at", UTCDateTime(), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("message_id", sa.String(200)),
        sa.Column("field", sa.String(500), nullable=False),
        sa.Column("problem", sa.Text, nullable=False),
        sa.Column("fix", sa.Text, nullable=False),
        sa.Column("message", sa.LargeBinary, nullable=False),
        sa.Column("replayed_at", UTCDateTime()),
        schema=naming.schema,
    )
    op.create_table(
        naming.table("ingest_log"),
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("finished_at", UTCDateTime(), nullable=False, index=True),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("events", sa.Integer, nullable=False),
        sa.Column("rejected", sa.Integer, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        schema=naming.schema,
    )


def downgrade() -> None:
    naming = migration_naming()
    for name in ("ingest_log", "ingest_rejected", "ingest_inbox"):
        op.drop_table(naming.table(name), schema=naming.schema)
