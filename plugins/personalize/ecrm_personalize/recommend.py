"""The recommenders, computed in bulk and stored as lists read by key.

:func:`refresh` reads purchases and product views once (streamed), builds

* ``popular`` — products by the number of distinct buyers (the baseline;
  by viewers when nothing was bought yet);
* ``i2i:<sku>`` — item-to-item co-occurrence from purchases ("customers who
  bought this also bought"): a sparse customer x product matrix ``X``,
  ``X^T X`` with the diagonal removed, normalised by ``sqrt(ni nj)``;
* ``content:<sku>`` — content similarity: TF-IDF (scikit-learn) over each
  product's title, category and attribute values, cosine similarity, in
  blocks so memory stays bounded;

and replaces the workspace's lists in one transaction.  "Recently viewed"
needs no model: the decision reads the person's own latest views.

The ``personalize.refresh`` job (``ecrm worker``) runs it when new
purchases or views arrived since the last refresh.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .schema import PRODUCTS, RECS

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM
    from ecrm_core.registry import JobContext, JobResult

__all__ = ["LIST_SIZE", "RefreshReport", "Training", "history_rows", "refresh", "refresh_tick", "train"]

#: how many items each stored list keeps
LIST_SIZE = 30
#: at most this many purchased products per customer enter the co-occurrence counts
MAX_BASKET = 200
META_KEY = "_meta"
HISTORY_KINDS = ("purchase", "product_view", "add_to_cart")


def skus_of(kind: str, props: Any) -> list[str]:
    """The product ids an interaction names: ``properties.sku``, ``properties.skus`` or ``properties.items[].sku``."""
    if not isinstance(props, Mapping):
        return []
    out: list[str] = []
    sku = props.get("sku")
    if isinstance(sku, str | int) and not isinstance(sku, bool):
        out.append(str(sku))
    many = props.get("skus")
    if isinstance(many, list):
        out += [str(s) for s in many[:MAX_BASKET] if isinstance(s, str | int) and not isinstance(s, bool)]
    items = props.get("items")
    if isinstance(items, list):
        for it in items[:MAX_BASKET]:
            if isinstance(it, Mapping) and isinstance(it.get("sku"), str | int):
                out.append(str(it["sku"]))
    return [s for s in out if 0 < len(s) <= 200]


def history_rows(crm: CRM, *, before: datetime | None = None) -> Iterator[tuple[int, str, list[str], datetime]]:
    """(customer id, kind, skus, occurred_at) of every purchase and product view, streamed."""
    t = crm.db.tables["interactions"]
    q = sa.select(t.c.customer_id, t.c.kind, t.c.properties, t.c.occurred_at).where(
        t.c.workspace_id == crm.workspace, t.c.kind.in_(HISTORY_KINDS)
    )
    if before is not None:
        q = q.where(t.c.occurred_at < before)
    with crm.db.read() as conn:
        for row in conn.execution_options(stream_results=True, yield_per=10_000).execute(q):
            skus = skus_of(row.kind, row.properties)
            if skus:
                yield row.customer_id, row.kind, skus, row.occurred_at


class Training:
    """What the recommenders learn from: baskets (bought) and views per customer."""

    def __init__(self) -> None:
        self.bought: dict[int, set[str]] = {}
        self.viewed: dict[int, set[str]] = {}

    def add(self, customer_id: int, kind: str, skus: Iterable[str]) -> None:
        target = self.bought if kind == "purchase" else self.viewed
        basket = target.setdefault(customer_id, set())
        for s in skus:
            if len(basket) < MAX_BASKET:
                basket.add(s)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[int, str, list[str], Any]]) -> Training:
        tr = cls()
        for cid, kind, skus, _at in rows:
            tr.add(cid, kind, skus)
        return tr


def popularity(tr: Training, size: int = 100) -> list[tuple[str, float]]:
    counts: Counter[str] = Counter()
    for basket in tr.bought.values():
        counts.update(basket)
    if not counts:
        for basket in tr.viewed.values():
            counts.update(basket)
    if not counts:
        return []
    top = counts.most_common(size)
    best = top[0][1]
    return [(s, n / best) for s, n in top]


def cooccurrence(tr: Training, size: int = LIST_SIZE) -> dict[str, list[tuple[str, float]]]:
    import numpy as np
    from scipy import sparse

    baskets = [b for b in tr.bought.values() if len(b) > 1]
    if not baskets:
        return {}
    index: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for r, basket in enumerate(baskets):
        for s in basket:
            rows.append(r)
            cols.append(index.setdefault(s, len(index)))
    names = list(index)
    x = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(baskets), len(names)))
    co = (x.T @ x).tocsr()
    counts = np.asarray(co.diagonal()).ravel()
    co.setdiag(0)
    co.eliminate_zeros()
    out: dict[str, list[tuple[str, float]]] = {}
    for i in range(co.shape[0]):
        start, end = co.indptr[i], co.indptr[i + 1]
        if start == end:
            continue
        js = co.indices[start:end]
        vals = co.data[start:end] / np.sqrt(counts[i] * counts[js])
        order = np.argsort(-vals, kind="stable")[:size]
        out[names[i]] = [(names[js[o]], float(vals[o])) for o in order]
    return out


def _doc(p: Mapping[str, Any]) -> str:
    parts = [str(p.get("title") or ""), str(p.get("category") or "")]
    attrs = p.get("attributes") or {}
    if isinstance(attrs, Mapping):
        for k, v in attrs.items():
            values = v if isinstance(v, list) else [v]
            parts += [f"{k}_{x}" if isinstance(x, bool | int | float) else str(x) for x in values[:20]]
    return " ".join(parts)


def content(
    products: list[Mapping[str, Any]], size: int = LIST_SIZE, block: int = 1000
) -> dict[str, list[tuple[str, float]]]:
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    if len(products) < 2:
        return {}
    docs = [_doc(p) for p in products]
    try:
        x = TfidfVectorizer(min_df=1, sublinear_tf=True, dtype=np.float32).fit_transform(docs)
    except ValueError:  # only stop words / empty documents
        return {}
    skus = [str(p["sku"]) for p in products]
    out: dict[str, list[tuple[str, float]]] = {}
    xt = x.T.tocsc()
    n = len(skus)
    keep = min(size, n - 1)
    for start in range(0, n, block):
        sims = (x[start : start + block] @ xt).toarray()
        for r in range(sims.shape[0]):
            sims[r, start + r] = -1.0
        top = np.argpartition(-sims, keep - 1, axis=1)[:, :keep] if keep < n else np.argsort(-sims, axis=1)
        for r in range(sims.shape[0]):
            cand = top[r]
            cand = cand[np.argsort(-sims[r, cand], kind="stable")]
            row = [(skus[j], float(sims[r, j])) for j in cand if sims[r, j] > 0]
            if row:
                out[skus[start + r]] = row
    return out


def catalogue(crm: CRM) -> list[dict[str, Any]]:
    t = crm.db.tables[PRODUCTS]
    with crm.db.read() as conn:
        rows = conn.execute(
            sa.select(t.c.sku, t.c.title, t.c.category, t.c.attributes).where(t.c.workspace_id == crm.workspace)
        ).all()
    return [dict(r._mapping) for r in rows]


class RefreshReport:
    """What :func:`refresh` computed: counts and timings per recommender."""

    def __init__(self) -> None:
        self.interactions = 0
        self.customers = 0
        self.products = 0
        self.lists: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "interactions": self.interactions,
            "customers": self.customers,
            "products": self.products,
            "lists": dict(self.lists),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def train(
    tr: Training, products: list[Mapping[str, Any]], report: RefreshReport | None = None
) -> dict[str, list[tuple[str, float]]]:
    """Every list, by key, from ``tr`` and the catalogue ``products``."""
    report = report or RefreshReport()
    lists: dict[str, list[tuple[str, float]]] = {}
    t0 = time.perf_counter()
    lists["popular"] = popularity(tr)
    report.seconds["popular"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    co = cooccurrence(tr)
    lists.update({f"i2i:{k}": v for k, v in co.items()})
    report.seconds["cooccurrence"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ct = content(products)
    lists.update({f"content:{k}": v for k, v in ct.items()})
    report.seconds["content"] = time.perf_counter() - t0
    report.lists = {"popular": len(lists["popular"]), "cooccurrence": len(co), "content": len(ct)}
    return lists


def refresh(crm: CRM, *, watermark: int | None = None) -> RefreshReport:
    """Recompute every list of the workspace and replace the stored ones (one transaction)."""
    report = RefreshReport()
    t0 = time.perf_counter()
    tr = Training()
    for cid, kind, skus, _at in history_rows(crm):
        report.interactions += 1
        tr.add(cid, kind, skus)
    report.customers = len(set(tr.bought) | set(tr.viewed))
    products = catalogue(crm)
    report.products = len(products)
    report.seconds["read"] = time.perf_counter() - t0
    lists = train(tr, products, report)
    t0 = time.perf_counter()
    now = crm.now()
    t = crm.db.tables[RECS]
    meta = {"report": report.to_dict(), "watermark": watermark}
    rows = [
        {
            "workspace_id": crm.workspace,
            "key": key[:260],
            "items": [[s, round(v, 6)] for s, v in items],
            "refreshed_at": now,
        }
        for key, items in lists.items()
    ]
    rows.append({"workspace_id": crm.workspace, "key": META_KEY, "items": meta, "refreshed_at": now})
    with crm.db.write() as conn:
        conn.execute(sa.delete(t).where(t.c.workspace_id == crm.workspace))
        for start in range(0, len(rows), 5000):
            conn.execute(sa.insert(t), rows[start : start + 5000])
    report.seconds["write"] = time.perf_counter() - t0

    report.seconds["total"] = sum(report.seconds.values())
    return report


def _watermark(crm: CRM) -> int:
    t = crm.db.tables["interactions"]
    with crm.db.read() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(t.c.id), 0)).where(
                    t.c.workspace_id == crm.workspace, t.c.kind.in_(HISTORY_KINDS)
                )
            ).scalar_one()
        )


def last_meta(crm: CRM) -> dict[str, Any] | None:
    t = crm.db.tables[RECS]
    with crm.db.read() as conn:
        row = conn.execute(
            sa.select(t.c["items"], t.c.refreshed_at).where(t.c.workspace_id == crm.workspace, t.c.key == META_KEY)
        ).first()
    if row is None:
        return None
    return {**(row.items or {}), "refreshed_at": row.refreshed_at}


def refresh_tick(ctx: JobContext) -> JobResult:
    """The ``personalize.refresh`` job: refresh when purchases or views arrived since the last run
    (or the catalogue changed), else do nothing."""
    from ecrm_core.registry import JobResult

    crm = ctx.crm
    mark = _watermark(crm)
    meta = last_meta(crm)
    products_changed = False
    if meta is not None:
        p = crm.db.tables[PRODUCTS]
        with crm.db.read() as conn:
            newest = conn.execute(
                sa.select(sa.func.max(p.c.updated_at)).where(p.c.workspace_id == crm.workspace)
            ).scalar()
        products_changed = newest is not None and newest > meta["refreshed_at"]
    if meta is not None and meta.get("watermark") == mark and not products_changed:
        return JobResult(done=0, message="recommendations are current")
    report = refresh(crm, watermark=mark)
    lists = sum(report.lists.values())
    return JobResult(
        done=lists,
        message=f"{lists} lists from {report.interactions} interactions in {report.seconds['total']:.1f} s",
    )


def novelty_of(popular: Mapping[str, float], sku: str, floor: float) -> float:
    """Self-information of recommending ``sku``: ``-log2`` of its share of buyers."""
    return -math.log2(max(popular.get(sku, 0.0), floor))
