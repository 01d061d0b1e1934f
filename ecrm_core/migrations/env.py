"""Alembic environment for ecrm.

ecrm always runs migrations programmatically (``ecrm db upgrade`` or
``crm.upgrade()``): the connection and the table naming (prefix, schema) come
from ``config.attributes``, never from an ini file, so a host's own Alembic
setup is untouched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

config = context.config
connection = config.attributes["connection"]
naming = config.attributes["naming"]

if naming.schema and connection.dialect.name != "sqlite":
    # ``CRM(schema=...)`` names a schema that may not exist yet: create it
    # (in the migration's transaction) so the version table can go there.
    connection.execute(sa.schema.CreateSchema(naming.schema, if_not_exists=True))

context.configure(
    connection=connection,
    version_table=naming.version_table,
    version_table_schema=naming.schema,
    render_as_batch=connection.dialect.name == "sqlite",
)

with context.begin_transaction():
    context.run_migrations()
