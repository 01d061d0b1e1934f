"""Shared test configuration.

``ecrm_core.testing`` (the ``crm``, ``crm_factory`` and ``events`` fixtures)
is loaded through its pytest entry point; the PostgreSQL fixtures
(``postgres_url``, ``pg_crm``, ``pg_crm_factory``, ``pg_empty_url``) are a
plugin of their own, enabled here.
"""

pytest_plugins = ["ecrm_core.testing.postgres"]
