"""The plugin's tables, defined for the host's table prefix and schema.

* ``personalize_products``: the catalogue the recommenders work on (sku,
  title, category, attributes, availability);
* ``personalize_placements``: where decisions are made (a home-page slot, an
  e-mail block) and how: strategies, recommender, alternatives, control share;
* ``personalize_recs``: the **precomputed** recommendation lists, one row per
  key (``popular``, ``i2i:<sku>``, ``content:<sku>``), written by the
  ``personalize.refresh`` job and read by key at decision time;
* ``personalize_arms``: the Thompson-sampling state, one row per placement,
  segment and alternative (``trials``, ``wins``), changed only by atomic
  ``UPDATE … SET trials = trials + n`` statements;
* ``personalize_outcomes``: impressions, clicks and conversions reported
  against a decision id, unique per (decision, event, item): a replay is a
  no-op;
* ``personalize_preferences``: what a customer told the preference centre.

:func:`columns` is used by both :func:`define_tables` and the migration,
so they cannot disagree.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from ecrm_core.storage import Naming, UTCDateTime

__all__ = ["ARMS", "OUTCOMES", "PLACEMENTS", "PREFERENCES", "PRODUCTS", "RECS", "TABLES", "columns", "define_tables"]

PRODUCTS = "personalize_products"
PLACEMENTS = "personalize_placements"
RECS = "personalize_recs"
ARMS = "personalize_arms"
OUTCOMES = "personalize_outcomes"
PREFERENCES = "personalize_preferences"
TABLES = (PRODUCTS, PLACEMENTS, RECS, ARMS, OUTCOMES, PREFERENCES)


def _ref(naming: Naming, table: str) -> str:
    name = naming.table(table)
    return f"{naming.schema}.{name}.id" if naming.schema else f"{name}.id"


def columns(naming: Naming, table: str) -> list[Any]:
    """Columns and constraints of one of the plugin's tables."""
    name = naming.table(table)
    ws = sa.Column("workspace_id", sa.String(64), primary_key=True)
    if table == PRODUCTS:
        return [
            ws,
            sa.Column("sku", sa.String(200), primary_key=True),
            sa.Column("title", sa.String(500), nullable=False),
            sa.Column("category", sa.String(200)),
            sa.Column("attributes", sa.JSON, nullable=False),
            sa.Column("available", sa.Boolean, nullable=False),
            sa.Column("updated_at", UTCDateTime(), nullable=False),
        ]
    if table == PLACEMENTS:
        return [
            ws,
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("config", sa.JSON, nullable=False),
            sa.Column("updated_at", UTCDateTime(), nullable=False),
        ]
    if table == RECS:
        return [
            ws,
            sa.Column("key", sa.String(260), primary_key=True),
            sa.Column("items", sa.JSON, nullable=False),
            sa.Column("refreshed_at", UTCDateTime(), nullable=False),
        ]
    if table == ARMS:
        return [
            ws,
            sa.Column("placement", sa.String(64), primary_key=True),
            sa.Column("segment", sa.String(130), primary_key=True),
            sa.Column("arm", sa.String(64), primary_key=True),
            sa.Column("trials", sa.BigInteger, nullable=False),
            sa.Column("wins", sa.BigInteger, nullable=False),
        ]
    if table == OUTCOMES:
        return [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("workspace_id", sa.String(64), nullable=False),
            sa.Column("decision", sa.String(40), nullable=False),
            sa.Column("event", sa.String(16), nullable=False),
            sa.Column("item", sa.String(200), nullable=False),
            sa.Column("placement", sa.String(64), nullable=False),
            sa.Column("grp", sa.String(16), nullable=False),
            sa.Column("segment", sa.String(130), nullable=False),
            sa.Column("arm", sa.String(64)),
            sa.Column(
                "customer_id", sa.Integer, sa.ForeignKey(_ref(naming, "customers"), ondelete="CASCADE"), nullable=True
            ),
            sa.Column("visitor", sa.String(64)),
            sa.Column("value", sa.Numeric(18, 4)),
            sa.Column("at", UTCDateTime(), nullable=False),
            sa.UniqueConstraint("workspace_id", "decision", "event", "item", name=f"uq_{name}_once"),
            sa.Index(f"ix_{name}_placement", "workspace_id", "placement", "grp", "event"),
            sa.Index(f"ix_{name}_customer", "customer_id"),
        ]
    if table == PREFERENCES:
        return [
            sa.Column(
                "customer_id",
                sa.Integer,
                sa.ForeignKey(_ref(naming, "customers"), ondelete="CASCADE"),
                primary_key=True,
            ),
            sa.Column("workspace_id", sa.String(64), nullable=False),
            sa.Column("data", sa.JSON, nullable=False),
            sa.Column("updated_at", UTCDateTime(), nullable=False),
        ]
    raise KeyError(table)


def define_tables(metadata: sa.MetaData, naming: Naming) -> None:
    """Define the tables on ``metadata`` (once; later calls do nothing)."""
    for table in TABLES:
        name = naming.table(table)
        key = f"{naming.schema}.{name}" if naming.schema else name
        if key not in metadata.tables:
            sa.Table(name, metadata, *columns(naming, table), schema=naming.schema)
