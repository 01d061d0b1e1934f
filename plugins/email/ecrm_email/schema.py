"""The plugin's table: e-mail templates, defined for the host's table prefix and schema."""

from __future__ import annotations

import sqlalchemy as sa
from ecrm_core.storage import Naming, UTCDateTime

__all__ = ["TABLE", "define_table"]

#: Short name of the table (``crm.db.tables[TABLE]``); the host's prefix is put in front.
TABLE = "email_templates"


def define_table(metadata: sa.MetaData, naming: Naming) -> sa.Table:
    """Define ``<prefix>email_templates`` on ``metadata`` (once; later calls return it).

    One row per (workspace, name): a ``subject`` template and an ``html``
    and/or ``text`` template (Jinja2 source, rendered in the sandbox by
    :class:`ecrm_email.templates.Templates`).  The migration ``email_0001``
    creates exactly this table; a test checks they agree.
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
