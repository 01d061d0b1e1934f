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
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from itertools import chain
from typing import TYPE_CHECKING, Any

import msgspec
import sqlalchemy as sa

from .cache import CATALOGUE_KEY, META_KEY
from .schema import PRODUCTS, RECS

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM
    from ecrm_core.registry import JobContext, JobResult

__all__ = [
    "LIST_SIZE",
    "Baskets",
    "RefreshReport",
    "Training",
    "history_rows",
    "read_baskets",
    "refresh",
    "refresh_tick",
    "train",
]

#: how many items each stored list keeps
LIST_SIZE = 30
#: at most this many purchased products per customer enter the co-occurrence counts
MAX_BASKET = 200

#: how many distinct ``properties`` texts the refresh's reader remembers decoded
MEMO_MAX = 500_000
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


class Baskets:
    """Who bought and who viewed what, as integer arrays: the recommenders' input.

    ``bought`` and ``viewed`` are ``(customer ids, product codes)`` pairs
    (numpy arrays, repeats allowed); ``names[code]`` is the product id.
    :meth:`matrix` turns a pair into the binary customer x product matrix.
    """

    def __init__(
        self,
        names: list[str],
        bought: tuple[Any, Any],
        viewed: tuple[Any, Any],
    ) -> None:
        self.names = names
        self.bought = bought
        self.viewed = viewed
        self._matrices: dict[str, Any] = {}

    @classmethod
    def of(cls, tr: Training | Baskets) -> Baskets:
        if isinstance(tr, Baskets):
            return tr
        import numpy as np

        index: dict[str, int] = {}

        def pairs(baskets: dict[int, set[str]]) -> tuple[Any, Any]:
            cs = [c for c, b in baskets.items() for _ in b]
            ps = [index.setdefault(s, len(index)) for b in baskets.values() for s in b]
            return np.asarray(cs, dtype=np.int64), np.asarray(ps, dtype=np.int64)

        bought = pairs(tr.bought)
        viewed = pairs(tr.viewed)
        return cls(list(index), bought, viewed)

    def matrix(self, which: str) -> Any:
        """Binary CSR matrix of ``which`` (``"bought"`` or ``"viewed"``): one row per customer, a 1 where
        they bought/viewed the product (at most :data:`MAX_BASKET` products per customer, the lowest
        codes).  Built once per :class:`Baskets` with one sort of the (customer, product) keys."""
        import numpy as np
        from scipy import sparse

        found = self._matrices.get(which)
        if found is not None:
            return found
        cids, codes = self.bought if which == "bought" else self.viewed
        n = max(len(self.names), 1)
        if not len(cids):
            x = sparse.csr_matrix((0, len(self.names)), dtype=np.float32)
        else:
            keys = np.sort(np.asarray(cids, dtype=np.int64) * n + np.asarray(codes, dtype=np.int64))
            keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]  # distinct (np.unique is slower)
            customers, cols = np.divmod(keys, n)
            starts = np.concatenate(([0], np.flatnonzero(np.diff(customers)) + 1))
            counts = np.diff(np.append(starts, len(keys)))
            if counts.max() > MAX_BASKET:
                pos = np.arange(len(keys)) - np.repeat(starts, counts)
                cols = cols[pos < MAX_BASKET]
                counts = np.minimum(counts, MAX_BASKET)
            indptr = np.concatenate(([0], np.cumsum(counts)))
            x = sparse.csr_matrix(
                (np.ones(len(cols), dtype=np.float32), cols.astype(np.int32), indptr),
                shape=(len(counts), len(self.names)),
            )
        self._matrices[which] = x
        return x


def popularity(tr: Training | Baskets, size: int = 100) -> list[tuple[str, float]]:
    import numpy as np

    b = Baskets.of(tr)
    x = b.matrix("bought")
    if not x.nnz:
        x = b.matrix("viewed")
    if not x.nnz:
        return []
    counts = np.asarray(x.getnnz(axis=0))
    order = np.argsort(-counts, kind="stable")[:size]
    order = order[counts[order] > 0]
    best = float(counts[order[0]])
    return [(b.names[i], float(counts[i]) / best) for i in order]


def cooccurrence(tr: Training | Baskets, size: int = LIST_SIZE) -> dict[str, list[tuple[str, float]]]:
    import numpy as np

    b = Baskets.of(tr)
    x = b.matrix("bought")
    x = x[np.diff(x.indptr) > 1]
    if not x.nnz:
        return {}
    co = (x.T.tocsr() @ x).tocsr()
    co.sort_indices()
    counts = np.asarray(co.diagonal(), dtype=np.float64)
    names = b.names
    out: dict[str, list[tuple[str, float]]] = {}
    for i in np.flatnonzero(np.diff(co.indptr)):
        start, end = co.indptr[i], co.indptr[i + 1]
        js = co.indices[start:end]
        keep = js != i  # not the item itself
        js = js[keep]
        if not len(js):
            continue
        vals = co.data[start:end][keep] / np.sqrt(counts[i] * counts[js])
        if len(vals) > size:  # the best `size`, ties in product order: as a full stable sort would give
            kth = np.partition(vals, len(vals) - size)[len(vals) - size]
            cand = np.flatnonzero(vals >= kth)
            order = cand[np.argsort(-vals[cand], kind="stable")][:size]
        else:
            order = np.argsort(-vals, kind="stable")
        out[names[i]] = [(names[j], float(v)) for j, v in zip(js[order].tolist(), vals[order].tolist(), strict=True)]
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
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -1.0
        top = np.argpartition(-sims, keep - 1, axis=1)[:, :keep] if keep < n else np.argsort(-sims, axis=1)
        vals = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")  # per row, as the row-by-row stable sort did
        top_list = np.take_along_axis(top, order, axis=1).tolist()
        vals_list = np.take_along_axis(vals, order, axis=1).tolist()
        for r, (js, vs) in enumerate(zip(top_list, vals_list, strict=True)):
            row = [(skus[j], v) for j, v in zip(js, vs, strict=True) if v > 0]
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
    tr: Training | Baskets, products: list[Mapping[str, Any]], report: RefreshReport | None = None
) -> dict[str, list[tuple[str, float]]]:
    """Every list, by key, from ``tr`` and the catalogue ``products``."""
    report = report or RefreshReport()
    lists: dict[str, list[tuple[str, float]]] = {}
    t0 = time.perf_counter()
    tr = Baskets.of(tr)
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


class _Item(msgspec.Struct):
    sku: str | int | None = None


class _Props(msgspec.Struct):
    """The shapes :func:`skus_of` reads, for msgspec's typed decoding (other keys are skipped)."""

    sku: str | int | None = None
    skus: list[str | int] | None = None
    items: list[_Item] | None = None


_DECODE_MANY = msgspec.json.Decoder(list[_Props])


def _chunk_skus(rows: list[tuple[int, Any]]) -> tuple[list[int], list[list[str]]]:
    """(customer ids, skus of each row) for rows of (customer id, properties JSON text).

    The whole chunk is decoded in one msgspec call into typed structs; a
    chunk holding any other shape (a boolean sku, an item that is not an
    object, invalid JSON) is read row by row with :func:`skus_of` instead,
    so both give the same answer.
    """
    cids = [r[0] for r in rows]
    texts = [r[1] if isinstance(r[1], str) else "null" for r in rows]
    try:
        decoded = _DECODE_MANY.decode(("[" + ",".join(texts) + "]").encode())
    except (msgspec.ValidationError, msgspec.DecodeError):
        import json

        out = []
        for t in texts:
            try:
                out.append(skus_of("purchase", json.loads(t)))
            except ValueError:
                out.append([])
        return cids, out
    result: list[list[str]] = []
    for p in decoded:
        got: list[str] = []
        if p.sku is not None:
            got.append(str(p.sku))
        if p.skus is not None:
            got += [str(x) for x in p.skus[:MAX_BASKET]]
        if p.items is not None:
            got += [str(it.sku) for it in p.items[:MAX_BASKET] if it.sku is not None]
        result.append([x for x in got if 0 < len(x) <= 200])
    return cids, result


def read_baskets(crm: CRM, report: RefreshReport | None = None) -> Baskets:
    """Every purchase (and, when nothing was bought yet, every view) of the workspace, as :class:`Baskets`.

    On SQLite the purchases are read in one pass in table order (sequential
    pages) on the DB-API cursor; each distinct ``properties`` text is decoded
    once (:func:`_chunk_skus`: msgspec, else :func:`skus_of`); views are read
    only when nothing was bought.  The report counts the purchases and views
    (``interactions``, one index count) and the customers whose purchases (or,
    before anything was bought, views) name products.  Other databases
    stream :func:`history_rows` (``customers``: with a purchase or a view).
    """
    report = report if report is not None else RefreshReport()
    if crm.db.engine.dialect.name != "sqlite":
        tr = Training()
        for cid, kind, skus, _at in history_rows(crm):
            report.interactions += 1
            tr.add(cid, kind, skus)
        report.customers = len(set(tr.bought) | set(tr.viewed))
        return Baskets.of(tr)
    import numpy as np

    t = crm.db.tables["interactions"]
    index: dict[str, int] = {}

    def pairs(cur: Any, kinds: tuple[str, ...]) -> tuple[Any, Any]:
        marks = ", ".join("?" * len(kinds))
        cur.execute(
            f"SELECT customer_id, properties FROM {name} NOT INDEXED WHERE workspace_id = ? AND kind IN ({marks})",
            (crm.workspace, *kinds),
        )
        cs: list[Any] = []
        ps: list[Any] = []
        setdefault = index.setdefault
        # the same properties text names the same products: decoded once (bounded), which makes
        # the read of typical order data (few distinct baskets) mostly a dictionary lookup per row
        memo: dict[str, tuple[int, ...]] = {}
        while chunk := cur.fetchmany(50_000):
            cids, texts = zip(*chunk, strict=True)
            found: list[Any] = list(map(memo.get, texts))  # C-level loops from here on
            if None in found:
                miss = [i for i, f in enumerate(found) if f is None]
                decoded = _chunk_skus([(0, texts[i]) for i in miss])[1]
                for i, skus in zip(miss, decoded, strict=True):
                    codes = tuple(setdefault(s, len(index)) for s in skus)
                    if len(memo) < MEMO_MAX and isinstance(texts[i], str):
                        memo[texts[i]] = codes
                    found[i] = codes
            lens = np.fromiter(map(len, found), dtype=np.int64, count=len(found))
            cs.append(np.repeat(np.asarray(cids, dtype=np.int64), lens))
            ps.append(np.fromiter(chain.from_iterable(found), dtype=np.int64, count=int(lens.sum())))
        if not cs:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(cs), np.concatenate(ps)

    with crm.db.read() as conn:
        name = conn.dialect.identifier_preparer.format_table(t)
        cur = conn.connection.cursor()
        try:
            marks = ", ".join("?" * len(HISTORY_KINDS))
            cur.execute(
                f"SELECT count(*) FROM {name} WHERE workspace_id = ? AND kind IN ({marks})",
                (crm.workspace, *HISTORY_KINDS),
            )
            counted = cur.fetchone()
            report.interactions = int(counted[0]) if counted else 0
            bought = pairs(cur, ("purchase",))
            empty = np.zeros(0, dtype=np.int64)
            viewed = (
                (empty, empty) if len(bought[0]) else pairs(cur, tuple(k for k in HISTORY_KINDS if k != "purchase"))
            )
        finally:
            cur.close()
    baskets = Baskets(list(index), bought, viewed)
    report.customers = int(baskets.matrix("bought" if len(bought[0]) else "viewed").shape[0])
    return baskets


def _driver_insert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """``executemany`` of ``rows``: on SQLite on the DB-API cursor (one compiled INSERT, the columns' own
    bind processors), elsewhere through SQLAlchemy."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":  # the driver adapts JSON itself (psycopg): SQLAlchemy's executemany
        conn.execute(sa.insert(table), rows)
        return
    cols = list(rows[0])
    compiled = sa.insert(table).compile(dialect=conn.dialect, column_keys=cols)
    procs = {c: table.c[c].type.bind_processor(conn.dialect) for c in cols}

    def value(row: dict[str, Any], c: str) -> Any:
        proc = procs[c]
        return row[c] if proc is None else proc(row[c])

    if compiled.positional:
        order = compiled.positiontup or []
        params: list[Any] = [tuple(value(r, c) for c in order) for r in rows]
    else:
        params = [{c: value(r, c) for c in cols} for r in rows]
    conn.exec_driver_sql(str(compiled), params)


def refresh(crm: CRM, *, watermark: int | None = None) -> RefreshReport:
    """Recompute every list of the workspace and replace the stored ones (one transaction).

    The ``_meta`` row written with them carries a new ``generation``:
    deciding processes see it and drop their cached lists
    (:mod:`ecrm_personalize.cache`).
    """
    import uuid

    report = RefreshReport()
    t0 = time.perf_counter()
    baskets = read_baskets(crm, report)
    products = catalogue(crm)
    report.products = len(products)
    report.seconds["read"] = time.perf_counter() - t0
    lists = train(baskets, products, report)
    t0 = time.perf_counter()
    now = crm.now()
    t = crm.db.tables[RECS]
    meta = {"report": report.to_dict(), "watermark": watermark, "generation": uuid.uuid4().hex}
    rows = [
        {
            "workspace_id": crm.workspace,
            "key": key[:260],
            "items": [[s, round(v, 6)] for s, v in items],
            "refreshed_at": now,
        }
        for key, items in lists.items()
    ]
    with crm.db.write() as conn:
        conn.execute(sa.delete(t).where(t.c.workspace_id == crm.workspace, t.c.key != CATALOGUE_KEY))
        for start in range(0, len(rows), 5000):
            _driver_insert(conn, t, rows[start : start + 5000])
        report.seconds["write"] = time.perf_counter() - t0
        report.seconds["total"] = sum(report.seconds.values())
        meta["report"] = report.to_dict()
        _driver_insert(conn, t, [{"workspace_id": crm.workspace, "key": META_KEY, "items": meta, "refreshed_at": now}])
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
