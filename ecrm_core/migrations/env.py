"""Alembic environment for ecrm.

ecrm always runs migrations programmatically (``ecrm db upgrade`` or
``crm.upgrade()``): the connection and the table naming (prefix, schema) come
from ``config.attributes``, never from an ini file, so a host's own Alembic
setup is untouched.
"""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes["connection"]
naming = config.attributes["naming"]

context.configure(
    connection=connection,
    version_table=naming.version_table,
    version_table_schema=naming.schema,
    render_as_batch=connection.dialect.name == "sqlite",
)

with context.begin_transaction():
    context.run_migrations()
