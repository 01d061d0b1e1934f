"""Alembic migrations of the ``ecrm_campaigns`` branch."""
