"""Alembic migrations of the ``ecrm_stats`` branch."""
