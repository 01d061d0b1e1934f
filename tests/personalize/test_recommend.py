"""The recommenders, their refresh by the worker, the offline evaluation and the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner
from ecrm_personalize import personalize, plugin
from ecrm_personalize.recommend import Training, content, cooccurrence, popularity, skus_of

from ecrm_core import CRM
from ecrm_core.cli import make_cli
from ecrm_core.testing import make_crm

from .conftest import PRODUCTS, SECRET, Shop, make_shop


def test_popularity_counts_buyers_not_units() -> None:
    tr = Training()
    for cid in range(3):
        tr.add(cid, "purchase", ["A"])
    tr.add(9, "purchase", ["B", "B", "B"])
    assert popularity(tr)[:2] == [("A", 1.0), ("B", 1 / 3)]
    views = Training()
    views.add(1, "product_view", ["V"])
    assert popularity(views) == [("V", 1.0)]  # nothing bought yet: by viewers


def test_cooccurrence_is_normalised_and_excludes_the_item_itself() -> None:
    tr = Training()
    for cid in range(5):
        tr.add(cid, "purchase", ["A", "B"])
    tr.add(10, "purchase", ["A", "C"])
    for cid in range(20, 40):
        tr.add(cid, "purchase", ["C", "D"])
    co = cooccurrence(tr)
    assert [s for s, _ in co["A"]] == ["B", "C"]
    assert all(s != "A" for s, _ in co["A"])
    assert co["A"][0][1] > co["A"][1][1]
    assert abs(co["A"][0][1] - 5 / (6 * 5) ** 0.5) < 1e-6


def test_content_similarity_from_attributes() -> None:
    sims = content(PRODUCTS)
    assert {s[0] for s in sims["S1"][:5]} == {"S2", "S3", "S4", "S5", "S6"}
    assert all(s != "S1" for s, _ in sims["S1"])
    assert content(PRODUCTS[:1]) == {}


def test_skus_of_reads_the_common_shapes() -> None:
    assert skus_of("purchase", {"skus": ["A", 7, True, ""], "sku": "B", "items": [{"sku": "C"}, "x"]}) == [
        "B",
        "A",
        "7",
        "C",
    ]
    assert skus_of("purchase", ["not", "a", "mapping"]) == []


def test_refresh_runs_in_the_worker_only_when_something_changed(tmp_path: Path) -> None:
    from ecrm_personalize.recommend import last_meta, refresh_tick

    from ecrm_core import JobContext
    from ecrm_core.worker import JobRunner
    from ecrm_core.worker.inprocess import InProcessExecutor

    crm = make_crm(tmp_path / "w.db", plugins=[plugin], secret=SECRET)
    try:
        job = crm.registry.jobs["personalize.refresh"]
        assert job.exclusive
        p = personalize(crm)
        p.add_products(PRODUCTS)
        a = crm.customers.create(email="a@example.com").id
        crm.interactions.track("purchase", customer_id=a, properties={"skus": ["S1", "S2"]})
        InProcessExecutor(JobRunner(crm, jobs=["personalize.*"])).run(once=True)  # what `ecrm worker` runs
        meta = last_meta(crm)
        assert meta is not None and meta["report"]["lists"]["cooccurrence"] == 2
        p.define("home", k=2)
        items = [i.sku for i in p.decide(a, "home").items]
        assert items and not {"S1", "S2"} & set(items)  # the worker's lists serve decisions
        ctx = JobContext(crm=crm, job=job, workspace=crm.workspace)
        result = refresh_tick(ctx)
        assert result.done == 0 and "current" in (result.message or "")
        crm.interactions.track("purchase", customer_id=a, properties={"skus": ["H1"]})
        assert refresh_tick(ctx).done > 0
        assert refresh_tick(ctx).done == 0
        p.add_products([{"sku": "N1", "title": "New running shoe", "category": "shoes"}])
        assert refresh_tick(ctx).done > 0  # the catalogue changed
    finally:
        crm.close()


def test_offline_evaluation_against_popularity(crm_factory: Callable[..., CRM]) -> None:
    shop = make_shop(crm_factory)
    # whoever buys S_i later buys H_i; a few go on to B_i (they teach the S_i-H_i pair)
    for i in range(1, 7):
        for n in range(5 if i != 3 else 10):
            cid = shop.customer()
            shop.buy(cid, f"S{i}")
            shop.buy(cid, f"H{i}")
            if n < 2:
                shop.buy(cid, f"B{i}")
    ev = shop.p.evaluate(k=2)
    by = {s.recommender: s for s in ev.scores}
    assert ev.customers == 5 * 5 + 10
    # S_i predicts H_i for the 3 (or 8) who stopped there; nobody saw B_i bought before
    assert abs(by["cooccurrence"].hit_rate - (5 * 3 + 8) / 35) < 1e-9
    assert by["popular"].hit_rate < by["cooccurrence"].hit_rate
    assert by["cooccurrence"].coverage > by["popular"].coverage
    assert by["cooccurrence"].novelty > by["popular"].novelty
    assert by["auto"].hit_rate >= by["cooccurrence"].hit_rate
    chart = ev.chart()
    assert chart.categories == ("popular", "cooccurrence", "content", "recent", "auto")


def test_evaluate_and_refresh_from_the_command_line(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    crm = make_crm(db, plugins=[plugin], secret=SECRET)
    shop = Shop(crm, __import__("ecrm_core.testing", fromlist=["FakeClock"]).FakeClock())
    shop.p.add_products(PRODUCTS)
    for i in range(1, 4):
        for _ in range(2):
            cid = shop.customer()
            shop.buy(cid, f"S{i}")
            shop.buy(cid, f"H{i}")
    cust = shop.customer(name="Cli")
    crm.close()
    cli = make_cli(plugins=[plugin], entrypoints=False)
    run = CliRunner(env={"ECRM_SECRET": SECRET})
    base = ["--db", f"sqlite:///{db}", "personalize"]
    r = run.invoke(cli, [*base, "refresh"])
    assert r.exit_code == 0, r.output
    assert "lists" in r.output and "interactions" in r.output
    chart = tmp_path / "eval.svg"
    r = run.invoke(cli, [*base, "evaluate", "--k", "3", "--chart", str(chart)])
    assert r.exit_code == 0, r.output
    assert "hit-rate@3" in r.output and chart.read_text().lstrip().startswith("<?xml")
    r = run.invoke(cli, [*base, "evaluate", "--json"])
    assert json.loads(r.output)["scores"][0]["recommender"] == "popular"
    r = run.invoke(cli, [*base, "decide", "nowhere", "--customer", str(cust)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["fallback"] == "unknown_placement"
    r = run.invoke(cli, [*base, "decide", "nowhere", "--context", "{not json"])
    assert r.exit_code != 0 and "not JSON" in r.output
    r = run.invoke(cli, [*base, "arms", "nowhere"])
    assert r.exit_code == 0
    r = run.invoke(cli, [*base, "uplift", "nowhere"])
    assert json.loads(r.output)["groups"]["control"]["impression"] == 0


def test_the_sqlite_reader_gives_what_the_generic_reader_gives(tmp_path: Path) -> None:
    """read_baskets decodes chunks with msgspec; odd shapes (a boolean sku, an item that is not an
    object, a too-long sku) fall back to skus_of: the pairs are the same as the row-by-row reader's."""
    from ecrm_personalize.recommend import Baskets, Training, _chunk_skus, history_rows, read_baskets

    crm = make_crm(tmp_path / "r.db", plugins=[plugin], secret=SECRET)
    try:
        ids = [crm.customers.create(email=f"r{i}@example.com").id for i in range(4)]
        shapes: list[dict[str, object]] = [
            {"skus": ["A", "B"]},
            {"sku": "C", "category": "x"},
            {"items": [{"sku": "D", "qty": 2}, {"sku": 7}]},
            {"skus": ["E", True, "", "x" * 201], "sku": False, "items": ["no", {"sku": "F"}]},
            {"other": 1},
        ]
        for n, props in enumerate(shapes):
            crm.interactions.track("purchase", customer_id=ids[n % 4], properties=props)
        crm.interactions.track("product_view", customer_id=ids[0], properties={"sku": "V"})

        def pairs(b: Baskets) -> set[tuple[int, str]]:
            return {(int(c), b.names[p]) for c, p in zip(*b.bought, strict=True)}

        fast = read_baskets(crm)
        tr = Training()
        for cid, kind, skus, _at in history_rows(crm):
            tr.add(cid, kind, skus)
        assert pairs(fast) == pairs(Baskets.of(tr))
        assert {s for _, s in pairs(fast)} == {"A", "B", "C", "D", "7", "E", "F"}
        # the typed (msgspec) path alone, on the shapes it accepts, agrees with skus_of
        good = [(1, json.dumps(p)) for p in shapes[:3] + shapes[4:]]
        assert _chunk_skus(good)[1] == [skus_of("purchase", p) for p in shapes[:3] + shapes[4:]]
    finally:
        crm.close()
