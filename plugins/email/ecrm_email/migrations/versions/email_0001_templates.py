"""ecrm_email: the email_templates table.

Revision ID: email_0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from ecrm_core.storage import UTCDateTime, migration_naming

revision = "email_0001"
down_revision = None
branch_labels = ("ecrm_email",)
depends_on = "0003_messages"


def upgrade() -> None:
    naming = migration_naming()
    name = naming.table("email_templates")
    op.create_table(
        name,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("html", sa.Text),
        sa.Column("text", sa.Text),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("workspace_id", "name", name=f"uq_{name}_ws_name"),
        schema=naming.schema,
    )


def downgrade() -> None:
    naming = migration_naming()
    op.drop_table(naming.table("email_templates"), schema=naming.schema)
