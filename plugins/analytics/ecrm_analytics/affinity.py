"""Product and category affinity per segment (or per cluster): what each group buys more than others.

For each group (a segment's current members, or a stored cluster) and each
category (or product, ``level="product"``):

* ``items``: how many purchased items of the group were in the category;
* ``share``: that count ÷ all the group's purchased items;
* ``overall``: the same share over every buyer of the workspace;
* ``index``: share ÷ overall — above 1 the group over-buys the category
  (1.5: half as much again as the average buyer), below 1 it under-buys;
* ``buyers``: the group's members who bought the category at least once,
  and ``penetration``: ``buyers`` ÷ the group's buyers.

Rows with an index of at least ``min_index`` and at least ``min_items``
items are kept, the highest index first within each group.  This says
*what to offer whom*: the categories a segment over-buys are the natural
content of its offers; the ones it under-buys despite their popularity are
cross-sell openings.  Items are read set-based (:mod:`ecrm_analytics.items`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from ecrm_core.errors import ValidationError

from .common import Report
from .reports import Param, ReportSpec, register

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ecrm_core.crm import CRM

__all__ = ["GROUPINGS", "affinity", "affinity_report"]

GROUPINGS: tuple[str, ...] = ("segment", "cluster")
#: the heatmap of the report shows at most this many items (the most bought)
MAX_COLUMNS = 30


def _memberships(crm: CRM, by: str, groups: Sequence[str] | None) -> list[tuple[int, str]]:
    db = crm.db
    if by == "segment":
        members, segs = db.tables["segment_members"], db.tables["segments"]
        stmt = (
            sa.select(members.c.customer_id, segs.c.slug)
            .join(segs, segs.c.id == members.c.segment_id)
            .where(segs.c.workspace_id == crm.workspace)
        )
        if groups:
            for slug in groups:
                crm.segments.get(slug)  # NotFound names an unknown segment
            stmt = stmt.where(segs.c.slug.in_(list(groups)))
    else:
        from .schema import CLUSTERS

        table = db.tables[CLUSTERS]
        label = sa.cast(table.c.cluster, sa.String).concat(": ").concat(table.c.label)
        stmt = sa.select(table.c.customer_id, label).where(table.c.workspace_id == crm.workspace)
        if groups:
            stmt = stmt.where(label.in_(list(groups)) | sa.cast(table.c.cluster, sa.String).in_(list(groups)))
    with db.read() as conn:
        return [(int(c), str(g)) for c, g in conn.execute(stmt)]


def affinity(
    crm: CRM,
    *,
    by: str = "segment",
    level: str = "category",
    groups: Sequence[str] | None = None,
    min_index: float = 0.0,
    min_items: int = 1,
    items_key: str = "skus",
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """Affinity rows (see the module docs): ``{"group", "item", "items", "share", "overall", "index", "buyers", "penetration"}``."""
    import numpy as np
    import pandas as pd

    from .basket import LEVELS, to_level
    from .items import read_baskets

    if by not in GROUPINGS:
        raise ValidationError("by", by, "not a grouping", f"use one of {', '.join(GROUPINGS)}")
    if level not in LEVELS:
        raise ValidationError("level", level, "not a level", f"use one of {', '.join(LEVELS)}")
    if isinstance(min_items, bool) or not isinstance(min_items, int) or min_items < 1:
        raise ValidationError("min_items", min_items, "not a whole number of at least 1", "e.g. min_items=5")
    if isinstance(min_index, bool) or not isinstance(min_index, (int, float)) or not 0 <= min_index < 1e9:
        raise ValidationError("min_index", min_index, "not a number of at least 0", "e.g. min_index=1.2")
    member_rows = _memberships(crm, by, groups)
    baskets = read_baskets(crm, items_key=items_key, since=since, until=until)
    if not member_rows or not baskets.size:
        return []
    basket, item, names, _ = to_level(baskets, level, None, crm)
    bought = pd.DataFrame({"customer": baskets.customers[basket], "item": item})
    overall = np.bincount(item, minlength=len(names)) / max(len(item), 1)
    members = pd.DataFrame(member_rows, columns=["customer", "group"]).drop_duplicates()
    joined = bought.merge(members, on="customer")
    if joined.empty:
        return []
    counts = joined.groupby(["group", "item"]).agg(items=("customer", "size"), buyers=("customer", "nunique"))
    totals = joined.groupby("group").agg(total=("customer", "size"), group_buyers=("customer", "nunique"))
    table = counts.join(totals, on="group").reset_index()
    table["share"] = table["items"] / table["total"]
    table["overall"] = overall[table["item"].to_numpy()]
    table["index"] = table["share"] / table["overall"]
    table["penetration"] = table["buyers"] / table["group_buyers"]
    table = table[(table["items"] >= min_items) & (table["index"] >= min_index - 1e-12)]
    table = table.sort_values(["group", "index", "items", "item"], ascending=[True, False, False, True])
    return [
        {
            "group": str(r.group),
            "item": names[int(r.item)],
            "items": int(r.items),
            "share": round(float(r.share), 6),
            "overall": round(float(r.overall), 6),
            "index": round(float(r.index), 6),
            "buyers": int(r.buyers),
            "penetration": round(float(r.penetration), 6),
        }
        for r in table.itertuples(index=False)
    ]


def affinity_report(
    crm: CRM, by: str = "segment", level: str = "category", group: str = "", top: int = 5, min_items: int = 5
) -> Report:
    """The ``affinity`` report: the ``top`` items each group over-buys most (index above 1)."""
    from ecrm_core.charts import MAX_CATEGORIES, Chart

    rows = affinity(crm, by=by, level=level, groups=[group] if group else None, min_items=min_items)
    shown: list[dict[str, Any]] = []
    per_group: dict[str, int] = {}
    for r in rows:
        if r["index"] > 1 and per_group.get(r["group"], 0) < top:
            per_group[r["group"]] = per_group.get(r["group"], 0) + 1
            shown.append(r)
    columns = ("group", "item", "index", "share", "overall", "items", "buyers", "penetration")
    chart = None
    group_names = sorted({r["group"] for r in rows})[:MAX_CATEGORIES]
    popular: dict[str, int] = {}
    for r in rows:
        popular[r["item"]] = popular.get(r["item"], 0) + r["items"]
    item_names = sorted(sorted(popular, key=lambda i: (-popular[i], i))[:MAX_COLUMNS])
    if rows:
        index = {(r["group"], r["item"]): r["index"] for r in rows}
        chart = Chart(
            kind="heatmap",
            title=f"{level.capitalize()} affinity by {by} (1 = like the average buyer)",
            rows=group_names,
            columns=item_names,
            values=[[index.get((g, i)) for i in item_names] for g in group_names],
            value_format="number",
            caption=f"the {len(item_names)} most bought {level}s" if len(popular) > len(item_names) else "",
        )
    if not rows:
        caption = f"No purchases with items by members of any {by}: nothing to compare."
    elif shown:
        best = max(shown, key=lambda r: r["index"])
        caption = f"{best['group']} buys {best['item']} {best['index']:.1f} times as much as the average buyer."
    else:
        caption = "No group over-buys any item by more than the average."
    return Report(
        name="affinity",
        title=f"{level.capitalize()} affinity by {by}",
        columns=columns,
        rows=[tuple(r[c] for c in columns) for r in shown],
        summary={"groups": len({r["group"] for r in rows}), "level": level},
        chart=chart,
        caption=caption[:500],
    )


register(
    ReportSpec(
        name="affinity",
        title="Affinity: what each segment or cluster buys more than others",
        build=affinity_report,
        description="Category (or product) share of each group against every buyer's: an index above 1 over-buys.",
        params=(
            Param(name="by", type=str, default="segment", help="segment or cluster", choices=GROUPINGS),
            Param(
                name="level", type=str, default="category", help="category or product", choices=("category", "product")
            ),
            Param(name="group", type=str, default="", help="only this segment (slug) or cluster (number)"),
            Param(name="top", type=int, default=5, help="items shown per group", min=1, max=100),
            Param(
                name="min_items",
                type=int,
                default=5,
                help="ignore items bought fewer times by the group",
                min=1,
                max=10**9,
            ),
        ),
    )
)
