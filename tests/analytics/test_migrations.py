"""The migrations: a database from the early ``analytics_0001`` (an extra NOT NULL column, no sales index)
is brought to the current shape by ``analytics_0003_repair``; a current one is left as it is."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ecrm_analytics import analytics, plugin

from ecrm_core import CRM


def _shape(db: Path) -> tuple[list[str], list[str]]:
    con = sqlite3.connect(db)
    try:
        cols = [r[1] for r in con.execute("PRAGMA table_info(ecrm_analytics_rfm)")]
        idx = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE '%sales%'")]
    finally:
        con.close()
    return cols, idx


def test_repair_migration(tmp_path: Path) -> None:
    db = tmp_path / "crm.db"
    crm = CRM(f"sqlite:///{db}", plugins=[plugin], load_entrypoints=False)
    crm.upgrade()
    crm.close()
    current = _shape(db)
    assert "purchase_days" not in current[0] and current[1] == ["ix_ecrm_interactions_analytics_sales"]
    con = sqlite3.connect(db)
    con.execute("DROP INDEX ix_ecrm_interactions_analytics_sales")
    con.execute("ALTER TABLE ecrm_analytics_rfm ADD COLUMN purchase_days INTEGER NOT NULL DEFAULT 0")
    [version_table] = [
        r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%alembic%'")
    ]
    con.execute(f"UPDATE {version_table} SET version_num = 'analytics_0002_needs' "
                "WHERE version_num = 'analytics_0003_repair'")  # fmt: skip
    con.commit()
    con.close()
    crm = CRM(f"sqlite:///{db}", plugins=[plugin], load_entrypoints=False)
    try:
        crm.upgrade()
        assert _shape(db) == current
        c = crm.customers.create(email="a@example.com")
        crm.interactions.track("purchase", customer_id=c.id, amount="5", currency="EUR")
        assert analytics(crm).refresh(full=True).customers == 1
    finally:
        crm.close()
