"""The plugin's table: API keys, defined for the host's table prefix and schema."""

from __future__ import annotations

import sqlalchemy as sa
from ecrm_core.storage import Naming, UTCDateTime

__all__ = ["TABLE", "define_table"]

#: Short name of the table (``crm.db.tables[TABLE]``); the host's prefix is put in front.
TABLE = "api_keys"


def define_table(metadata: sa.MetaData, naming: Naming) -> sa.Table:
    """Define ``<prefix>api_keys`` on ``metadata`` (once; later calls return it).

    A key is shown once, at creation, as ``ecrm_<key_id>_<secret>``.  Only
    ``key_id`` (public, the lookup) and the SHA-256 of the secret are kept:
    the secret is 256 random bits, so a fast hash is enough (as for GitHub's
    and Stripe's tokens) and the comparison is constant-time.  The migration
    ``api_0001`` creates exactly this table; a test checks they agree.
    """
    name = naming.table(TABLE)
    key = f"{naming.schema}.{name}" if naming.schema else name
    existing = metadata.tables.get(key)
    if existing is not None:
        return existing
    return sa.Table(
        name,
        metadata,
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
