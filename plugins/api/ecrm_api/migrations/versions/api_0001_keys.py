"""ecrm_api: the api_keys table.

Revision ID: api_0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from ecrm_core.storage import UTCDateTime, migration_naming

revision = "api_0001"
down_revision = None
branch_labels = ("ecrm_api",)
depends_on = "0001_core"


def upgrade() -> None:
    naming = migration_naming()
    name = naming.table("api_keys")
    op.create_table(
        name,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key_id", sa.String(32), nullable=False, unique=True),
        sa.Column("workspace_id", sa.String(64), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("scopes", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime()),
        sa.Column("revoked_at", UTCDateTime()),
        sa.Column("rotated_from", sa.String(32)),
        schema=naming.schema,
    )


def downgrade() -> None:
    naming = migration_naming()
    op.drop_table(naming.table("api_keys"), schema=naming.schema)
