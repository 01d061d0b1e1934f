"""The admin's tables: its own users and their sessions (host prefix and schema apply)."""

from __future__ import annotations

import sqlalchemy as sa
from ecrm_core.storage import Naming, UTCDateTime

__all__ = ["USERS", "SESSIONS", "define_tables"]

#: Short table names (``crm.db.tables[USERS]``); the host's prefix is put in front.
USERS = "admin_users"
SESSIONS = "admin_sessions"


def _existing(metadata: sa.MetaData, naming: Naming, short: str) -> sa.Table | None:
    name = naming.table(short)
    return metadata.tables.get(f"{naming.schema}.{name}" if naming.schema else name)


def define_tables(metadata: sa.MetaData, naming: Naming) -> tuple[sa.Table, sa.Table]:
    """Define ``<prefix>admin_users`` and ``<prefix>admin_sessions`` (once).

    Passwords are kept as ``scrypt$n$r$p$salt$hash`` (:func:`hashlib.scrypt`);
    a session row is keyed by the SHA-256 of its cookie token, so a leaked
    table does not hand out sessions.  The migration ``admin_0001`` creates
    exactly these tables; a test checks they agree.
    """
    users = _existing(metadata, naming, USERS)
    if users is None:
        users = sa.Table(
            naming.table(USERS),
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("username", sa.String(100), nullable=False, unique=True),
            sa.Column("display_name", sa.String(200)),
            sa.Column("password_hash", sa.String(300), nullable=False),
            sa.Column("role", sa.String(20), nullable=False),
            sa.Column("workspaces", sa.Text, nullable=False),
            sa.Column("disabled", sa.Boolean, nullable=False, default=False),
            sa.Column("created_at", UTCDateTime(), nullable=False),
            sa.Column("last_login_at", UTCDateTime()),
            schema=naming.schema,
        )
    sessions = _existing(metadata, naming, SESSIONS)
    if sessions is None:
        sessions = sa.Table(
            naming.table(SESSIONS),
            metadata,
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("username", sa.String(100), nullable=False, index=True),
            sa.Column("role", sa.String(20), nullable=False),
            sa.Column("workspace", sa.String(64), nullable=False),
            sa.Column("csrf", sa.String(64), nullable=False),
            sa.Column("source", sa.String(10), nullable=False),
            sa.Column("created_at", UTCDateTime(), nullable=False),
            sa.Column("seen_at", UTCDateTime(), nullable=False),
            sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
            schema=naming.schema,
        )
    return users, sessions
