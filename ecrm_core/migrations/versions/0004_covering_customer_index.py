"""Interactions: the (workspace, customer, time) index also carries kind and amount.

Behaviour conditions restricted to a few customers (incremental segment and
lifecycle refresh, the in-memory evaluator's loader, a customer's timeline by
kind) read only this index: no row lookup per interaction.

Revision ID: 0004_covering_customer_index
Revises: 0003_messages
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

from ecrm_core.storage import migration_naming

revision = "0004_covering_customer_index"
down_revision = "0003_messages"
branch_labels = None
depends_on = None


def upgrade() -> None:
    naming = migration_naming()
    t, schema = naming.table, naming.schema
    name = f"ix_{t('interactions')}_ws_customer_time"
    op.drop_index(name, table_name=t("interactions"), schema=schema)
    op.create_index(
        name,
        t("interactions"),
        ["workspace_id", "customer_id", "occurred_at", "kind", "amount"],
        schema=schema,
    )


def downgrade() -> None:
    naming = migration_naming()
    t, schema = naming.table, naming.schema
    name = f"ix_{t('interactions')}_ws_customer_time"
    op.drop_index(name, table_name=t("interactions"), schema=schema)
    op.create_index(name, t("interactions"), ["workspace_id", "customer_id", "occurred_at"], schema=schema)
