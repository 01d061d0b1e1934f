"""ecrm_api: deleted identities (tombstones) for the processor; unreadable rejected entries indexed.

Revision ID: api_0004
Revises: api_0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from ecrm_core.storage import UTCDateTime, migration_naming

revision = "api_0004"
down_revision = "api_0003"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    naming = migration_naming()
    name = naming.table("ingest_tombstones")
    op.create_table(
        name,
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=False),
        schema=naming.schema,
    )
    op.create_index(f"ix_{name}_deleted_at", name, ["deleted_at"], schema=naming.schema)
    op.create_index(f"ix_{name}_identity", name, ["workspace_id", "kind", "value"], schema=naming.schema)
    # The identities the unreadable entries rejected before this revision seem to name.
    from ecrm_api.erasure import identity_rows

    rejected = sa.table(
        naming.table("ingest_rejected"),
        sa.column("id"),
        sa.column("workspace_id"),
        sa.column("reason"),
        sa.column("message"),
        schema=naming.schema,
    )
    ids = sa.table(
        naming.table("ingest_rejected_ids"),
        sa.column("rejected_id"),
        sa.column("workspace_id"),
        sa.column("kind"),
        sa.column("value"),
        schema=naming.schema,
    )
    conn = op.get_bind()
    last = 0
    while True:
        rows = conn.execute(
            sa.select(rejected.c.id, rejected.c.workspace_id, rejected.c.message)
            .where(rejected.c.id > last, rejected.c.reason == "unreadable")
            .order_by(rejected.c.id)
            .limit(1000)
        ).all()
        if not rows:
            break
        last = rows[-1].id
        out = [x for r in rows for x in identity_rows(r.workspace_id, r.id, None, bytes(r.message))]
        if out:
            conn.execute(ids.insert(), out)


def downgrade() -> None:
    naming = migration_naming()
    op.drop_table(naming.table("ingest_tombstones"), schema=naming.schema)
