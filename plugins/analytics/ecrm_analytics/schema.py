"""The plugin's tables, defined for the host's table prefix and schema.

* ``analytics_settings``: one row per workspace — the reporting currency and
  the conversion rates (see :mod:`ecrm_analytics.common`);
* ``analytics_dirty``: customers whose sales changed since their analytics
  were computed (marked in the core's ingest transaction, claimed by the
  worker job ``analytics.refresh``); ``mark`` changes on every new mark so a
  claim never deletes a mark that arrived while it ran;
* ``analytics_rfm``: one row per customer with at least one purchase —
  recency/frequency/monetary in the reporting currency, the three quintile
  scores and the named group;
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

__all__ = [
    "BASKET_RULES",
    "CLUSTERS",
    "CLV",
    "DIRTY",
    "NEEDS_TABLES",
    "RFM",
    "SALES_INDEX",
    "SETTINGS",
    "STATE",
    "TABLES",
    "columns",
    "define_tables",
    "sales_index",
]

SETTINGS = "analytics_settings"
DIRTY = "analytics_dirty"
RFM = "analytics_rfm"
CLV = "analytics_clv"
STATE = "analytics_state"
#: The tables of migration ``analytics_0001``, in creation order.
TABLES = (SETTINGS, DIRTY, RFM, CLV, STATE)

# Needs analysis (migration ``analytics_0002_needs``).
BASKET_RULES = "analytics_basket_rules"
CLUSTERS = "analytics_clusters"
#: The tables of migration ``analytics_0002_needs``, in creation order.
NEEDS_TABLES = (BASKET_RULES, CLUSTERS)


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
    if table == BASKET_RULES:
        return [
            sa.Column("workspace_id", sa.String(64), primary_key=True),
            sa.Column("level", sa.String(16), primary_key=True),
            sa.Column("position", sa.Integer, primary_key=True),
            sa.Column("antecedent", sa.JSON, nullable=False),
            sa.Column("consequent", sa.JSON, nullable=False),
            sa.Column("support", sa.Float, nullable=False),
            sa.Column("confidence", sa.Float, nullable=False),
            sa.Column("lift", sa.Float, nullable=False),
            sa.Column("count", sa.Integer, nullable=False),
            sa.Column("computed_at", UTCDateTime(), nullable=False),
        ]
    if table == CLUSTERS:
        return [
            sa.Column("workspace_id", sa.String(64), primary_key=True),
            sa.Column("customer_id", sa.Integer, _customer_fk(naming), primary_key=True),
            sa.Column("cluster", sa.SmallInteger, nullable=False),
            sa.Column("label", sa.String(200), nullable=False),
            sa.Column("distance", sa.Float, nullable=False),
            sa.Column("computed_at", UTCDateTime(), nullable=False),
            sa.Index(f"ix_{name}_ws_cluster", "workspace_id", "cluster"),
        ]
    raise KeyError(table)


#: The plugin's index on the core's interactions table (``{prefix}`` is the host's table prefix).
SALES_INDEX = "ix_{prefix}interactions_analytics_sales"
#: What the index covers: everything RFM reads, in the order a per-customer GROUP BY wants.
SALES_INDEX_COLUMNS = ("workspace_id", "customer_id", "occurred_at", "kind", "amount", "currency")
#: Only purchases and refunds are in it, so other interactions (page views…) cost it nothing.
SALES_INDEX_WHERE = "kind IN ('purchase', 'refund')"


def sales_index(naming: Naming) -> str:
    """The name of the plugin's partial covering index on the interactions table."""
    return SALES_INDEX.format(prefix=naming.prefix)


def define_tables(metadata: sa.MetaData, naming: Naming) -> None:
    """Define the plugin's tables on ``metadata`` (once; later calls do nothing), and its index on interactions.

    The index is partial (``kind IN ('purchase', 'refund')``) and covering:
    the RFM aggregate reads it in customer order without touching the rows;
    a page view or any other kind costs it nothing on ingest.
    """
    for table in (*TABLES, *NEEDS_TABLES):
        name = naming.table(table)
        key = f"{naming.schema}.{name}" if naming.schema else name
        if key not in metadata.tables:
            sa.Table(name, metadata, *columns(naming, table), schema=naming.schema)
    it_name = naming.table("interactions")
    interactions = metadata.tables.get(f"{naming.schema}.{it_name}" if naming.schema else it_name)
    if interactions is not None and not any(ix.name == sales_index(naming) for ix in interactions.indexes):
        where = sa.text(SALES_INDEX_WHERE)
        sa.Index(
            sales_index(naming),
            *(interactions.c[c] for c in SALES_INDEX_COLUMNS),
            sqlite_where=where,
            postgresql_where=where,
        )
