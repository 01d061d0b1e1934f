"""Market-basket analysis: which products (or categories) are bought together — the input of cross-sell.

A **basket** is one purchase with at least one item (see
:mod:`ecrm_analytics.items` for where the items come from).  For a rule
``A → B``:

* ``support`` = baskets containing A and B ÷ baskets;
* ``confidence`` = baskets containing A and B ÷ baskets containing A (how
  often a buyer of A also takes B);
* ``lift`` = confidence ÷ (baskets containing B ÷ baskets): above 1, A makes
  B more likely than it is on average.

Two ways to find the rules:

* ``method="pairs"`` (the default): one item → one item, counted exactly as a
  sparse co-occurrence matrix (``Xᵀ·X`` with scipy over the basket-by-item
  incidence matrix, infrequent items pruned first); a few seconds for
  millions of purchases;
* ``method="fpgrowth"``: itemsets of up to ``max_len`` items with mlxtend's
  FP-growth (``pip install 'ecrm-analytics[mining]'``), so rules like
  ``{A, B} → C``; slower, for deeper analysis.

Both give the same single-item rules (a test checks it).  Results can be
stored (:func:`save`, table ``analytics_basket_rules``) to drive cross-sell:
:func:`recommend` (what to offer a customer next) and
:func:`cross_sell` (who bought the antecedents but not the consequent, as a
static segment an offer or a campaign targets).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from attrs import field, frozen
from ecrm_core.errors import ValidationError

from .common import Report
from .items import UNCATEGORIZED, Baskets, catalogue, categorize, read_baskets
from .reports import Param, ReportSpec, register

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    from ecrm_core.crm import CRM

__all__ = [
    "BasketRule",
    "BasketRules",
    "LEVELS",
    "MAX_BASKET_ITEMS",
    "MAX_PAIRS",
    "METHODS",
    "basket_rules",
    "cross_sell",
    "mine",
    "recommend",
    "save",
    "stored",
]

Level = Literal["product", "category"]
LEVELS: tuple[str, ...] = ("product", "category")
METHODS: tuple[str, ...] = ("pairs", "fpgrowth")
#: at most this many rules are kept (best lift first)
MAX_RULES = 10_000
#: a purchase of more distinct items (at the analysed level) is not a shopping basket: it is left out of the
#: analysis and counted (``oversized_baskets``), so one such purchase cannot make the pair count quadratic
MAX_BASKET_ITEMS = 500
#: at most this many item pairs (itemsets with FP-growth) may be counted; beyond, ``min_support`` is too low for
#: the data and is refused naming the lowest support that fits (the count's memory grows with the pairs)
MAX_PAIRS = 5_000_000


def _fraction(name: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValidationError(name, value, "not a fraction from 0 to 1", f"write e.g. {name}=0.01")
        return float(value)

    return check


@frozen
class BasketRule:
    """``antecedent → consequent`` with its support, confidence, lift and basket count."""

    antecedent: tuple[str, ...] = field(converter=tuple)
    consequent: tuple[str, ...] = field(converter=tuple)
    support: float
    confidence: float
    lift: float
    count: int

    def describe(self) -> str:
        return f"{' + '.join(self.antecedent)} → {' + '.join(self.consequent)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "antecedent": list(self.antecedent),
            "consequent": list(self.consequent),
            "support": self.support,
            "confidence": self.confidence,
            "lift": self.lift,
            "count": self.count,
        }


@frozen
class BasketRules:
    """The rules of one analysis and what they were computed from.

    ``baskets`` purchases had items (the denominator of ``support``);
    ``skipped`` purchases had no items array; ``items`` distinct items (or
    categories) were seen, ``frequent`` of them reached ``min_support``;
    ``uncategorized`` products had no category (level ``category`` only);
    ``oversized`` purchases held more than :data:`MAX_BASKET_ITEMS` distinct
    items and were left out (``baskets`` counts them; supports are shares of
    the others).
    """

    level: str
    method: str
    baskets: int
    items: int
    frequent: int
    rules: tuple[BasketRule, ...]
    min_support: float
    min_confidence: float
    min_lift: float
    skipped: int = 0
    uncategorized: int = 0
    computed_at: datetime | None = None
    oversized: int = 0

    def to_report(self, top: int = 20) -> Report:
        from ecrm_core.charts import Chart, Series

        shown = self.rules[:top]
        chart = None
        if shown:
            chart = Chart(
                kind="bar",
                title=f"Bought together ({self.level}): lift of the top rules",
                categories=[r.describe() for r in shown],
                series=[Series(name="lift", values=[r.lift for r in shown])],
                reference=1,
                y_label="lift",
                caption=(
                    f"{shown[0].describe()}: {shown[0].confidence:.0%} of the baskets with "
                    f"{' + '.join(shown[0].antecedent)} also hold {' + '.join(shown[0].consequent)}, "
                    f"{shown[0].lift:.1f} times the usual rate."
                )[:500],
            )
        return Report(
            name="basket",
            title=f"Market basket: {self.level} rules ({self.method})",
            columns=("antecedent", "consequent", "support", "confidence", "lift", "baskets"),
            rows=[
                (" + ".join(r.antecedent), " + ".join(r.consequent), r.support, r.confidence, r.lift, r.count)
                for r in shown
            ],
            summary=self.summary(),
            chart=chart,
            caption=self.caption(),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "method": self.method,
            "baskets": self.baskets,
            "items": self.items,
            "frequent_items": self.frequent,
            "rules": len(self.rules),
            "skipped_purchases": self.skipped,
            "uncategorized_products": self.uncategorized,
            "oversized_baskets": self.oversized,
        }

    def caption(self) -> str:
        if not self.baskets:
            return "No purchase lists its items: nothing to analyse (see the items_key option)."
        if not self.rules:
            return (
                f"No rule reaches support {self.min_support:g}, confidence {self.min_confidence:g} and lift "
                f"{self.min_lift:g} in {self.baskets:,} baskets: lower the thresholds."
            )
        return f"{len(self.rules):,} rules from {self.baskets:,} baskets of {self.items:,} {self.level}s."

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "rules": [r.to_dict() for r in self.rules]}


def _min_count(min_support: float, n: int) -> int:
    return max(1, math.ceil(min_support * n - 1e-9))


def _pair_bound(x: Any, method: str, max_len: int) -> int:
    """At most how many distinct item pairs (pairs) or itemsets (fpgrowth) mining ``x`` counts."""
    import numpy as np

    sizes = np.asarray(x.getnnz(axis=1), dtype=np.float64)
    if method == "fpgrowth":  # every itemset of 2..max_len items of each basket, at worst
        sets = sum(
            float(np.count_nonzero(sizes == s)) * sum(math.comb(int(s), k) for k in range(2, max_len + 1))
            for s in np.unique(sizes)
        )
        return int(min(sets, float(2**62)))
    m = float(x.shape[1])
    return int(min(float((sizes * (sizes - 1)).sum()), m * (m - 1)))


def _check_work(x: Any, counts: Any, n: int, min_support: float, method: str, max_len: int) -> None:
    """Refuse a ``min_support`` that would count more than :data:`MAX_PAIRS` pairs, naming the lowest that fits."""
    import numpy as np

    work = _pair_bound(x[:, np.flatnonzero(counts >= _min_count(min_support, n))], method, max_len)
    if work <= MAX_PAIRS:
        return
    levels = np.unique(counts[counts > 0])
    lo, hi = 0, len(levels)  # the first count level whose items fit (hi: none does but "no item")
    while lo < hi:
        mid = (lo + hi) // 2
        if _pair_bound(x[:, np.flatnonzero(counts >= levels[mid])], method, max_len) <= MAX_PAIRS:
            hi = mid
        else:
            lo = mid + 1
    fits = int(levels[lo]) if lo < len(levels) else int(levels[-1]) + 1
    raise ValidationError(
        "min_support", min_support, f"too low for these baskets: it would count up to {work:,} item "
        f"{'sets' if method == 'fpgrowth' else 'pairs'}, more than {MAX_PAIRS:,}",
        f"use min_support of at least {math.ceil(fits / n * 1e6) / 1e6:g}",
    )  # fmt: skip


def drop_oversized(basket: np.ndarray, item: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(basket, item, baskets kept, baskets left out)``: the purchases of more than :data:`MAX_BASKET_ITEMS`
    distinct items left out, the others numbered ``0..kept-1`` in their order."""
    import numpy as np

    if n == 0 or len(basket) == 0:
        return basket, item, n, 0
    sizes = np.bincount(np.asarray(basket, dtype=np.int64), minlength=n)  # the pairs are distinct (np.unique)
    big = sizes > MAX_BASKET_ITEMS
    dropped = int(big.sum())
    if not dropped:
        return basket, item, n, 0
    renumber = np.cumsum(~big) - 1
    keep = ~big[basket]
    return renumber[basket[keep]], item[keep], n - dropped, dropped


def _incidence(basket: np.ndarray, item: np.ndarray, n: int, m: int) -> Any:
    import numpy as np
    import scipy.sparse as sp

    x = sp.csr_matrix((np.ones(len(basket), dtype=np.int32), (basket, item)), shape=(n, m))
    x.sum_duplicates()
    x.data[:] = 1
    return x


def mine(
    basket: np.ndarray,
    item: np.ndarray,
    names: Sequence[str],
    n_baskets: int,
    *,
    min_support: float = 0.001,
    min_confidence: float = 0.1,
    min_lift: float = 1.0,
    max_rules: int = 500,
    method: str = "pairs",
    max_len: int = 3,
) -> tuple[list[BasketRule], int]:
    """Rules from (basket, item) code pairs: ``(rules best lift first, number of frequent items)``.

    The pure computation behind :func:`basket_rules` (no database): the
    benchmark and the tests call it directly.
    """
    import numpy as np

    n, m = int(n_baskets), len(names)
    if n == 0 or m == 0:
        return [], 0
    x = _incidence(basket, item, n, m)
    counts = np.asarray(x.getnnz(axis=0))
    min_count = _min_count(min_support, n)
    keep = np.flatnonzero(counts >= min_count)
    if len(keep) < 2:
        return [], len(keep)
    _check_work(x, counts, n, min_support, method, max_len)
    xk = x[:, keep]
    if method == "fpgrowth":
        return _fpgrowth(
            xk, [names[k] for k in keep], n, min_support, min_confidence, min_lift, max_rules, max_len
        ), len(keep)
    xk = xk[np.flatnonzero(xk.getnnz(axis=1) >= 2)]  # a basket of one item makes no pair
    co = (xk.T @ xk).tocoo()
    pick = (co.row != co.col) & (co.data >= min_count)
    a, c, both = keep[co.row[pick]], keep[co.col[pick]], co.data[pick].astype(np.int64)
    conf = np.round(both / counts[a], 12)  # rounded: equal ratios tie exactly, on every backend
    lift = np.round(both * n / (counts[a] * counts[c]), 12)
    ok = (conf >= min_confidence - 1e-12) & (lift >= min_lift - 1e-12)
    a, c, both, conf, lift = a[ok], c[ok], both[ok], conf[ok], lift[ok]
    order = np.lexsort((c, a, -both, -conf, -lift))[:max_rules]
    rules = [
        BasketRule(
            (names[a[k]],), (names[c[k]],), round(float(both[k] / n), 12), float(conf[k]), float(lift[k]), int(both[k])
        )
        for k in order
    ]
    return rules, len(keep)


def _fpgrowth(
    x: Any,
    names: list[str],
    n: int,
    min_support: float,
    min_confidence: float,
    min_lift: float,
    max_rules: int,
    max_len: int,
) -> list[BasketRule]:
    try:
        import pandas as pd
        from mlxtend.frequent_patterns import association_rules, fpgrowth
    except ImportError:
        raise ValidationError(
            "method", "fpgrowth", "needs mlxtend and pandas", "pip install 'ecrm-analytics[mining]', or method='pairs'"
        ) from None
    frame = pd.DataFrame.sparse.from_spmatrix(x.astype(bool), columns=names)
    itemsets = fpgrowth(frame, min_support=_min_count(min_support, n) / n - 1e-12, use_colnames=True, max_len=max_len)
    if itemsets.empty or itemsets["itemsets"].map(len).max() < 2:
        return []
    found = association_rules(itemsets, num_itemsets=n, metric="confidence", min_threshold=min_confidence - 1e-12)
    found = found[found["lift"] >= min_lift - 1e-12]
    rules = [
        BasketRule(
            tuple(sorted(row.antecedents)),
            tuple(sorted(row.consequents)),
            round(float(row.support), 12),
            round(float(row.confidence), 12),
            round(float(row.lift), 12),
            round(float(row.support) * n),
        )
        for row in found.itertuples()
    ]
    rules.sort(key=lambda r: (-r.lift, -r.confidence, -r.count, r.antecedent, r.consequent))
    return rules[:max_rules]


def to_level(baskets: Baskets, level: str, categories: Mapping[str, str] | None, crm: CRM) -> tuple[Any, ...]:
    import numpy as np

    if level == "product":
        return baskets.basket, baskets.item, list(baskets.items), 0
    given = dict(categories or {})
    lookup: dict[str, str] = {}
    if any(c is None and name not in given for name, c in zip(baskets.items, baskets.categories, strict=True)):
        lookup = catalogue(crm)  # the shop's own product views say what the items are
    lookup.update(given)
    per_item, missing = categorize(baskets, lookup)
    cat_names = sorted(set(per_item))
    index = {c: k for k, c in enumerate(cat_names)}
    cat_of = np.asarray([index[c] for c in per_item], dtype=np.int64)
    codes = baskets.basket * len(cat_names) + cat_of[baskets.item]
    codes = np.unique(codes)
    return codes // len(cat_names), codes % len(cat_names), cat_names, missing


def _check(level: str, method: str, max_rules: int, max_len: int) -> None:
    if level not in LEVELS:
        raise ValidationError("level", level, "not a level", f"use one of {', '.join(LEVELS)}")
    if method not in METHODS:
        raise ValidationError("method", method, "not a method", f"use one of {', '.join(METHODS)}")
    if isinstance(max_rules, bool) or not isinstance(max_rules, int) or not 1 <= max_rules <= MAX_RULES:
        raise ValidationError("max_rules", max_rules, f"not a whole number from 1 to {MAX_RULES}", "e.g. 500")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or not 2 <= max_len <= 5:
        raise ValidationError("max_len", max_len, "not a whole number from 2 to 5", "e.g. 3")


def basket_rules(
    crm: CRM,
    *,
    level: str = "product",
    min_support: float = 0.001,
    min_confidence: float = 0.1,
    min_lift: float = 1.0,
    max_rules: int = 500,
    method: str = "pairs",
    max_len: int = 3,
    items_key: str = "skus",
    since: datetime | None = None,
    until: datetime | None = None,
    segment: str | None = None,
    categories: Mapping[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BasketRules:
    """Association rules over the workspace's purchases (see the module docs).

    ``level="category"`` maps products to their categories first
    (``categories`` or the catalogue, :func:`ecrm_analytics.items.catalogue`);
    ``segment`` restricts to the purchases of its members; ``since``/``until``
    to a period (``until`` defaults to now: future-dated purchases are left
    out).  No purchases, or none with items, is an empty result, not an error.
    """
    min_support = _fraction("min_support")(min_support)
    min_confidence = _fraction("min_confidence")(min_confidence)
    if isinstance(min_lift, bool) or not isinstance(min_lift, (int, float)) or not 0 <= min_lift < 1e9:
        raise ValidationError("min_lift", min_lift, "not a number of at least 0", "write e.g. min_lift=1.2")
    _check(level, method, max_rules, max_len)
    baskets = read_baskets(crm, items_key=items_key, since=since, until=until, segment=segment, progress=progress)
    basket, item, names, missing = to_level(baskets, level, categories, crm)
    basket, item, analysed, oversized = drop_oversized(basket, item, baskets.size)
    rules, frequent = mine(
        basket,
        item,
        names,
        analysed,
        min_support=min_support,
        min_confidence=min_confidence,
        min_lift=float(min_lift),
        max_rules=max_rules,
        method=method,
        max_len=max_len,
    )
    return BasketRules(
        level=level,
        method=method,
        baskets=baskets.size,
        items=len(names),
        frequent=frequent,
        rules=tuple(rules),
        min_support=min_support,
        min_confidence=min_confidence,
        min_lift=float(min_lift),
        skipped=baskets.skipped,
        uncategorized=missing,
        oversized=oversized,
        computed_at=crm.now(),
    )


# ---------------------------------------------------------------------------
# stored rules: cross-sell
# ---------------------------------------------------------------------------


def save(crm: CRM, result: BasketRules) -> int:
    """Replace the stored rules of ``result.level`` with ``result``'s; return how many were stored."""
    from .schema import BASKET_RULES, STATE

    table = crm.db.tables[BASKET_RULES]
    state = crm.db.tables[STATE]
    now = crm.now()
    with crm.db.write() as conn:
        conn.execute(sa.delete(table).where(table.c.workspace_id == crm.workspace, table.c.level == result.level))
        if result.rules:
            conn.execute(
                sa.insert(table),
                [
                    {
                        "workspace_id": crm.workspace,
                        "level": result.level,
                        "position": k,
                        "antecedent": list(r.antecedent),
                        "consequent": list(r.consequent),
                        "support": r.support,
                        "confidence": r.confidence,
                        "lift": r.lift,
                        "count": r.count,
                        "computed_at": now,
                    }
                    for k, r in enumerate(result.rules)
                ],
            )
        name = f"basket_{result.level}"
        conn.execute(sa.delete(state).where(state.c.workspace_id == crm.workspace, state.c.name == name))
        conn.execute(
            sa.insert(state).values(
                workspace_id=crm.workspace,
                name=name,
                data={
                    **result.summary(),
                    "min_support": result.min_support,
                    "min_confidence": result.min_confidence,
                    "min_lift": result.min_lift,
                },
                updated_at=now,
            )
        )
    return len(result.rules)


def stored(crm: CRM, level: str = "product") -> list[BasketRule]:
    """The stored rules of ``level``, best first (empty before :func:`save`)."""
    from .schema import BASKET_RULES

    if level not in LEVELS:
        raise ValidationError("level", level, "not a level", f"use one of {', '.join(LEVELS)}")
    table = crm.db.tables[BASKET_RULES]
    with crm.db.read() as conn:
        rows = conn.execute(
            sa.select(table)
            .where(table.c.workspace_id == crm.workspace, table.c.level == level)
            .order_by(table.c.position)
        ).all()
    return [BasketRule(r.antecedent, r.consequent, r.support, r.confidence, r.lift, r.count) for r in rows]


def _owned(crm: CRM, level: str, customer_ids: Sequence[int] | None, items_key: str) -> dict[int, set[str]]:
    """What each customer bought (items or categories), read set-based."""
    baskets = read_baskets(crm, items_key=items_key, customer_ids=customer_ids)
    basket, item, names, _ = to_level(baskets, level, None, crm)
    buyers = baskets.customers[basket] if len(basket) else basket
    wanted = None if customer_ids is None else set(customer_ids)
    out: dict[int, set[str]] = {}
    for cid, code in zip(buyers.tolist(), item.tolist(), strict=True):
        if wanted is None or cid in wanted:
            out.setdefault(cid, set()).add(names[code])
    return out


def recommend(
    crm: CRM, customer_id: int, *, level: str = "product", limit: int = 5, items_key: str = "skus"
) -> list[dict[str, Any]]:
    """What to offer one customer next: the consequents of stored rules whose antecedent they bought.

    Items the customer already has are left out; each suggestion carries the
    best rule's confidence and lift and the items that led to it.  A
    customer without purchases (or a workspace without stored rules) gets
    an empty list.
    """
    target = crm.customers.get(customer_id).id  # merged ids resolve to the survivor
    rules = stored(crm, level)
    if not rules:
        return []
    owned = _owned(crm, level, [target], items_key).get(target, set())
    best: dict[str, dict[str, Any]] = {}
    for r in rules:
        if set(r.antecedent) <= owned:
            for c in r.consequent:
                if c in owned or c == UNCATEGORIZED:
                    continue
                cur = best.get(c)
                if cur is None or (r.confidence, r.lift) > (cur["confidence"], cur["lift"]):
                    best[c] = {"item": c, "confidence": r.confidence, "lift": r.lift, "because": list(r.antecedent)}
    ranked = sorted(best.values(), key=lambda d: (-d["confidence"], -d["lift"], d["item"]))
    return ranked[: max(0, int(limit))]


def cross_sell(
    crm: CRM,
    item: str,
    *,
    level: str = "product",
    min_confidence: float = 0.0,
    min_lift: float = 1.0,
    segment: str | None = None,
    items_key: str = "skus",
) -> list[int]:
    """Customers to offer ``item``: they bought the antecedent of a stored rule ``… → item``, never ``item``.

    With ``segment`` (a slug), the customers become the members of that
    static segment (created if needed; members no longer chosen leave it),
    so an offer (``eligibility='segment("cross-sell-bags")'``) or a campaign
    can target them.  Returns the customer ids, ascending.
    """
    rules = [
        r
        for r in stored(crm, level)
        if r.consequent == (item,) and r.confidence >= min_confidence and r.lift >= min_lift
    ]
    chosen: list[int] = []
    if rules:
        owned = _owned(crm, level, None, items_key)
        chosen = sorted(
            cid for cid, have in owned.items() if item not in have and any(set(r.antecedent) <= have for r in rules)
        )
    if segment is not None:
        _fill_static(crm, segment, chosen, f"cross-sell {item} ({level} rules)")
    return chosen


def _fill_static(crm: CRM, slug: str, ids: list[int], description: str) -> None:
    from ecrm_core.errors import NotFound

    try:
        seg = crm.segments.get(slug)
    except NotFound:
        crm.segments.create(slug, static=True, customer_ids=ids, description=description)
        return
    if seg.kind != "static":
        raise ValidationError("segment", slug, "is a dynamic segment", "name a static segment or a new slug")
    members = crm.db.tables["segment_members"]
    with crm.db.read() as conn:
        current = set(conn.execute(sa.select(members.c.customer_id).where(members.c.segment_id == seg.id)).scalars())
    new = set(ids)
    if current - new:
        crm.segments.remove(slug, sorted(current - new))
    if new - current:
        crm.segments.add(slug, sorted(new - current))


# ---------------------------------------------------------------------------
# the report (CLI, API, admin)
# ---------------------------------------------------------------------------


def basket_report(
    crm: CRM,
    level: str = "product",
    min_support: float = 0.001,
    min_confidence: float = 0.1,
    min_lift: float = 1.0,
    method: str = "pairs",
    segment: str = "",
    top: int = 20,
    save_rules: bool = False,
) -> Report:
    """The ``basket`` report: the best rules by lift (``save_rules`` stores them for cross-sell)."""
    from .progress import cli_progress

    with cli_progress("reading the purchases") as progress:
        result = basket_rules(
            crm,
            level=level,
            min_support=min_support,
            min_confidence=min_confidence,
            min_lift=min_lift,
            method=method,
            segment=segment or None,
            max_rules=max(top, 500),
            progress=progress,
        )
    if save_rules:
        save(crm, result)
    return result.to_report(top=top)


register(
    ReportSpec(
        name="basket",
        title="Market basket: products bought together",
        build=basket_report,
        description="Association rules (support, confidence, lift) over purchases: the input of cross-sell offers.",
        params=(
            Param(name="level", type=str, default="product", help="product or category", choices=LEVELS),
            Param(name="min_support", type=float, default=0.001, help="share of baskets", min=0, max=1),
            Param(name="min_confidence", type=float, default=0.1, help="P(consequent | antecedent)", min=0, max=1),
            Param(name="min_lift", type=float, default=1.0, help="rules at least this lift", min=0, max=1e6),
            Param(name="method", type=str, default="pairs", help="pairs (fast) or fpgrowth", choices=METHODS),
            Param(name="segment", type=str, default="", help="only the purchases of this segment's members"),
            Param(name="top", type=int, default=20, help="rules shown", min=1, max=1000),
            Param(name="save_rules", type=bool, default=False, help="store the rules for cross-sell", writes=True),
        ),
    )
)
