"""The plugin's tables, defined for the host's table prefix and schema.

* ``analytics_settings``: one row per workspace — the reporting currency and
  the conversion rates (see :mod:`ecrm_analytics.common`);
* ``analytics_dirty``: customers whose sales changed since their analytics
  were computed (marked in the core's ingest transaction, claimed by the
  worker job ``analytics.refresh``); ``mark`` changes on every new mark so a
  claim never deletes a mark that arrived while it ran;
* ``analytics_rfm``: one row per customer with at least one purchase —
  recency/frequency/monetary in the reporting currency, the number of
  distinct (UTC) days with a purchase (the CLV models' transactions), the
  three quintile scores and the named group;
* ``analytics_clv``: one row per customer with at least one purchase — the
  BG/NBD + Gamma-Gamma predictions of the last fitted model;
* ``analytics_state``: per workspace and analysis, what the analysis needs to
  remember (RFM cut points, the CLV model's parameters and fit statistics).

Every per-customer table references the customer with ``ON DELETE CASCADE``:
deleting a customer erases what analytics knows about them.  :func:`columns`
is used by both :func:`define_tables` and the migrations, so they cannot
disagree.  Other parts of the plugin (needs analysis) add their tables here
and in a migration of the ``ecrm_analytics`` branch.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from ecrm_core.storage import Naming, UTCDateTime

__all__ = ["CLV", "DIRTY", "RFM", "SETTINGS", "STATE", "TABLES", "columns", "define_tables"]

SETTINGS = "analytics_settings"
DIRTY = "analytics_dirty"
RFM = "analytics_rfm"
CLV = "analytics_clv"
STATE = "analytics_state"
#: The tables of migration ``analytics_0001``, in creation order.
TABLES = (SETTINGS, DIRTY, RFM, CLV, STATE)


def _customer_fk(naming: Naming) -> sa.ForeignKey:
    name = naming.table("customers")
    target = f"{naming.schema}.{name}.id" if naming.schema else f"{name}.id"
    return sa.ForeignKey(target, ondelete="CASCADE")


def columns(naming: Naming, table: str) -> list[Any]:
    """Columns, constraints and indexes of one of the plugin's tables."""
    name = naming.table(table)
    if table == SETTINGS:
        return [
            sa.Column("workspace_id", sa.String(64), primary_key=True),
            sa.Column("currency", sa.String(3), nullable=False),
            sa.Column("rates", sa.JSON, nullable=False),
            sa.Column("updated_at", UTCDateTime(), nullable=False),
        ]
    if table == DIRTY:
        return [
            sa.Column("workspace_id", sa.String(64), primary_key=True),
            sa.Column("customer_id", sa.Integer, _customer_fk(naming), primary_key=True),
            sa.Column("mark", sa.BigInteger, nullable=False),
        ]
    if table == RFM:
        return [
            sa.Column("workspace_id", sa.String(64), primary_key=True),
            sa.Column("customer_id", sa.Integer, _customer_fk(naming), primary_key=True),
            sa.Column("first_at", UTCDateTime(), nullable=False),
            sa.Column("last_at", UTCDateTime(), nullable=False),
            sa.Column("orders", sa.Integer, nullable=False),
            sa.Column("purchase_days", sa.Integer, nullable=False),
            sa.Column("revenue", sa.Float, nullable=False),
            sa.Column("refunds", sa.Float, nullable=False),
            sa.Column("monetary", sa.Float, nullable=False),
            sa.Column("unconverted", sa.Integer, nullable=False),
            sa.Column("r_score", sa.SmallInteger, nullable=False),
            sa.Column("f_score", sa.SmallInteger, nullable=False),
            sa.Column("m_score", sa.SmallInteger, nullable=False),
            sa.Column("grp", sa.String(32), nullable=False),
            sa.Column("computed_at", UTCDateTime(), nullable=False),
            sa.Index(f"ix_{name}_ws_group", "workspace_id", "grp"),
        ]
    if table == CLV:
        return [
            sa.Column("workspace_id", sa.String(64), primary_key=True),
            sa.Column("customer_id", sa.Integer, _customer_fk(naming), primary_key=True),
            sa.Column("frequency", sa.Integer, nullable=False),
            sa.Column("recency_days", sa.Float, nullable=False),
            sa.Column("age_days", sa.Float, nullable=False),
            sa.Column("avg_value", sa.Float, nullable=False),
            sa.Column("p_alive", sa.Float, nullable=False),
            sa.Column("purchases_12m", sa.Float, nullable=False),
            sa.Column("expected_value", sa.Float, nullable=False),
            sa.Column("value_12m", sa.Float, nullable=False),
            sa.Column("computed_at", UTCDateTime(), nullable=False),
        ]
    if table == STATE:
        return [
            sa.Column("workspace_id", sa.String(64), primary_key=True),
            sa.Column("name", sa.String(32), primary_key=True),
            sa.Column("data", sa.JSON, nullable=False),
            sa.Column("updated_at", UTCDateTime(), nullable=False),
        ]
    raise KeyError(table)


def define_tables(metadata: sa.MetaData, naming: Naming) -> None:
    """Define the plugin's tables on ``metadata`` (once; later calls do nothing)."""
    for table in TABLES:
        name = naming.table(table)
        key = f"{naming.schema}.{name}" if naming.schema else name
        if key not in metadata.tables:
            sa.Table(name, metadata, *columns(naming, table), schema=naming.schema)
