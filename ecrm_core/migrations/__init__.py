"""Alembic migrations of ecrm's core tables (branch ``ecrm_core``)."""
