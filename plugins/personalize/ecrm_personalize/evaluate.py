"""Offline evaluation: replay held-out purchases against each recommender.

For every customer with at least ``min_purchases`` purchases, the last
``holdout`` purchases are held out; the models are trained on everything
else (all purchases and views before the first held-out one, for everyone),
exactly as :func:`~ecrm_personalize.recommend.refresh` would; then each
recommender ranks ``k`` products for the customer from their training
history, as a decision would (:mod:`ecrm_personalize.blend`, already bought
products excluded).  Per recommender:

* **hit-rate@k** — the share of customers for whom at least one held-out
  product is among the ``k``;
* **coverage** — the share of the catalogue recommended to anyone;
* **novelty** — the mean self-information ``-log2(p)`` of what was
  recommended, ``p`` the share of training customers who bought it (higher:
  less obvious items);

each beside the popularity baseline (``lift`` = hit-rate / popularity's).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Any

from attrs import frozen

from .blend import blend, list_keys
from .recommend import Training, catalogue, history_rows, train

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.charts import Chart
    from ecrm_core.crm import CRM

__all__ = ["RECOMMENDERS", "Evaluation", "Score", "evaluate"]

#: the recommenders evaluated (``auto`` is the blend decisions use)
RECOMMENDERS = ("popular", "cooccurrence", "content", "recent", "auto")


@frozen(kw_only=True)
class Score:
    recommender: str
    hit_rate: float
    coverage: float
    novelty: float
    lift: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "recommender": self.recommender,
            "hit_rate": round(self.hit_rate, 6),
            "coverage": round(self.coverage, 6),
            "novelty": round(self.novelty, 4),
            "lift": None if self.lift is None else round(self.lift, 4),
        }


@frozen(kw_only=True)
class Evaluation:
    """The result of :func:`evaluate`: one :class:`Score` per recommender."""

    k: int
    customers: int
    products: int
    scores: tuple[Score, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "customers": self.customers,
            "products": self.products,
            "scores": [s.to_dict() for s in self.scores],
        }

    def chart(self) -> Chart:
        """Hit-rate@k and coverage per recommender (an :class:`ecrm_core.charts.Chart`)."""
        from ecrm_core.charts import Chart, Series

        names = [s.recommender for s in self.scores]
        return Chart(
            kind="bar",
            title=f"Recommenders on held-out purchases (k={self.k}, {self.customers} customers)",
            x_label="recommender",
            y_label="share",
            categories=names,
            series=[
                Series(name=f"hit-rate@{self.k}", values=[s.hit_rate for s in self.scores]),
                Series(name="coverage", values=[s.coverage for s in self.scores]),
            ],
            value_format="percent",
            caption="; ".join(
                f"{s.recommender}: novelty {s.novelty:.1f} bits" + (f", {s.lift:.2f}x popularity" if s.lift else "")
                for s in self.scores
            ),
        )


def evaluate(crm: CRM, *, k: int = 10, holdout: int = 1, min_purchases: int = 2) -> Evaluation:
    from ecrm_core.errors import ValidationError

    for name, value, lo, hi in (
        ("k", k, 1, 100),
        ("holdout", holdout, 1, 10),
        ("min_purchases", min_purchases, 2, 100),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValidationError(name, value, f"not a number between {lo} and {hi}", f"send e.g. {name}={lo}")
    if min_purchases <= holdout:
        raise ValidationError("min_purchases", min_purchases, "must exceed holdout", f"send at least {holdout + 1}")
    rows = sorted(history_rows(crm), key=lambda r: (r[0], r[3]))
    events: dict[int, list[tuple[str, list[str], Any]]] = {}
    for cid, kind, skus, at in rows:
        events.setdefault(cid, []).append((kind, skus, at))
    tr = Training()
    tests: dict[int, tuple[list[str], list[str], set[str]]] = {}
    for cid, evs in events.items():
        buys = [i for i, e in enumerate(evs) if e[0] == "purchase"]
        cut = buys[-holdout] if len(buys) >= min_purchases else len(evs)
        for kind, skus, _at in evs[:cut]:
            tr.add(cid, kind, skus)
        if cut < len(evs):
            held = {s for kind, skus, _at in evs[cut:] if kind == "purchase" for s in skus}
            past = evs[:cut]
            bought = list(dict.fromkeys(s for kind, skus, _ in reversed(past) if kind == "purchase" for s in skus))
            viewed = list(dict.fromkeys(s for kind, skus, _ in reversed(past) if kind != "purchase" for s in skus))
            held -= set(bought)
            if held:
                tests[cid] = (bought, viewed, held)
    products = catalogue(crm)
    lists = train(tr, products)
    buyers: Counter[str] = Counter()
    for basket in tr.bought.values():
        buyers.update(basket)
    n_train = max(len(tr.bought), 1)
    n_catalogue = max(len(products) or len(buyers), 1)
    scores = []
    for rec in RECOMMENDERS:
        hits = 0
        shown: set[str] = set()
        info = 0.0
        count = 0
        for bought, viewed, held in tests.values():
            sources = list_keys(rec, bought, viewed)
            top = blend(rec, sources, lists, viewed, k, set(bought), limit=k)
            skus = [c.sku for c in top]
            hits += bool(held & set(skus))
            shown.update(skus)
            for s in skus:
                info += -math.log2(max(buyers.get(s, 0), 0.5) / n_train)
            count += len(skus)
        n = max(len(tests), 1)
        scores.append(
            Score(
                recommender=rec,
                hit_rate=hits / n,
                coverage=len(shown) / n_catalogue,
                novelty=info / count if count else 0.0,
                lift=None,
            )
        )
    base = scores[0].hit_rate
    scores = [
        Score(
            recommender=s.recommender,
            hit_rate=s.hit_rate,
            coverage=s.coverage,
            novelty=s.novelty,
            lift=(s.hit_rate / base) if base else None,
        )
        for s in scores
    ]
    return Evaluation(k=k, customers=len(tests), products=n_catalogue, scores=tuple(scores))
