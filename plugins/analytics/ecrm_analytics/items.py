"""Reading what each purchase contained, set-based: the input of basket rules and affinity.

A purchase lists its items in ``properties[items_key]`` (``"skus"`` by
default, what the demo shop and most trackers send): a JSON array whose
elements are product ids (strings or whole numbers) or objects with a
``sku`` (or ``id``, ``product_id``) and optionally a ``category``.

The items are read **in the database**, never with ``json.loads`` per row
in Python: SQLite's ``json_each`` (PostgreSQL's ``json_array_elements``)
unnests the arrays and ``group_concat`` (``string_agg``) returns each chunk
of purchases as one text of ``purchase<US>item<RS>`` records, which pandas'
C parser reads straight into integer codes (a categorical).  Only the
distinct item names become Python strings.

Categories come from the item objects; otherwise from the product catalogue
the shop's own interactions describe (``product_view`` and ``add_to_cart``
with ``properties.sku`` and ``properties.category``: the category most often
seen for the sku), or from a ``categories`` mapping the caller passes.  An
item without any is in :data:`UNCATEGORIZED`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from attrs import frozen
from ecrm_core.errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    from ecrm_core.crm import CRM

__all__ = ["CATALOGUE_KINDS", "CHUNK", "UNCATEGORIZED", "Baskets", "catalogue", "read_baskets"]

#: the category of an item that has none
UNCATEGORIZED = "(uncategorized)"
#: interactions whose ``sku`` and ``category`` properties describe the catalogue
CATALOGUE_KINDS = ("product_view", "add_to_cart")
#: purchases read per statement (bounds the memory of one chunk's text)
CHUNK = 500_000

_US, _RS = "\x1f", "\x1e"


def _key(items_key: str) -> str:
    if not isinstance(items_key, str) or not items_key.replace("_", "").isalnum() or len(items_key) > 64:
        raise ValidationError(
            "items_key", items_key, "not a property name", 'use letters, digits and "_" (e.g. "skus")'
        )
    return items_key


@frozen
class Baskets:
    """Purchases as (basket, item) pairs of integer codes.

    ``basket[k]`` and ``item[k]`` are parallel arrays (one entry per item of
    a purchase, an item listed twice in a purchase once); ``items[code]`` is an item's name,
    ``customers[basket]`` the buyer of each basket, ``purchase_ids[basket]``
    its interaction id.  ``categories[code]`` is the item's category (from
    the item objects) or ``None``.  ``skipped`` counts purchases without an
    items array.
    """

    basket: np.ndarray
    item: np.ndarray
    items: tuple[str, ...]
    categories: tuple[str | None, ...]
    customers: np.ndarray
    purchase_ids: np.ndarray
    skipped: int

    @property
    def size(self) -> int:
        return len(self.purchase_ids)


def _sqlite_sql(table: str, items_key: str, where: str) -> str:
    sep = "char(31)"
    rec = "char(30)"

    def clean(expr: str) -> str:
        return f"replace(replace({expr}, {rec}, ''), {sep}, '')"

    name = (
        "CASE j.type WHEN 'object' THEN coalesce(json_extract(j.value, '$.sku'), json_extract(j.value, '$.id'),"
        " json_extract(j.value, '$.product_id')) ELSE j.value END"
    )
    cat = "CASE j.type WHEN 'object' THEN json_extract(j.value, '$.category') END"
    return (
        f"SELECT group_concat(i.id || {sep} || i.customer_id || {sep} || {clean(name)} || {sep}"
        f" || coalesce({clean(cat)}, ''), {rec})"
        f" FROM {table} AS i, json_each(i.properties, '$.{items_key}') AS j"
        f" WHERE {where} AND typeof(j.key) = 'integer'"  # elements of an array (a scalar has no key)
        " AND j.type IN ('text', 'integer', 'object')"
    )


def _postgres_sql(table: str, items_key: str, where: str) -> str:
    sep = "chr(31)"
    rec = "chr(30)"

    def clean(expr: str) -> str:
        return f"replace(replace({expr}, {rec}, ''), {sep}, '')"

    arr = f"i.properties::json -> '{items_key}'"
    name = (
        "CASE json_typeof(j) WHEN 'object' THEN coalesce(j ->> 'sku', j ->> 'id', j ->> 'product_id')"
        " ELSE j #>> '{}' END"
    )
    cat = "CASE json_typeof(j) WHEN 'object' THEN j ->> 'category' END"
    return (
        f"SELECT string_agg(i.id::text || {sep} || i.customer_id::text || {sep} || {clean(name)} || {sep}"
        f" || coalesce({clean(cat)}, ''), {rec})"
        f" FROM {table} AS i CROSS JOIN LATERAL json_array_elements("
        f"CASE WHEN json_typeof({arr}) = 'array' THEN {arr} ELSE '[]'::json END) AS j"
        f" WHERE {where} AND json_typeof(j) IN ('string', 'number', 'object')"
    )


def read_baskets(
    crm: CRM,
    *,
    items_key: str = "skus",
    kind: str = "purchase",
    since: datetime | None = None,
    until: datetime | None = None,
    segment: str | None = None,
    customer_ids: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Baskets:
    """Every ``kind`` interaction of the workspace with its items, as integer codes (see :class:`Baskets`).

    ``since``/``until`` bound ``occurred_at`` (``until`` defaults to the
    CRM's clock, so future-dated purchases are left out); ``segment`` keeps
    the purchases of that segment's members, ``customer_ids`` those of these
    customers.  ``progress(done, total)`` is
    called after each chunk of :data:`CHUNK` purchases.
    """
    import numpy as np

    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - the mining extra is installed in the tests
        raise ValidationError("pandas", None, "not installed", "pip install 'ecrm-analytics[mining]'") from None
    key = _key(items_key)
    db = crm.db
    it = db.tables["interactions"]
    dialect = db.engine.dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise ValidationError("database", dialect, "not supported by basket analysis", "use SQLite or PostgreSQL")
    until = until or crm.now()
    params: dict[str, Any] = {"ws": crm.workspace, "kind": kind}
    conds = ["i.workspace_id = :ws", "i.kind = :kind", "i.occurred_at <= :until"]
    params["until"] = _stamp(until, dialect)
    if since is not None:
        conds.append("i.occurred_at >= :since")
        params["since"] = _stamp(since, dialect)
    if segment is not None:
        seg = crm.segments.get(segment)
        members = db.tables["segment_members"].fullname
        conds.append(f"i.customer_id IN (SELECT customer_id FROM {members} WHERE segment_id = :seg)")
        params["seg"] = seg.id
    if customer_ids is not None:
        ids = sorted({int(c) for c in customer_ids})
        if dialect == "sqlite":
            import json

            conds.append("i.customer_id IN (SELECT value FROM json_each(:cids))")
            params["cids"] = json.dumps(ids)
        else:
            conds.append("i.customer_id = ANY(:cids)")
            params["cids"] = ids
    table = it.fullname if not it.schema else f"{it.schema}.{it.name}"
    with db.read() as conn:
        bounds = conn.execute(
            sa.text(f"SELECT min(i.id), max(i.id), count(*) FROM {table} AS i WHERE {' AND '.join(conds)}"),
            params,
        ).one()
    lo, hi, total = bounds
    index: dict[str, int] = {}  # item name -> global code (chunks have categories of their own)
    own: dict[int, str] = {}  # item code -> the category its item objects gave, if any
    parts: list[tuple[Any, Any, Any]] = []
    if total:
        where = " AND ".join([*conds, "i.id >= :lo", "i.id < :hi"])
        sql = sa.text((_sqlite_sql if dialect == "sqlite" else _postgres_sql)(table, key, where))
        step = max(1, (hi - lo + 1) * CHUNK // max(total, 1))
        done = 0
        start = lo
        while start <= hi:
            with db.read() as conn:
                text = conn.execute(sql, {**params, "lo": start, "hi": start + step}).scalar_one()
            if text:
                df = _parse(text)
                mapping = np.fromiter(
                    (index.setdefault(str(v), len(index)) for v in df["v"].cat.categories), dtype=np.int64
                )
                item = mapping[df["v"].cat.codes.to_numpy()] if len(mapping) else np.zeros(0, dtype=np.int64)
                cat = df["c"]
                named = cat.cat.codes.to_numpy() >= 0
                if "" in cat.cat.categories:
                    named &= cat.cat.codes.to_numpy() != cat.cat.categories.get_loc("")
                if named.any():
                    first_items, first_rows = np.unique(item[named], return_index=True)
                    labels = cat.to_numpy(dtype=object)[named][first_rows]
                    for code, label in zip(first_items.tolist(), labels.tolist(), strict=True):
                        own.setdefault(code, str(label))
                parts.append((df["p"].to_numpy(dtype=np.int64), df["b"].to_numpy(dtype=np.int64), item))
            start += step
            done = min(total, done + CHUNK)
            if progress is not None:
                progress(done, total)
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return Baskets(empty, empty.copy(), (), (), empty.copy(), empty.copy(), int(total))
    p = np.concatenate([x[0] for x in parts])
    b = np.concatenate([x[1] for x in parts])
    vcode = np.concatenate([x[2] for x in parts])
    if len(p) and bool(np.all(p[1:] >= p[:-1])):  # the usual case: the database returned them in id order
        starts = np.flatnonzero(np.concatenate(([True], p[1:] != p[:-1])))
        pcode = np.cumsum(np.concatenate(([False], p[1:] != p[:-1]))).astype(np.int64)
        pids = p[starts]
    else:
        pcode, pids = pd.factorize(p, sort=True)
    # an item listed twice in one purchase counts once
    key = pcode.astype(np.int64) * max(len(index), 1) + vcode
    if _has_repeats(key):
        keep = np.sort(np.unique(key, return_index=True)[1])
        pcode, vcode, b = pcode[keep], vcode[keep], b[keep]
    names = list(index)
    cats = [own.get(k) for k in range(len(names))]
    buyers = np.zeros(len(pids), dtype=np.int64)
    buyers[pcode] = b
    return Baskets(
        basket=pcode.astype(np.int64),
        item=vcode.astype(np.int64),
        items=tuple(str(v) for v in names),
        categories=tuple(None if c is None else str(c) for c in cats),
        customers=buyers,
        purchase_ids=np.asarray(pids, dtype=np.int64),
        skipped=int(total) - len(pids),
    )


def _has_repeats(key: Any) -> bool:
    """Whether a (purchase, item) key occurs twice (one sort of a copy)."""
    import numpy as np

    if len(key) < 2:
        return False
    ordered = np.sort(key, kind="stable")
    return bool(np.any(ordered[1:] == ordered[:-1]))


def _parse(text: str) -> Any:
    import numpy as np
    import pandas as pd

    return pd.read_csv(
        io.StringIO(text),
        sep=_US,
        lineterminator=_RS,
        header=None,
        names=["p", "b", "v", "c"],
        dtype={"p": np.int64, "b": np.int64, "v": "category", "c": "category"},
        quoting=csv.QUOTE_NONE,
        na_filter=False,
        engine="c",
    )


def _stamp(at: datetime, dialect: str) -> Any:
    if at.tzinfo is None:
        raise ValidationError("since", at, "a naive datetime", "give an aware datetime (UTC)")
    from datetime import UTC

    at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S.%f") if dialect == "sqlite" else at


def catalogue(crm: CRM, kinds: tuple[str, ...] = CATALOGUE_KINDS) -> dict[str, str]:
    """``{sku: category}`` as the shop's interactions describe it (the most frequent category per sku)."""
    db = crm.db
    it = db.tables["interactions"]
    dialect = db.engine.dialect.name
    if dialect == "sqlite":
        sku = sa.func.json_extract(it.c.properties, "$.sku")
        cat = sa.func.json_extract(it.c.properties, "$.category")
        ok = sa.and_(
            sa.func.json_type(it.c.properties, "$.sku").in_(["text", "integer"]),
            sa.func.json_type(it.c.properties, "$.category") == "text",
        )
        sku_t = sa.cast(sku, sa.Text)
    else:
        sku_t = it.c.properties["sku"].as_string()
        cat = it.c.properties["category"].as_string()
        ok = sa.and_(sku_t.is_not(None), cat.is_not(None))
    n = sa.func.count().label("n")
    stmt = (
        sa.select(sku_t.label("sku"), cat.label("category"), n)
        .where(it.c.workspace_id == crm.workspace, it.c.kind.in_(kinds), ok)
        .group_by(sku_t, cat)
    )
    best: dict[str, tuple[int, str]] = {}
    with db.read() as conn:
        for s, c, k in conn.execute(stmt):
            s, c = str(s), str(c)
            if s not in best or (k, c) > best[s]:
                best[s] = (int(k), c)
    return {s: c for s, (_, c) in best.items()}


def categorize(baskets: Baskets, categories: Mapping[str, str] | None) -> tuple[list[str], int]:
    """The category of every item code, and how many items have none (they are :data:`UNCATEGORIZED`)."""
    out: list[str] = []
    missing = 0
    for name, own in zip(baskets.items, baskets.categories, strict=True):
        cat = own or (categories or {}).get(name)
        if not cat:
            missing += 1
            cat = UNCATEGORIZED
        out.append(str(cat))
    return out, missing
