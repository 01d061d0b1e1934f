"""CLV: the models against the published CDNOW figures, bad input, predictions on ecrm's data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sqlalchemy as sa
from ecrm_analytics.models import FitError, fit_bgnbd, fit_gamma_gamma

from . import cdnow


def test_bgnbd_and_gamma_gamma_match_the_published_cdnow_fits() -> None:
    x, t_x, T, m = cdnow.calibration_summary()
    assert len(x) == 2357
    bg = fit_bgnbd(x, t_x, T)
    for got, want in ((bg.r, 0.243), (bg.alpha, 4.414), (bg.a, 0.793), (bg.b, 2.426)):
        assert got == pytest.approx(want, rel=0.01)
    gg = fit_gamma_gamma(x, m)
    assert gg.customers == 946
    for got, want in ((gg.p, 6.25), (gg.q, 3.74), (gg.v, 15.44)):
        assert got == pytest.approx(want, rel=0.01)
    # predictions are finite and sensible
    p = bg.p_alive(x, t_x, T)
    e = bg.expected_purchases(39, x, t_x, T)
    assert np.all((p >= 0) & (p <= 1)) and np.all(np.isfinite(e)) and np.all(e >= 0)
    assert p[x == 0].tolist() == [1.0] * int((x == 0).sum())
    # the holdout (weeks 40-78): total predicted repeat purchases close to the actual
    assert 1000 < e.sum() < 2500


@pytest.mark.parametrize(
    ("x", "t_x", "T", "problem"),
    [
        ([], [], [], "no customers"),
        ([0, 0, 0], [0, 0, 0], [5, 6, 7], "no customer bought twice"),
        ([1, float("nan")], [1, 1], [2, 2], "NaN"),
        ([2, 1], [5, 1], [3, 2], "t_x <= T"),
    ],
)
def test_bgnbd_bad_input_says_so_with_the_statistics(x, t_x, T, problem) -> None:
    with pytest.raises(FitError) as err:
        fit_bgnbd(x, t_x, T)
    assert problem in str(err.value) and "data:" in str(err.value)
    assert "customers" in err.value.stats


def test_gamma_gamma_bad_input() -> None:
    with pytest.raises(FitError, match="fewer than two repeat buyers"):
        fit_gamma_gamma([0, 1], [10, 0])
    with pytest.raises(FitError, match="same order value"):
        fit_gamma_gamma([1, 2, 3], [10, 10, 10])


def _history(shop, n: int = 60, seed: int = 3) -> list[int]:
    rng = np.random.default_rng(seed)
    ids = [shop.customer(f"c{i}") for i in range(n)]
    rows = []
    for c in ids:
        start = float(rng.uniform(200, 700))
        for _ in range(int(rng.integers(1, 8))):
            rows.append((c, float(rng.uniform(0, start)), float(round(rng.uniform(5, 200), 2))))
        rows.append((c, start, 50.0))
    shop.history(rows)
    return ids


def test_refresh_fits_and_stores_predictions(shop) -> None:
    ids = _history(shop)
    result = shop.analytics.refresh(full=True, clv=True)
    assert result.clv_fitted, result.message
    table = shop.crm.db.tables["analytics_clv"]
    with shop.crm.db.read() as conn:
        rows = conn.execute(sa.select(table)).all()
    assert {r.customer_id for r in rows} == set(ids)
    for r in rows:
        for v in (r.p_alive, r.purchases_12m, r.expected_value, r.value_12m):
            assert math.isfinite(v) and v >= 0
        assert r.p_alive <= 1
    # the rows (written through the DB-API) are exactly the model's predictions; the time stored as the ORM does
    from ecrm_analytics import clv as clv_model

    model = clv_model.load_model(shop.crm)
    with shop.crm.db.read() as conn:
        cid, x, t_x, T, m = clv_model.summary(shop.crm, conn)
        stored_times = conn.exec_driver_sql("SELECT computed_at FROM ecrm_analytics_clv").scalars().all()
    p_alive, purchases, value, total = clv_model._predictions(model, x, t_x, T, m)
    by_id = {r.customer_id: r for r in rows}
    for i, c in enumerate(cid.tolist()):
        r = by_id[c]
        assert (r.frequency, r.recency_days, r.age_days, r.avg_value) == (int(x[i]), t_x[i], T[i], m[i])
        assert (r.p_alive, r.purchases_12m, r.expected_value, r.value_12m) == (
            p_alive[i],
            purchases[i],
            value[i],
            total[i],
        )
        assert r.computed_at == shop.clock()
    assert all(len(t) == len("2026-06-01 12:00:00.000000") for t in stored_times), stored_times[:3]
    info = shop.analytics.customer(ids[0])
    assert info["clv"]["p_alive"] is not None
    from ecrm_analytics.attributes import values

    attrs = values(shop.crm, [ids[0]])[ids[0]]  # read from the plugin's tables, not copied by default
    assert "rfm_group" not in shop.crm.customers.get(ids[0]).attributes
    assert attrs["rfm_group"] == info["rfm"]["group"] and attrs["clv_p_alive"] == pytest.approx(
        info["clv"]["p_alive"], abs=1e-4
    )
    state = shop.analytics.state("clv")
    assert set(state["bgnbd"]) >= {"r", "alpha", "a", "b"}
    from ecrm_analytics import report

    clv = report(shop.crm, "clv", top=5).to_dict()
    assert len(clv["rows"]) == 5 and clv["summary"]["bgnbd_r"] > 0
    hold = report(shop.crm, "clv_holdout", holdout_days=60)
    assert hold.summary["customers"] > 0 and hold.chart is not None and len(hold.rows) == 8


def test_a_fit_that_cannot_work_is_reported_not_raised(shop) -> None:
    a = shop.customer("a")
    shop.buy(a, 10, "10")  # one customer, one purchase: nothing to learn from
    result = shop.analytics.refresh(full=True, clv=True)
    assert not result.clv_fitted and "no customer bought twice" in result.message
    assert shop.analytics.customer(a)["clv"] is None


def test_new_purchases_update_predictions_with_the_stored_model(shop) -> None:
    ids = _history(shop)
    shop.analytics.refresh(full=True, clv=True)
    before = shop.analytics.customer(ids[0])["clv"]["purchases_12m"]
    for d in range(5):
        shop.buy(ids[0], d * 0.5, "30")
    shop.analytics.refresh()
    assert shop.analytics.customer(ids[0])["clv"]["purchases_12m"] > before
