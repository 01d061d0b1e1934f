"""ecrm_admin: admin users and sessions.

Revision ID: admin_0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from ecrm_core.storage import UTCDateTime, migration_naming

revision = "admin_0001"
down_revision = None
branch_labels = ("ecrm_admin",)
depends_on = "0001_core"


def upgrade() -> None:
    naming = migration_naming()
    users = naming.table("admin_users")
    sessions = naming.table("admin_sessions")
    op.create_table(
        users,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(100), nullable=False, unique=True),
        sa.Column("display_name", sa.String(200)),
        sa.Column("password_hash", sa.String(300), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("workspaces", sa.Text, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_login_at", UTCDateTime()),
        schema=naming.schema,
    )
    op.create_table(
        sessions,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("username", sa.String(100), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("workspace", sa.String(64), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("source", sa.String(10), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("seen_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        schema=naming.schema,
    )
    op.create_index(f"ix_{sessions}_username", sessions, ["username"], schema=naming.schema)
    op.create_index(f"ix_{sessions}_expires_at", sessions, ["expires_at"], schema=naming.schema)


def downgrade() -> None:
    naming = migration_naming()
    op.drop_table(naming.table("admin_sessions"), schema=naming.schema)
    op.drop_table(naming.table("admin_users"), schema=naming.schema)
