"""Core tables: workspaces, customers, aliases, interactions, offers, consent, audit.

Revision ID: 0001_core
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from ecrm_core.storage import Amount, UTCDateTime, migration_naming

revision = "0001_core"
down_revision = None
branch_labels = ("ecrm_core",)
depends_on = None


def upgrade() -> None:
    naming = migration_naming()
    t = naming.table
    schema = naming.schema

    def fk(table: str) -> str:
        return f"{schema}.{t(table)}.id" if schema else f"{t(table)}.id"

    workspaces = op.create_table(
        t("workspaces"),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        schema=schema,
    )
    op.bulk_insert(workspaces, [{"id": "default", "name": "Default", "created_at": datetime.now(UTC)}])

    op.create_table(
        t("customers"),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("external_id", sa.String(200)),
        sa.Column("email", sa.String(320)),
        sa.Column("phone", sa.String(32)),
        sa.Column("name", sa.String(200)),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("consent", sa.JSON, nullable=False),
        sa.Column("lifecycle_stage", sa.String(64), nullable=False),
        sa.Column("timezone", sa.String(64)),
        sa.Column("locale", sa.String(35)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("merged_into", sa.Integer, sa.ForeignKey(fk("customers"))),
        schema=schema,
    )
    op.create_index(f"ix_{t('customers')}_ws_email", t("customers"), ["workspace_id", "email"], schema=schema)
    op.create_index(f"ix_{t('customers')}_ws_stage", t("customers"), ["workspace_id", "lifecycle_stage"], schema=schema)
    op.create_index(f"ix_{t('customers')}_merged_into", t("customers"), ["merged_into"], schema=schema)

    op.create_table(
        t("aliases"),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey(fk("customers"), ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("value", sa.String(320), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("workspace_id", "kind", "value", name=f"uq_{t('aliases')}_ws_kind_value"),
        schema=schema,
    )
    op.create_index(f"ix_{t('aliases')}_customer", t("aliases"), ["customer_id"], schema=schema)

    op.create_table(
        t("interactions"),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey(fk("customers")), nullable=False),
        sa.Column("origin_customer_id", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(64)),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("amount", Amount()),
        sa.Column("currency", sa.String(3)),
        sa.Column("properties", sa.JSON, nullable=False),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("payload_hash", sa.String(32)),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        schema=schema,
    )
    op.create_index(
        f"ix_{t('interactions')}_ws_customer_time",
        t("interactions"),
        ["workspace_id", "customer_id", "occurred_at"],
        schema=schema,
    )
    op.create_index(
        f"ix_{t('interactions')}_ws_kind_time",
        t("interactions"),
        ["workspace_id", "kind", "occurred_at"],
        schema=schema,
    )
    op.create_index(
        f"uq_{t('interactions')}_ws_key",
        t("interactions"),
        ["workspace_id", "idempotency_key"],
        unique=True,
        schema=schema,
    )

    op.create_table(
        t("offers"),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("content", sa.JSON, nullable=False),
        sa.Column("valid_from", UTCDateTime()),
        sa.Column("valid_until", UTCDateTime()),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("channels", sa.JSON, nullable=False),
        sa.Column("eligibility", sa.JSON),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("workspace_id", "code", name=f"uq_{t('offers')}_ws_code"),
        schema=schema,
    )
    op.create_index(f"ix_{t('offers')}_ws_status", t("offers"), ["workspace_id", "status"], schema=schema)

    op.create_table(
        t("consent_events"),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey(fk("customers"), ondelete="CASCADE"), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(500)),
        sa.Column("at", UTCDateTime(), nullable=False),
        schema=schema,
    )
    op.create_index(f"ix_{t('consent_events')}_customer", t("consent_events"), ["customer_id", "at"], schema=schema)

    op.create_table(
        t("audit_log"),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("entity_id", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(200)),
        sa.Column("details", sa.JSON, nullable=False),
        schema=schema,
    )
    op.create_index(
        f"ix_{t('audit_log')}_entity", t("audit_log"), ["workspace_id", "entity", "entity_id"], schema=schema
    )


def downgrade() -> None:
    naming = migration_naming()
    for name in ("audit_log", "consent_events", "offers", "interactions", "aliases", "customers", "workspaces"):
        op.drop_table(naming.table(name), schema=naming.schema)
