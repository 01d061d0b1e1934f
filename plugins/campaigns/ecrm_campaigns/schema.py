"""The plugin's tables, defined for the host's table prefix and schema.

* ``campaigns``: one row per campaign (key, status, current version, the
  next time a schedule/date trigger is due);
* ``campaign_versions``: one row per saved version, the definition as JSON;
* ``campaign_dates``: the dates that date triggers look up — one row per
  customer per date source (``birthday``, ``first_purchase``…) with its
  month and day as ``MMDD``, indexed by (workspace, source, month-day), so
  "whose birthday is today" reads a few index entries instead of every
  customer (see :mod:`ecrm_campaigns.dates`);
* ``campaign_enrollments``: **one row per customer per campaign** — the arm
  (holdout/variant), the version the customer runs, the current step and
  when it is due, the lease of the worker executing it, how the journey
  ended.  A customer's journey state is this one row, whatever the number
  of steps and events (no event log).

:func:`columns` is used by both :func:`define_tables` and the migration
``campaigns_0001``, so they cannot disagree.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from ecrm_core.storage import Naming, UTCDateTime

__all__ = ["CAMPAIGNS", "DATES", "ENROLLMENTS", "TABLES", "VERSIONS", "columns", "define_tables"]

CAMPAIGNS = "campaigns"
VERSIONS = "campaign_versions"
ENROLLMENTS = "campaign_enrollments"
DATES = "campaign_dates"
TABLES = (CAMPAIGNS, VERSIONS, ENROLLMENTS, DATES)


def _ref(naming: Naming, table: str) -> str:
    name = naming.table(table)
    return f"{naming.schema}.{name}.id" if naming.schema else f"{name}.id"


def columns(naming: Naming, table: str) -> list[Any]:
    """Columns and constraints of one of the plugin's tables."""
    name = naming.table(table)
    if table == CAMPAIGNS:
        return [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("workspace_id", sa.String(64), nullable=False),
            sa.Column("key", sa.String(64), nullable=False),
            sa.Column("name", sa.String(200), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("version", sa.Integer, nullable=False),
            sa.Column("trigger_type", sa.String(32), nullable=False),
            sa.Column("next_run_at", UTCDateTime()),
            sa.Column("state", sa.JSON, nullable=False),
            sa.Column("created_at", UTCDateTime(), nullable=False),
            sa.Column("updated_at", UTCDateTime(), nullable=False),
            sa.UniqueConstraint("workspace_id", "key", name=f"uq_{name}_ws_key"),
        ]
    if table == VERSIONS:
        return [
            sa.Column(
                "campaign_id", sa.Integer, sa.ForeignKey(_ref(naming, CAMPAIGNS), ondelete="CASCADE"), primary_key=True
            ),
            sa.Column("version", sa.Integer, primary_key=True),
            sa.Column("definition", sa.JSON, nullable=False),
            sa.Column("created_at", UTCDateTime(), nullable=False),
            sa.Column("actor", sa.String(200)),
        ]
    if table == ENROLLMENTS:
        return [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("workspace_id", sa.String(64), nullable=False),
            sa.Column(
                "campaign_id", sa.Integer, sa.ForeignKey(_ref(naming, CAMPAIGNS), ondelete="CASCADE"), nullable=False
            ),
            sa.Column(
                "customer_id", sa.Integer, sa.ForeignKey(_ref(naming, "customers"), ondelete="CASCADE"), nullable=False
            ),
            sa.Column("version", sa.Integer, nullable=False),
            sa.Column("entry", sa.Integer, nullable=False),
            sa.Column("arm", sa.String(64), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("step", sa.String(64)),
            sa.Column("due_at", UTCDateTime()),
            sa.Column("timeout_at", UTCDateTime()),
            sa.Column("lease_owner", sa.String(64)),
            sa.Column("lease_until", UTCDateTime()),
            sa.Column("entered_at", UTCDateTime(), nullable=False),
            sa.Column("updated_at", UTCDateTime(), nullable=False),
            sa.Column("finished_at", UTCDateTime()),
            sa.Column("reason", sa.String(500)),
            sa.UniqueConstraint("campaign_id", "customer_id", name=f"uq_{name}_campaign_customer"),
            sa.Index(f"ix_{name}_due", "workspace_id", "status", "due_at"),
            sa.Index(f"ix_{name}_customer", "customer_id"),
        ]
    if table == DATES:
        return [
            sa.Column("workspace_id", sa.String(64), primary_key=True),
            sa.Column("source", sa.String(80), primary_key=True),
            sa.Column(
                "customer_id",
                sa.Integer,
                sa.ForeignKey(_ref(naming, "customers"), ondelete="CASCADE"),
                primary_key=True,
            ),
            sa.Column("month_day", sa.Integer, nullable=False),
            sa.Column("day", sa.Date, nullable=False),
            sa.Index(f"ix_{name}_lookup", "workspace_id", "source", "month_day"),
            sa.Index(f"ix_{name}_customer", "customer_id"),
        ]
    raise KeyError(table)


def define_tables(metadata: sa.MetaData, naming: Naming) -> None:
    """Define the three tables on ``metadata`` (once; later calls do nothing)."""
    for table in TABLES:
        name = naming.table(table)
        key = f"{naming.schema}.{name}" if naming.schema else name
        if key not in metadata.tables:
            sa.Table(name, metadata, *columns(naming, table), schema=naming.schema)
