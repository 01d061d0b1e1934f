"""Customer clusters on value and behaviour, each described in words.

:func:`cluster_customers` groups the workspace's **buyers** (customers with
at least one purchase; others have no cluster) on the features of
:data:`FEATURES`, computed set-based in one ``GROUP BY`` over the
interactions (money in the reporting currency):

``spend``       net revenue (purchases - refunds, at least 0)
``recency``     days since the last purchase
``frequency``   purchases
``basket``      average order value
``engagement``  other interactions (views, opens, clicks…) in the last 90 days
``tenure``      days since the customer's first interaction

The counts and amounts are ``log1p``-transformed, everything standardised
(z-scores), and clustered with scikit-learn's ``MiniBatchKMeans`` for each k
in ``k_min..k_max``; the k with the best silhouette score (on a sample of at
most 5,000 customers, fixed seed) wins.  Each cluster is described by the
features whose centroid is at least half a standard deviation from the
average, strongest first (at most three): "high spend, recent, frequent",
"low spend, lapsed, one-off"; a cluster near the average on everything is
"average customers".

The result is stored — one row per customer in ``analytics_clusters``
(cluster number, label, distance to the centre) and the model (means,
scales, centres, labels, silhouette) in ``analytics_state`` — so that:

* rules use it: ``cluster(id=2)``, ``cluster(label="high spend, recent, frequent")``
  (:mod:`ecrm_analytics.needs`);
* customers who bought since (or merged) are placed in the nearest existing
  cluster by :func:`assign` without refitting;
* deleting a customer deletes their row; a merge drops the source's row and
  places the survivor again.

Too few buyers (fewer than ``k_min + 1``, or fewer than ``k_min`` different
profiles: buyers that all look alike) give a result without clusters and a message saying why;
nothing is stored then and previous clusters are cleared.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from attrs import frozen
from ecrm_core.errors import ValidationError

from .attributes import emit
from .common import Rates, Report, finite, get_rates
from .reports import Param, ReportSpec, register
from .schema import CLUSTERS, STATE

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    from ecrm_core.crm import CRM
    from ecrm_core.domain import CustomerChange

__all__ = [
    "ATTRIBUTES",
    "FEATURES",
    "Cluster",
    "Clustering",
    "assign",
    "cluster_customers",
    "describe",
    "features",
    "model",
    "write_attributes",
]

FEATURES: tuple[str, ...] = ("spend", "recency", "frequency", "basket", "engagement", "tenure")
#: features that are log1p-transformed before standardising
_LOGGED = ("spend", "frequency", "basket", "engagement")
#: words for a centroid far above / below the average, per feature
WORDS: dict[str, tuple[str, str]] = {
    "spend": ("high spend", "low spend"),
    "recency": ("lapsed", "recent"),
    "frequency": ("frequent", "one-off"),
    "basket": ("big baskets", "small baskets"),
    "engagement": ("engaged", "quiet"),
    "tenure": ("long-standing", "new"),
}
#: the value features, described first
PRIMARY = ("spend", "recency", "frequency")
#: how far (in standard deviations) a centre must be from the average to earn a word
THRESHOLD = 0.5
STATE_NAME = "clusters"
SILHOUETTE_SAMPLE = 5_000
ENGAGEMENT_DAYS = 90


@frozen
class Cluster:
    """One cluster: its number, words, size and the average features of its members (original units)."""

    id: int
    label: str
    size: int
    means: dict[str, float]
    z: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "size": self.size, "means": self.means, "z": self.z}


@frozen
class Clustering:
    """The outcome of :func:`cluster_customers`; ``clusters`` is empty when ``message`` says why."""

    customers: int
    k: int
    silhouette: float | None
    clusters: tuple[Cluster, ...]
    tried: dict[int, float]
    message: str = ""

    def to_report(self) -> Report:
        from ecrm_core.charts import Chart, Series

        rows = [(c.id, c.label, c.size, *(round(c.means[f], 2) for f in FEATURES)) for c in self.clusters]
        chart = None
        if self.clusters:
            chart = Chart(
                kind="scatter",
                title="Clusters: spend against recency (cluster centres)",
                series=[
                    Series(name=f"{c.id}: {c.label}", x=[c.means["recency"]], values=[c.means["spend"]])
                    for c in self.clusters
                ],
                x_label="days since the last purchase",
                y_label="net spend",
                caption=self.caption(),
            )
        return Report(
            name="clusters",
            title=f"Customer clusters (k={self.k})" if self.clusters else "Customer clusters",
            columns=("cluster", "label", "customers", *FEATURES),
            rows=rows,
            summary={"customers": self.customers, "k": self.k, "silhouette": self.silhouette},
            chart=chart,
            caption=self.caption(),
        )

    def caption(self) -> str:
        if not self.clusters:
            return self.message
        big = max(self.clusters, key=lambda c: c.size)
        return (
            f"{self.customers:,} buyers in {self.k} clusters (silhouette {self.silhouette:.2f}); the largest, "
            f"{big.size:,} customers, is '{big.label}'."
        )[:500]

    def to_dict(self) -> dict[str, Any]:
        return {
            "customers": self.customers,
            "k": self.k,
            "silhouette": self.silhouette,
            "tried": {str(k): v for k, v in self.tried.items()},
            "clusters": [c.to_dict() for c in self.clusters],
            "message": self.message,
        }


def features(
    crm: CRM, customer_ids: Sequence[int] | None = None, rates: Rates | None = None
) -> tuple[list[int], np.ndarray]:
    """The buyers' ids and their raw feature matrix (one row per buyer, columns :data:`FEATURES`)."""
    import numpy as np

    rates = rates or get_rates(crm)
    db = crm.db
    it, cust = db.tables["interactions"], db.tables["customers"]
    now = crm.now()
    value = rates.sql_convert(it.c.amount, it.c.currency)
    purchase = it.c.kind == "purchase"
    orders = sa.func.count(sa.case((purchase, 1)))
    other = sa.and_(it.c.kind.not_in(("purchase", "refund")), it.c.occurred_at >= now - timedelta(days=ENGAGEMENT_DAYS))
    stmt = (
        sa.select(
            it.c.customer_id,
            sa.func.coalesce(sa.func.sum(sa.case((sa.and_(purchase, value > 0), value))), 0.0).label("revenue"),
            sa.func.coalesce(sa.func.sum(sa.case((it.c.kind == "refund", sa.func.abs(value)))), 0.0).label("refunds"),
            orders.label("orders"),
            sa.func.max(sa.case((purchase, it.c.occurred_at))).label("last_at"),
            sa.func.min(it.c.occurred_at).label("first_at"),
            sa.func.count(sa.case((other, 1))).label("engagement"),
        )
        .join(cust, cust.c.id == it.c.customer_id)
        .where(it.c.workspace_id == crm.workspace, it.c.occurred_at <= now, cust.c.merged_into.is_(None))
        .group_by(it.c.customer_id)
        .having(orders >= 1)
        .order_by(it.c.customer_id)
    )
    if customer_ids is not None:
        from ecrm_core.rules.sql import ids_clause

        stmt = stmt.where(ids_clause(it.c.customer_id, sorted(set(customer_ids)), db.engine.dialect.name))
    ids: list[int] = []
    rows: list[list[float]] = []
    day = 86400.0
    with db.read() as conn:
        for r in conn.execute(stmt):
            last_at = r.last_at if r.last_at.tzinfo else r.last_at.replace(tzinfo=now.tzinfo)
            first_at = r.first_at if r.first_at.tzinfo else r.first_at.replace(tzinfo=now.tzinfo)
            revenue = finite(r.revenue) or 0.0
            spend = max(0.0, revenue - (finite(r.refunds) or 0.0))
            ids.append(int(r.customer_id))
            rows.append([
                spend,
                max(0.0, (now - last_at).total_seconds() / day),
                float(r.orders),
                revenue / r.orders,
                float(r.engagement),
                max(0.0, (now - first_at).total_seconds() / day),
            ])  # fmt: skip
    return ids, np.asarray(rows, dtype=float).reshape(len(rows), len(FEATURES))


def _transform(raw: np.ndarray) -> np.ndarray:
    import numpy as np

    out = raw.copy()
    for k, name in enumerate(FEATURES):
        if name in _LOGGED:
            out[:, k] = np.log1p(np.maximum(out[:, k], 0.0))
    return out


def describe(z: Sequence[float]) -> str:
    """Words for a cluster centre given as z-scores in :data:`FEATURES` order.

    The value features (spend, recency, frequency) that are at least
    :data:`THRESHOLD` from the average speak first, then the others, the
    strongest first; at most three words, in :data:`FEATURES` order.
    """
    strong = sorted(
        (
            (name not in PRIMARY, -abs(v), FEATURES.index(name), name, v)
            for name, v in zip(FEATURES, z, strict=True)
            if abs(v) >= THRESHOLD
        ),
    )[:3]
    if not strong:
        return "average customers"
    strong.sort(key=lambda t: t[2])
    return ", ".join(WORDS[name][0 if v > 0 else 1] for *_, name, v in strong)


def cluster_customers(
    crm: CRM,
    *,
    k: int | None = None,
    k_min: int = 2,
    k_max: int = 8,
    seed: int = 0,
    save: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Clustering:
    """Cluster the buyers (see the module docs); ``k`` fixes the number of clusters instead of choosing it."""
    import numpy as np

    try:
        from sklearn.cluster import MiniBatchKMeans
        from sklearn.metrics import silhouette_score
    except ImportError:
        raise ValidationError("clusters", None, "needs scikit-learn", "pip install 'ecrm-analytics[mining]'") from None
    for name, v in (("k_min", k_min), ("k_max", k_max), ("k", k if k is not None else 2)):
        if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 20:
            raise ValidationError(name, v, "not a whole number from 2 to 20", "e.g. k_max=8")
    if k_min > k_max:
        raise ValidationError("k_min", k_min, f"larger than k_max ({k_max})", "give k_min <= k_max")
    ids, raw = features(crm)
    n = len(ids)
    x = _transform(raw)
    distinct = len(np.unique(np.round(x, 9), axis=0)) if n else 0
    lo, hi = (k, k) if k is not None else (k_min, k_max)
    hi = min(hi, distinct, n - 1)
    if n == 0 or hi < lo:
        why = (
            "No customer has a purchase yet: nothing to cluster."
            if n == 0
            else f"{n:,} buyer(s) with {distinct} different profile(s): {lo} clusters need at least {lo} different "
            f"profiles and {lo + 1} buyers."
        )
        if save:
            _clear(crm)
        return Clustering(customers=n, k=0, silhouette=None, clusters=(), tried={}, message=why)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    tried: dict[int, float] = {}
    best: tuple[float, int, Any] | None = None
    rng = np.random.default_rng(seed)
    sample = rng.choice(n, size=min(n, SILHOUETTE_SAMPLE), replace=False)
    for step, kk in enumerate(range(lo, hi + 1)):
        km = MiniBatchKMeans(n_clusters=kk, random_state=seed, n_init=3, batch_size=2048)
        labels = km.fit_predict(z)
        if len(np.unique(labels[sample])) < 2:
            score = -1.0
        else:
            score = float(silhouette_score(z[sample], labels[sample]))
        tried[kk] = round(score, 4)
        if best is None or score > best[0] + 1e-9:
            best = (score, kk, km)
        if progress is not None:
            progress(step + 1, hi - lo + 1)
    assert best is not None
    score, kbest, km = best
    labels = km.predict(z)
    centres = km.cluster_centers_
    order = np.argsort(-np.bincount(labels, minlength=kbest), kind="stable")  # cluster 1 is the largest
    renumber = np.empty(kbest, dtype=int)
    renumber[order] = np.arange(1, kbest + 1)
    clusters = []
    seen: dict[str, int] = {}
    for old in order:
        members = labels == old
        words = describe(centres[old])
        seen[words] = seen.get(words, 0) + 1
        label = words if seen[words] == 1 else f"{words} ({seen[words]})"
        clusters.append(
            Cluster(
                id=int(renumber[old]),
                label=label,
                size=int(members.sum()),
                means={f: round(float(raw[members, i].mean()), 4) for i, f in enumerate(FEATURES)},
                z={f: round(float(centres[old][i]), 4) for i, f in enumerate(FEATURES)},
            )
        )
    result = Clustering(customers=n, k=kbest, silhouette=round(score, 4), clusters=tuple(clusters), tried=tried)
    if save:
        dist = np.linalg.norm(z - centres[labels], axis=1)
        state = {
            "features": list(FEATURES),
            "mean": mean.tolist(),
            "scale": scale.tolist(),
            "centres": [centres[old].tolist() for old in order],
            "labels": [c.label for c in clusters],
            "k": kbest,
            "k_fixed": k,
            "k_min": k_min,
            "k_max": k_max,
            "silhouette": result.silhouette,
            "customers": n,
            "clusters": [c.to_dict() for c in clusters],
        }
        _store(crm, ids, [int(renumber[v]) for v in labels], dist.tolist(), state)
    return result


def _labels_of(state: dict[str, Any]) -> dict[int, str]:
    return {k + 1: label for k, label in enumerate(state["labels"])}


def _store(crm: CRM, ids: list[int], numbers: list[int], dist: list[float], state: dict[str, Any] | None) -> None:
    table, st = crm.db.tables[CLUSTERS], crm.db.tables[STATE]
    now = crm.now()
    with crm.db.write() as conn:
        if state is not None:
            conn.execute(sa.delete(table).where(table.c.workspace_id == crm.workspace))
            conn.execute(sa.delete(st).where(st.c.workspace_id == crm.workspace, st.c.name == STATE_NAME))
            conn.execute(sa.insert(st).values(workspace_id=crm.workspace, name=STATE_NAME, data=state, updated_at=now))
            names = _labels_of(state)
        else:
            names = _labels_of(_state(crm, conn) or {"labels": []})
            if ids:
                from ecrm_core.rules.sql import ids_clause

                conn.execute(
                    sa.delete(table).where(
                        table.c.workspace_id == crm.workspace,
                        ids_clause(table.c.customer_id, ids, crm.db.engine.dialect.name),
                    )
                )
        rows = [
            {"workspace_id": crm.workspace, "customer_id": c, "cluster": k, "label": names[k],
             "distance": d if math.isfinite(d) else 0.0, "computed_at": now}
            for c, k, d in zip(ids, numbers, dist, strict=True)
        ]  # fmt: skip
        for start in range(0, len(rows), 5000):
            conn.execute(sa.insert(table), rows[start : start + 5000])
        changes = write_attributes(crm, conn, None if state is not None else ids)
    emit(crm, changes)


#: Customer attributes the clusters write (``customer.attributes[name]``), for templates and personalization.
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "cluster": ("integer", "the customer's stored cluster number (1 is the largest); null without one"),
    "cluster_label": ("string", "the stored cluster's words, e.g. 'high spend, recent, frequent'; null without one"),
}


def write_attributes(crm: CRM, conn: sa.Connection, customer_ids: Sequence[int] | None = None) -> list[CustomerChange]:
    """Copy the stored clusters into ``customers.attributes`` (``cluster``, ``cluster_label``).

    For ``customer_ids`` (``None``: every customer with a cluster row or the
    attributes already set); JSON ``null`` where there is no cluster; only
    the customers whose values change are written, and their changes are
    returned: fire them with :func:`ecrm_analytics.attributes.emit` once the
    transaction committed (the core's ``ecrm_customers_updated``).
    """
    from .attributes import holders, sync

    table = crm.db.tables[CLUSTERS]
    ws = table.c.workspace_id == crm.workspace
    if customer_ids is None:
        owned = set(conn.execute(sa.select(table.c.customer_id).where(ws)).scalars())
        ids = sorted(owned | holders(crm, conn, "cluster"))
    else:
        ids = sorted(set(customer_ids))
    changes: list[CustomerChange] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        wanted = {
            int(c): {"cluster": int(k), "cluster_label": label}
            for c, k, label in conn.execute(
                sa.select(table.c.customer_id, table.c.cluster, table.c.label).where(ws, table.c.customer_id.in_(chunk))
            )
        }
        changes += sync(crm, conn, chunk, wanted, tuple(ATTRIBUTES))
    return changes


def _clear(crm: CRM) -> None:
    table, st = crm.db.tables[CLUSTERS], crm.db.tables[STATE]
    with crm.db.write() as conn:
        conn.execute(sa.delete(table).where(table.c.workspace_id == crm.workspace))
        conn.execute(sa.delete(st).where(st.c.workspace_id == crm.workspace, st.c.name == STATE_NAME))
        changes = write_attributes(crm, conn, None)
    emit(crm, changes)


def _state(crm: CRM, conn: sa.Connection) -> dict[str, Any] | None:
    st = crm.db.tables[STATE]
    data = conn.execute(
        sa.select(st.c.data).where(st.c.workspace_id == crm.workspace, st.c.name == STATE_NAME)
    ).scalar_one_or_none()
    return dict(data) if data else None


def model(crm: CRM) -> dict[str, Any] | None:
    """The stored clustering (features, means, scales, centres, labels, silhouette), or ``None``."""
    with crm.db.read() as conn:
        return _state(crm, conn)


def assign(crm: CRM, customer_ids: Sequence[int]) -> int:
    """Place these customers in the nearest stored cluster (no refit); return how many were placed.

    Customers without purchases lose their cluster; without a stored
    clustering nothing happens.
    """
    import numpy as np

    state = model(crm)
    wanted = sorted(set(customer_ids))
    if state is None or not wanted:
        return 0
    ids, raw = features(crm, wanted)
    z = (_transform(raw) - np.asarray(state["mean"])) / np.asarray(state["scale"])
    centres = np.asarray(state["centres"])
    placed: list[int] = []
    dist: list[float] = []
    if ids:
        d = np.linalg.norm(z[:, None, :] - centres[None, :, :], axis=2)
        placed = (d.argmin(axis=1) + 1).tolist()
        dist = d.min(axis=1).tolist()
    table = crm.db.tables[CLUSTERS]
    with crm.db.write() as conn:
        from ecrm_core.rules.sql import ids_clause

        conn.execute(
            sa.delete(table).where(
                table.c.workspace_id == crm.workspace,
                ids_clause(table.c.customer_id, wanted, crm.db.engine.dialect.name),
            )
        )
        # the customers who lost their cluster (no features any more); the others are stored again just below
        changes = write_attributes(crm, conn, sorted(set(wanted) - set(ids)))
    emit(crm, changes)
    if ids:
        _store(crm, ids, placed, dist, None)
    return len(ids)


def forget(crm: CRM, conn: sa.Connection, customer_ids: Sequence[int]) -> None:
    """Delete the cluster rows of these customers (any workspace), on ``conn``."""
    ids = sorted(set(customer_ids))
    table = crm.db.tables[CLUSTERS]
    for start in range(0, len(ids), 500):
        conn.execute(sa.delete(table).where(table.c.customer_id.in_(ids[start : start + 500])))


def clusters_report(crm: CRM, k: int = 0, k_max: int = 8, save: bool = False) -> Report:
    """The ``clusters`` report: cluster now (``k=0``: choose k by silhouette) and describe each cluster."""
    from .progress import cli_progress

    with cli_progress("clustering: trying each k") as progress:
        result = cluster_customers(crm, k=k or None, k_max=k_max, save=save, progress=progress)
    return result.to_report()


register(
    ReportSpec(
        name="clusters",
        title="Customer clusters on value and behaviour",
        build=clusters_report,
        description="MiniBatchKMeans on spend, recency, frequency, basket, engagement and tenure; k by silhouette.",
        params=(
            Param(name="k", type=int, default=0, help="number of clusters (0: choose by silhouette)", min=0, max=20),
            Param(name="k_max", type=int, default=8, help="largest k tried", min=2, max=20),
            Param(name="save", type=bool, default=False, help="store the clusters for cluster(...) rules", writes=True),
        ),
    )
)
