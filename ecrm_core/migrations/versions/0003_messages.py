"""The delivery pipeline: the message outbox, the delivery log, suppressions.

Revision ID: 0003_messages
Revises: 0002_segments
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ecrm_core.storage import UTCDateTime, migration_naming

revision = "0003_messages"
down_revision = "0002_segments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    naming = migration_naming()
    t = naming.table
    schema = naming.schema

    def fk(table: str) -> str:
        return f"{schema}.{t(table)}.id" if schema else f"{t(table)}.id"

    op.create_table(
        t("messages"),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("uid", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey(fk("customers"), ondelete="CASCADE"), nullable=False),
        sa.Column("address", sa.String(320)),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("template", sa.String(200)),
        sa.Column("content", sa.JSON, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime()),
        sa.Column("lease_until", UTCDateTime()),
        sa.Column("provider_id", sa.String(500)),
        sa.Column("dedupe_key", sa.String(200)),
        sa.Column("transactional", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime()),
        sa.UniqueConstraint("uid", name=f"uq_{t('messages')}_uid"),
        schema=schema,
    )
    op.create_index(f"ix_{t('messages')}_due", t("messages"), ["status", "next_attempt_at"], schema=schema)
    op.create_index(
        f"ix_{t('messages')}_customer",
        t("messages"),
        ["workspace_id", "customer_id", "channel", "created_at"],
        schema=schema,
    )
    op.create_index(
        f"uq_{t('messages')}_ws_dedupe", t("messages"), ["workspace_id", "dedupe_key"], unique=True, schema=schema
    )
    op.create_table(
        t("delivery_attempts"),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.Integer, sa.ForeignKey(fk("messages"), ondelete="CASCADE"), nullable=False),
        sa.Column("attempt_id", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("code", sa.String(100)),
        sa.Column("reason", sa.String(1000)),
        sa.Column("provider_id", sa.String(500)),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime()),
        sa.UniqueConstraint("attempt_id", name=f"uq_{t('delivery_attempts')}_attempt"),
        schema=schema,
    )
    op.create_index(
        f"ix_{t('delivery_attempts')}_message", t("delivery_attempts"), ["message_id", "number"], schema=schema
    )
    op.create_table(
        t("suppressions"),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", sa.String(1000)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("workspace_id", "channel", "address", name=f"uq_{t('suppressions')}_ws_channel_address"),
        schema=schema,
    )


def downgrade() -> None:
    naming = migration_naming()
    t = naming.table
    schema = naming.schema
    op.drop_table(t("suppressions"), schema=schema)
    op.drop_index(f"ix_{t('delivery_attempts')}_message", t("delivery_attempts"), schema=schema)
    op.drop_table(t("delivery_attempts"), schema=schema)
    op.drop_index(f"uq_{t('messages')}_ws_dedupe", t("messages"), schema=schema)
    op.drop_index(f"ix_{t('messages')}_customer", t("messages"), schema=schema)
    op.drop_index(f"ix_{t('messages')}_due", t("messages"), schema=schema)
    op.drop_table(t("messages"), schema=schema)
