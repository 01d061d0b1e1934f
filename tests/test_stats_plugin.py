"""The first-party plugin ecrm-stats (``plugins/stats``): incremental per-customer aggregates."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from importlib.metadata import entry_points
from typing import Any

import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from ecrm_core import CRM
from ecrm_core.storage import UTCDateTime

ecrm_stats = pytest.importorskip("ecrm_stats", reason="install plugins/stats: pip install -e plugins/stats")
from ecrm_stats import plugin, store  # noqa: E402

Factory = Callable[..., CRM]
T0 = datetime(2025, 1, 1, tzinfo=UTC)
KINDS = ("purchase", "refund", "page_view", "click", "email_open")


def table_rows(crm: CRM, workspace: str | None = None) -> dict[tuple[str, int, str], tuple[Any, ...]]:
    """Every stats row, amounts rounded to the column's scale (SQLite sums in floating point)."""
    t = crm.db.tables["customer_stats"]
    q = sa.select(t)
    if workspace is not None:
        q = q.where(t.c.workspace_id == workspace)
    with crm.db.read() as conn:
        rows = conn.execute(q).all()
    scale = Decimal("0.000001")
    return {
        (ws, cid, kind): (n, None if amount is None else amount.quantize(scale), first, last)
        for ws, cid, kind, n, amount, first, last in rows
    }


def random_rows(
    rng: random.Random, customer_ids: list[int], n: int, sent: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``n`` random rows; some retry a keyed row sent before (same key, same payload)."""
    rows = []
    for _ in range(n):
        if sent and rng.random() < 0.15:
            rows.append(dict(rng.choice(sent)))
            continue
        kind = rng.choice(KINDS)
        tz = timezone(timedelta(hours=rng.choice((-5, 0, 2, 9))))
        row: dict[str, Any] = {
            "customer_id": rng.choice(customer_ids),
            "kind": kind,
            "occurred_at": (T0 + timedelta(seconds=rng.randrange(0, 90 * 86400))).astimezone(tz),
            "channel": rng.choice(("web", "email", None)),
        }
        if kind in ("purchase", "refund") and rng.random() < 0.9:
            row["amount"] = Decimal(rng.randrange(1, 100_000)) / 100
            row["currency"] = "EUR"
        if rng.random() < 0.5:
            row["idempotency_key"] = f"k{len(sent)}"
            sent.append(row)
        rows.append(row)
    return rows


def buy(customer_id: int, at: datetime, amount: str) -> dict[str, Any]:
    return {"customer_id": customer_id, "kind": "purchase", "occurred_at": at, "amount": amount, "currency": "EUR"}


@pytest.fixture
def stats_crm(crm_factory: Factory) -> CRM:
    return crm_factory(plugins=[plugin])


def make_customers(crm: CRM, n: int) -> list[int]:
    result = crm.customers.upsert_many([{"external_id": f"c{i}"} for i in range(n)])
    return list(result.created)


# ---------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------


def test_plugin_registers_table_and_migration_branch(stats_crm: CRM) -> None:
    info = stats_crm.plugins.info["stats"]
    assert info.status == "loaded"
    assert info.hook_api == ">=1.2,<2"
    assert set(info.hooks) >= {"ecrm_interactions_inserted", "ecrm_customers_merged", "ecrm_register_tables"}
    assert stats_crm.db.tables["customer_stats"].name == "ecrm_customer_stats"
    assert stats_crm.registry.migrations["ecrm_stats"].plugin == "stats"
    assert "stats_0001" in stats_crm.db.current_revisions()


def test_entry_point_is_declared() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group="ecrm.plugins")}
    assert eps.get("stats") == "ecrm_stats.plugin"


def test_loaded_through_entry_point(tmp_path: Any) -> None:
    crm = CRM(f"sqlite:///{tmp_path / 'ep.db'}", enable=["stats"])
    try:
        assert crm.plugins.info["stats"].source == "entrypoint"
        assert crm.plugins.info["stats"].status == "loaded"
        assert "customer_stats" in crm.db.tables
    finally:
        crm.close()


def test_importing_the_plugin_is_light() -> None:
    code = "import sys, ecrm_stats.plugin; print('sqlalchemy' in sys.modules, 'click' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_migration_matches_table_definition(stats_crm: CRM) -> None:
    table = stats_crm.db.tables["customer_stats"]
    with stats_crm.db.read() as conn:
        insp = sa.inspect(conn)
        columns = {c["name"]: c for c in insp.get_columns(table.name)}
        pk = insp.get_pk_constraint(table.name)["constrained_columns"]
        indexes = {i["name"]: i["column_names"] for i in insp.get_indexes(table.name)}
        fks = insp.get_foreign_keys(table.name)
    assert list(columns) == [c.name for c in table.columns]
    assert {n: c["nullable"] for n, c in columns.items()} == {c.name: c.nullable for c in table.columns}
    assert pk == [c.name for c in table.primary_key.columns]
    assert indexes == {i.name: [c.name for c in i.columns] for i in table.indexes}
    assert [(fk["referred_table"], fk["constrained_columns"]) for fk in fks] == [("ecrm_customers", ["customer_id"])]


def test_fast_sqlite_datetimes_match_the_column_type() -> None:
    engine = sa.create_engine("sqlite://")
    column_type = UTCDateTime()
    process = column_type.dialect_impl(engine.dialect).bind_processor(engine.dialect)
    assert process is not None
    for value in (
        T0,
        datetime(2025, 3, 30, 1, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-5))),
        datetime(1999, 12, 31, 23, 0, 0, 1, tzinfo=timezone(timedelta(hours=9, minutes=30))),
    ):
        assert store._sqlite_datetime(value) == process(value)


def test_table_prefix_is_respected(crm_factory: Factory) -> None:
    crm = crm_factory(plugins=[plugin], table_prefix="x_")
    assert crm.db.tables["customer_stats"].name == "x_customer_stats"
    with crm.db.read() as conn:
        names = set(sa.inspect(conn).get_table_names())
    assert "x_customer_stats" in names
    assert not any(n.startswith("ecrm_") for n in names)
    (cid,) = make_customers(crm, 1)
    crm.interactions.track_many([buy(cid, T0, "10.50")])
    s = ecrm_stats.stats_for(crm, cid)
    assert s["purchase"].count == 1
    assert s["purchase"].amount_sum == Decimal("10.5")


# ---------------------------------------------------------------------------
# incremental maintenance
# ---------------------------------------------------------------------------


def test_incremental_stats_equal_a_rebuild(stats_crm: CRM) -> None:
    rng = random.Random(20261123)
    customers = make_customers(stats_crm, 40)
    sent: list[dict[str, Any]] = []
    duplicates = 0
    for call in range(12):
        rows = random_rows(rng, customers, rng.randrange(1, 400), sent)
        result = stats_crm.interactions.track_many(rows, atomic=call % 2 == 0, batch_size=rng.choice((1, 7, 50, 5000)))
        duplicates += result.duplicates
    assert duplicates > 0
    stats_crm.interactions.track("page_view", customer_id=customers[0], occurred_at=T0 - timedelta(days=1))
    assert not stats_crm.plugins.failures
    incremental = table_rows(stats_crm)
    assert sum(r[0] for r in incremental.values()) == stats_crm.interactions.count()
    assert store.rebuild(stats_crm) == len(incremental)
    assert table_rows(stats_crm) == incremental


def test_sql_and_python_aggregation_agree(crm_factory: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """On SQLite a batch carries its id range and is grouped by SQLite; without
    one (other backends) the plugin aggregates the batch's columns itself."""
    from ecrm_core import InteractionBatch

    def run(crm: CRM) -> dict[tuple[str, int, str], tuple[Any, ...]]:
        rng = random.Random(7)
        customers = make_customers(crm, 30)
        sent: list[dict[str, Any]] = []
        for call in range(6):
            rows = random_rows(rng, customers, 300, sent)
            crm.interactions.track_many(rows, atomic=call % 2 == 0, batch_size=rng.choice((1, 50, 5000)))
        assert not crm.plugins.failures
        return table_rows(crm)

    seen: list[range | None] = []
    apply = store.apply_batch

    def spy(crm: CRM, batch: InteractionBatch, conn: Any = None) -> int:
        seen.append(batch.ids)
        return apply(crm, batch, conn)

    monkeypatch.setattr(store, "apply_batch", spy)
    in_sql = run(crm_factory(plugins=[plugin]))
    assert seen and all(ids is not None for ids in seen)

    original = InteractionBatch.from_tuples.__func__  # type: ignore[attr-defined]

    def without_ids(cls: type[InteractionBatch], *args: Any, ids: range | None = None) -> InteractionBatch:
        return original(cls, *args, ids=None)  # type: ignore[no-any-return]

    monkeypatch.setattr(InteractionBatch, "from_tuples", classmethod(without_ids))
    seen.clear()
    python_crm = crm_factory(plugins=[plugin])
    in_python = run(python_crm)
    assert seen and all(ids is None for ids in seen)
    assert in_python == in_sql
    assert store.rebuild(python_crm) == len(in_python) and table_rows(python_crm) == in_python


def test_the_range_upsert_reads_the_batch_by_rowid(stats_crm: CRM) -> None:
    """The per-batch SQL must read the batch's id range, not scan an index of the
    whole workspace (which SQLite, without ANALYZE, would pick for a workspace
    condition): its cost must not grow with the table."""
    with stats_crm.db.read() as conn:
        sql = store._prepared_range_upsert(
            conn, stats_crm.db.tables["customer_stats"], stats_crm.db.tables["interactions"]
        )
        plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, (1, 10)).all())
    assert "INTEGER PRIMARY KEY" in plan and "ws_customer_time" not in plan, plan


def test_values_of_one_customer(stats_crm: CRM) -> None:
    cid, other = make_customers(stats_crm, 2)
    paris = timezone(timedelta(hours=2))
    stats_crm.interactions.track_many(
        [
            buy(cid, T0 + timedelta(days=3), "19.99"),
            buy(cid, T0, "0.01"),
            {"customer_id": cid, "kind": "page_view", "occurred_at": datetime(2025, 1, 2, 1, 0, tzinfo=paris)},
            {"customer_id": other, "kind": "page_view", "occurred_at": T0},
        ]
    )
    stats_crm.interactions.track_many(
        [buy(cid, T0 + timedelta(days=9), "5")],
        atomic=False,
    )
    s = ecrm_stats.stats_for(stats_crm, cid)
    assert set(s.by_kind) == {"purchase", "page_view"}
    assert s["purchase"].count == 3
    assert s["purchase"].amount_sum == Decimal("25.00")
    assert s["purchase"].first_at == T0
    assert s["purchase"].last_at == T0 + timedelta(days=9)
    assert s["page_view"].amount_sum is None
    assert s["page_view"].first_at == datetime(2025, 1, 1, 23, 0, tzinfo=UTC)
    assert s["page_view"].first_at.tzinfo is not None
    assert (s.frequency(), s.monetary(), s.recency()) == (3, Decimal("25"), T0 + timedelta(days=9))
    assert s.count == 4
    assert s.first_at == T0


def test_idempotent_retries_are_counted_once(stats_crm: CRM) -> None:
    (cid,) = make_customers(stats_crm, 1)
    row = {**buy(cid, T0, "3"), "idempotency_key": "o-1"}
    stats_crm.interactions.track_many([row])
    result = stats_crm.interactions.track_many([row, row])
    assert result.duplicates == 2
    assert ecrm_stats.stats_for(stats_crm, cid)["purchase"].count == 1


def test_workspaces_are_separate(stats_crm: CRM) -> None:
    other = stats_crm.in_workspace("shop-b")
    (a,) = make_customers(stats_crm, 1)
    (b,) = make_customers(other, 1)
    stats_crm.interactions.track_many([{"customer_id": a, "kind": "click", "occurred_at": T0}])
    other.interactions.track_many([{"customer_id": b, "kind": "click", "occurred_at": T0}] * 2)
    assert set(table_rows(stats_crm)) == {("default", a, "click"), ("shop-b", b, "click")}
    assert ecrm_stats.stats_for(other, b)["click"].count == 2
    store.rebuild(stats_crm)  # this workspace only
    assert table_rows(stats_crm, "shop-b") == {("shop-b", b, "click"): (2, None, T0, T0)}


# ---------------------------------------------------------------------------
# merges
# ---------------------------------------------------------------------------


def test_merge_folds_stats_into_the_survivor(stats_crm: CRM) -> None:
    target, source, bystander = make_customers(stats_crm, 3)
    stats_crm.interactions.track_many(
        [
            buy(target, T0 + timedelta(days=5), "10"),
            {"customer_id": target, "kind": "click", "occurred_at": T0},
            buy(source, T0 + timedelta(days=1), "2.5"),
            buy(source, T0 + timedelta(days=8), "1"),
            {"customer_id": source, "kind": "page_view", "occurred_at": T0 + timedelta(days=2)},
            buy(bystander, T0, "99"),
        ]
    )
    before = table_rows(stats_crm)
    stats_crm.customers.merge(source, into=target)
    assert not stats_crm.plugins.failures
    s = ecrm_stats.stats_for(stats_crm, target)
    assert s["purchase"].count == 3
    assert s["purchase"].amount_sum == Decimal("13.5")
    assert (s["purchase"].first_at, s["purchase"].last_at) == (T0 + timedelta(days=1), T0 + timedelta(days=8))
    assert s["page_view"].count == 1
    assert s["click"].count == 1
    rows = table_rows(stats_crm)
    assert not [k for k in rows if k[1] == source]
    assert rows[("default", bystander, "purchase")] == before[("default", bystander, "purchase")]
    # The tombstone's id resolves to the survivor; the folded stats equal a recomputation.
    assert ecrm_stats.stats_for(stats_crm, source) == s
    store.rebuild(stats_crm)
    assert table_rows(stats_crm) == rows
    # Later interactions recorded against the old id land on the survivor.
    stats_crm.interactions.track_many([{"customer_id": source, "kind": "click", "occurred_at": T0}])
    assert ecrm_stats.stats_for(stats_crm, target)["click"].count == 2


# ---------------------------------------------------------------------------
# failure isolation
# ---------------------------------------------------------------------------


def test_a_failing_stats_hook_keeps_the_interactions(stats_crm: CRM, monkeypatch: pytest.MonkeyPatch) -> None:
    (cid,) = make_customers(stats_crm, 1)
    apply = store.apply_batch

    def broken(crm: CRM, batch: Any, conn: Any) -> int:
        apply(crm, batch, conn)  # it wrote before failing: its savepoint takes that back
        raise RuntimeError("stats store unavailable")

    monkeypatch.setattr(store, "apply_batch", broken)
    rows = [{"customer_id": cid, "kind": "click", "occurred_at": T0 + timedelta(minutes=m)} for m in range(30)]
    result = stats_crm.interactions.track_many(rows, atomic=False, batch_size=10)
    assert result.stored == 30
    assert stats_crm.interactions.count() == 30
    failures = list(stats_crm.plugins.failures)
    assert len(failures) == 3  # one per committed batch
    assert {(f.plugin, f.hook) for f in failures} == {("stats", "ecrm_interactions_inserted")}
    assert "stats store unavailable" in failures[0].error
    assert ecrm_stats.stats_for(stats_crm, cid).by_kind == {}
    # The documented repair: a rebuild recomputes what the failed hook missed.
    monkeypatch.undo()
    store.rebuild(stats_crm)
    assert ecrm_stats.stats_for(stats_crm, cid)["click"].count == 30


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def test_cli_rebuild_and_show(stats_crm: CRM) -> None:
    (cid,) = make_customers(stats_crm, 1)
    stats_crm.interactions.track_many([buy(cid, T0, "7.25")])
    t = stats_crm.db.tables["customer_stats"]
    with stats_crm.db.write() as conn:
        conn.execute(sa.delete(t))

    cli = click.Group("ecrm")
    stats_crm.plugins.pm.hook.ecrm_register_commands(cli=cli)
    url = stats_crm.db.engine.url.render_as_string(hide_password=False)
    runner = CliRunner()
    result = runner.invoke(cli, ["stats", "--url", url, "rebuild"], env={"ECRM_PLUGINS": ""})
    assert result.exit_code == 0, result.output
    assert "rebuilt 1 stats row" in result.output
    result = runner.invoke(cli, ["stats", "--url", url, "show", str(cid)], env={"ECRM_PLUGINS": ""})
    assert result.exit_code == 0, result.output
    assert "purchase" in result.output and "7.25" in result.output
    result = runner.invoke(cli, ["stats", "--url", url, "show", "999"], env={"ECRM_PLUGINS": ""})
    assert result.exit_code != 0
    assert "999" in result.output


def test_cli_uses_the_crm_in_the_context(stats_crm: CRM) -> None:
    (cid,) = make_customers(stats_crm, 1)
    stats_crm.interactions.track_many([{"customer_id": cid, "kind": "click", "occurred_at": T0}])
    cli = click.Group("ecrm")
    plugin.ecrm_register_commands(cli)
    result = CliRunner().invoke(cli, ["stats", "show", str(cid)], obj=stats_crm)
    assert result.exit_code == 0, result.output
    assert "click" in result.output


def test_commands_in_the_ecrm_command_line(stats_crm: CRM) -> None:
    cli_module = pytest.importorskip("ecrm_core.cli")
    if not hasattr(cli_module, "make_cli"):
        pytest.skip("ecrm_core.cli has no make_cli")
    (cid,) = make_customers(stats_crm, 1)
    stats_crm.interactions.track_many([buy(cid, T0, "4.5")])
    url = stats_crm.db.engine.url.render_as_string(hide_password=False)
    cli = cli_module.make_cli(plugins=[plugin], entrypoints=False)
    runner = CliRunner()
    result = runner.invoke(cli, ["--db", url, "stats", "rebuild"])
    assert result.exit_code == 0, result.output
    assert "rebuilt 1 stats row" in result.output
    result = runner.invoke(cli, ["--db", url, "stats", "show", str(cid)])
    assert result.exit_code == 0, result.output
    assert "4.5" in result.output
