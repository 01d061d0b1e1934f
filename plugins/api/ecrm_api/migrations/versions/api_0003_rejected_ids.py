"""ecrm_api: the identities each rejected message names (erasure on customer deletion).

Revision ID: api_0003
Revises: api_0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from ecrm_core.storage import migration_naming

revision = "api_0003"
down_revision = "api_0002"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    naming = migration_naming()
    name = naming.table("ingest_rejected_ids")
    table = op.create_table(
        name,
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("rejected_id", sa.BigInteger, nullable=False),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        schema=naming.schema,
    )
    op.create_index(f"ix_{name}_rejected_id", name, ["rejected_id"], schema=naming.schema)
    op.create_index(f"ix_{name}_identity", name, ["workspace_id", "kind", "value"], schema=naming.schema)
    # The identities of the messages rejected before this revision.
    import msgspec

    from ecrm_api.erasure import identity_rows

    rejected = sa.table(
        naming.table("ingest_rejected"),
        sa.column("id"),
        sa.column("workspace_id"),
        sa.column("message"),
        schema=naming.schema,
    )
    conn = op.get_bind()
    last = 0
    while True:
        rows = conn.execute(
            sa.select(rejected.c.id, rejected.c.workspace_id, rejected.c.message)
            .where(rejected.c.id > last)
            .order_by(rejected.c.id)
            .limit(1000)
        ).all()
        if not rows:
            break
        last = rows[-1].id
        out = []
        for r in rows:
            try:
                message = msgspec.json.decode(bytes(r.message))
            except msgspec.DecodeError:
                continue
            out += identity_rows(r.workspace_id, r.id, message)
        if out:
            conn.execute(table.insert(), out)


def downgrade() -> None:
    naming = migration_naming()
    op.drop_table(naming.table("ingest_rejected_ids"), schema=naming.schema)
