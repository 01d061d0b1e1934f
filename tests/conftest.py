"""Shared test configuration.

``ecrm_core.testing`` (the ``crm``, ``crm_factory`` and ``events`` fixtures)
is loaded through its pytest entry point; the PostgreSQL fixtures
(``postgres_url``, ``pg_crm``, ``pg_crm_factory``, ``pg_empty_url``) are a
plugin of their own, enabled here.

The suite runs in parallel with pytest-xdist (see ``tests/xdist_kit.py``): a
plain ``pytest`` uses ``ECRM_TEST_WORKERS`` workers (default ``auto``: one per
CPU); ``-n 0`` or ``-p no:xdist`` runs it serially.  Tests marked
``@pytest.mark.xdist_group("name")`` run one after the other on one worker.
Every session fixture is per worker (each worker starts its own PostgreSQL
server and, for browser tests, Chromium).
"""

pytest_plugins = ["ecrm_core.testing.postgres", "xdist_kit"]
