"""Alembic migrations of the ``ecrm_analytics`` branch."""
