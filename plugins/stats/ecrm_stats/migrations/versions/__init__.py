"""Revisions of the ``ecrm_stats`` branch (an Alembic version directory)."""
