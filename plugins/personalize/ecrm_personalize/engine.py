"""The decision: who is it, what do they get, how is it shown, and why.

The hot path reads precomputed lists by key and never fits a model.  Per
decision, on one pooled connection, it runs a fixed number of queries
whatever the person's history or the catalogue's size:

1. the person (customer row and stored preferences; for a visitor, through
   the ``anonymous`` alias of their verified cookie) — one query;
2. their latest purchases and views (at most :data:`HISTORY`) — one query
   on the core's ``(workspace, customer, time)`` index;
3. the recommendation lists for the keys that history names (``popular``,
   ``i2i:<sku>``, ``content:<sku>``) — one primary-key ``IN`` query;
4. the candidate products (catalogue, availability) — one ``IN`` query;
5. the bandit's arms, when the placement has alternatives — one query.

Placements and active offers come from short-lived caches
(:mod:`ecrm_personalize.state`).  Nothing is written: the decision id is a
signed token that outcomes verify.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from ecrm_core.errors import ValidationError
from ecrm_core.validation import check_slug

from . import cache, tokens
from .blend import blend, list_keys
from .cache import Prepared, json_value
from .model import Decision, Item, OfferPick, Placement
from .recommend import HISTORY_KINDS, _chunk_skus, skus_of
from .schema import ARMS, PLACEMENTS, PREFERENCES
from .state import state
from .strategies import Candidate, DecisionContext, OfferCandidate

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["HISTORY", "decide", "load_placement"]

#: the bandits' draws when the caller gave no generator (one per process: seeding one per decision costs)
_RNG = random.Random()
#: how many recent purchases/views of a person a decision reads
HISTORY = 60
MAX_CONTEXT = 50


def load_placement(crm: CRM, name: str) -> Placement | None:
    def load() -> Placement | None:
        t = crm.db.tables[PLACEMENTS]
        with crm.db.read() as conn:
            row = conn.execute(sa.select(t.c.config).where(t.c.workspace_id == crm.workspace, t.c.name == name)).first()
        return None if row is None else Placement.from_dict(row.config, name=name)

    return state(crm).cached(("placement", crm.workspace, name), 5.0, load)  # type: ignore[no-any-return]


def _active_offers(crm: CRM) -> list[Any]:
    return state(crm).cached(("offers", crm.workspace), 5.0, lambda: crm.offers.active())  # type: ignore[no-any-return]


def _check_context(context: Any) -> dict[str, Any]:
    if context is None:
        return {}
    if not isinstance(context, Mapping) or len(context) > MAX_CONTEXT:
        raise ValidationError(
            "context", "...", f"not a mapping of at most {MAX_CONTEXT} keys", 'send e.g. {"sku": "A-1"}'
        )
    out: dict[str, Any] = {}
    for k, v in context.items():
        if not isinstance(k, str) or len(k) > 64:
            raise ValidationError("context", k, "not a key", "use short text keys")
        if isinstance(v, str) and len(v) > 500:
            raise ValidationError(f"context.{k}", v[:20] + "…", "longer than 500 characters", "send a shorter value")
        out[k] = v
    return out


def _in_control(crm: CRM, placement: Placement, subject: str) -> bool:
    if placement.control <= 0:
        return False
    h = hashlib.blake2b(f"{crm.workspace}|{placement.name}|{subject}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < placement.control


def _segment(
    crm: CRM, placement: Placement, customer: Mapping[str, Any] | None, customer_id: int | None
) -> tuple[str, dict[str, Any] | None]:
    """The person's segment for the placement's bandit, and the computed attributes when it had to
    ask for them (so the strategies do not ask again: :meth:`DecisionContext.attribute`)."""
    how = placement.segment_by
    if how == "none":
        return "all", None
    if customer is None:
        return "anonymous", None
    if how == "lifecycle":
        return str(customer.get("lifecycle_stage") or "prospect")[:128], None
    name = how.split(":", 1)[1]
    attrs = customer.get("attributes") or {}
    value = attrs.get(name) if isinstance(attrs, Mapping) else None
    computed = None
    if value is None and customer_id is not None:
        # not stored: maybe computed by a plugin (ecrm-analytics' rfm_group…)
        computed = crm.customers.computed([customer_id]).get(customer_id) or {}
        value = computed.get(name)
    return ("none" if value is None or isinstance(value, dict | list) else str(value)[:128]), computed


class Statements:
    """The decision's statements, rendered once per CRM and dialect (:class:`~ecrm_personalize.cache.Prepared`)."""

    def __init__(self, crm: CRM, dialect: sa.Dialect) -> None:
        tables = crm.db.tables
        c, p, a = tables["customers"], tables[PREFERENCES], tables["aliases"]
        t, ar = tables["interactions"], tables[ARMS]
        ws = sa.bindparam("ws")
        cols = [
            c.c.id,
            c.c.name,
            c.c.timezone,
            c.c.locale,
            c.c.lifecycle_stage,
            c.c.attributes,
            c.c.merged_into,
            p.c.data,
        ]
        base = sa.select(*cols).select_from(c.outerjoin(p, p.c.customer_id == c.c.id)).where(c.c.workspace_id == ws)
        self.person = Prepared(base.where(c.c.id == sa.bindparam("cid")), dialect)
        self.visitor = Prepared(
            base.join(a, a.c.customer_id == c.c.id).where(
                a.c.workspace_id == ws, a.c.kind == "anonymous", a.c.value == sa.bindparam("alias")
            ),
            dialect,
        )
        self.history = Prepared(
            sa.select(t.c.kind, t.c.properties)
            .where(t.c.workspace_id == ws, t.c.customer_id == sa.bindparam("cid"), t.c.kind.in_(HISTORY_KINDS))
            .order_by(t.c.occurred_at.desc())
            .limit(HISTORY),
            dialect,
        )
        self.arms = Prepared(
            sa.select(ar.c.arm, ar.c.trials, ar.c.wins).where(
                ar.c.workspace_id == ws,
                ar.c.placement == sa.bindparam("placement"),
                ar.c.segment == sa.bindparam("segment"),
            ),
            dialect,
        )


def statements(crm: CRM, dialect: sa.Dialect) -> Statements:
    st = state(crm)
    key = ("statements", id(crm.db.metadata), dialect.name)
    found = st.cache.get(key)
    if found is None:
        found = (float("inf"), Statements(crm, dialect))
        st.cache[key] = found
    return found[1]  # type: ignore[no-any-return]


class _Person:
    """The columns of the person's row (id, name, timezone, locale, lifecycle_stage, attributes,
    merged_into, preferences)."""

    __slots__ = ("attributes", "data", "id", "lifecycle_stage", "locale", "merged_into", "name", "timezone")

    def __init__(self, row: Any) -> None:
        self.id, self.name, self.timezone, self.locale, self.lifecycle_stage = row[:5]
        self.attributes = json_value(row[5])
        self.merged_into = row[6]
        self.data = json_value(row[7])


def _person(cur: Any, ws: str, stmts: Statements, customer_id: int | None, visitor: str | None) -> _Person | None:
    if customer_id is not None:
        rows = stmts.person.rows(cur, {"ws": ws, "cid": customer_id})
    else:
        rows = stmts.visitor.rows(cur, {"ws": ws, "alias": visitor})
    hops = 0
    while rows and rows[0][6] is not None and hops < 5:
        rows = stmts.person.rows(cur, {"ws": ws, "cid": rows[0][6]})
        hops += 1
    return _Person(rows[0]) if rows else None


def _history(rows: list[Any]) -> tuple[list[str], list[str]]:
    """(bought, viewed) product ids, most recent first, each once, from (kind, properties) rows."""
    bought: list[str] = []
    viewed: list[str] = []
    if rows and all(isinstance(props, str) for _kind, props in rows):
        _cids, skus = _chunk_skus([(0, props) for _kind, props in rows])
    else:
        skus = [skus_of(kind, json_value(props)) for kind, props in rows]
    for (kind, _props), found in zip(rows, skus, strict=True):
        (bought if kind == "purchase" else viewed).extend(found)
    return list(dict.fromkeys(bought)), list(dict.fromkeys(viewed))


@contextmanager
def _cursor(crm: CRM) -> Iterator[tuple[Any, sa.Dialect]]:
    """A DB-API cursor for the decision's reads and the dialect: on a connection of the engine's
    pool taken without SQLAlchemy's ``Connection`` around it (its set-up and reset cost more than
    the decision's person and generation queries together), or on the host's connection when ecrm
    works inside one."""
    db = crm.db
    if db.joined:
        with db.read() as conn:
            cur = conn.connection.cursor()
            try:
                yield cur, conn.dialect
            finally:
                cur.close()
        return
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        try:
            yield cur, db.engine.dialect
        finally:
            cur.close()
    finally:
        raw.close()  # back to the pool (which rolls back whatever a statement left open)


def decide(
    crm: CRM,
    placement: str,
    *,
    customer_id: int | None = None,
    visitor: str | None = None,
    anonymous_id: str | None = None,
    context: Mapping[str, Any] | None = None,
    issue_visitor: bool = True,
    rng: random.Random | None = None,
) -> Decision:
    """See :meth:`ecrm_personalize.Personalize.decide`."""
    name = check_slug(placement, "placement", "placement name")
    ctx_in = _check_context(context)
    if customer_id is not None and (
        isinstance(customer_id, bool) or not isinstance(customer_id, int) or customer_id < 1
    ):
        raise ValidationError("customer_id", customer_id, "not an id", "send the integer id ecrm assigned")
    if anonymous_id is not None and (not isinstance(anonymous_id, str) or not 0 < len(anonymous_id) <= 320):
        raise ValidationError("anonymous_id", anonymous_id, "not an anonymous id", "send the analytics anonymousId")
    fallbacks: list[str] = []
    explanation: list[str] = []
    pl = load_placement(crm, name)
    if pl is None:
        fallbacks.append("unknown_placement")
        explanation.append(f"placement {name!r} is not defined: popular items, default presentation")
        pl = Placement(name=name, strategies=("greeting",), offers=0)

    vid: str | None = None
    cookie_out: str | None = None
    if customer_id is None:
        if visitor is not None:
            vid = tokens.verify_visitor(crm, visitor)
            if vid is None:
                fallbacks.append("invalid_visitor")
                explanation.append("the visitor cookie was not valid here: treated as a new visitor")
        if vid is None and anonymous_id is None and issue_visitor:
            cookie_out = tokens.issue_visitor(crm)
            vid = cookie_out.split(".", 1)[0]
    lookup_alias = anonymous_id if anonymous_id is not None else vid

    now = crm.now()
    ws = crm.workspace
    with _cursor(crm) as (cur, dialect):
        stmts = statements(crm, dialect)
        # 0. the generation of the cached catalogue and lists (one primary-key query)
        gen = cache.generation(crm, cur, dialect)
        row = None
        if customer_id is not None or (lookup_alias is not None and cookie_out is None):
            row = _person(cur, ws, stmts, customer_id, lookup_alias)
            if row is None and customer_id is not None:
                fallbacks.append("unknown_customer")
                explanation.append(f"customer {customer_id} is not known here: popular items")
        cid = row.id if row is not None else None
        customer = (
            {
                "name": row.name,
                "timezone": row.timezone,
                "locale": row.locale,
                "lifecycle_stage": row.lifecycle_stage,
                "attributes": row.attributes or {},
            }
            if row is not None
            else None
        )
        prefs = (row.data if row is not None else None) or {}

        bought: list[str] = []
        viewed: list[str] = []
        if cid is not None:
            bought, viewed = _history(stmts.history.rows(cur, {"ws": ws, "cid": cid}))

        subject = f"c{cid}" if cid is not None else f"v{lookup_alias or 'none'}"
        control = _in_control(crm, pl, subject)
        segment, computed = _segment(crm, pl, customer, cid)
        page_sku = ctx_in.get("sku") if isinstance(ctx_in.get("sku"), str) else None

        # 3. the lists, by key (cached per generation)
        rec = "control" if control else pl.recommender
        sources = list_keys(rec, bought, viewed, page_sku) if not control else {"popular": ["popular"]}
        keys = sorted({k for ks in sources.values() for k in ks if len(k) <= 260})
        lists = cache.lists(crm, cur, dialect, gen, keys)
        exclude = set(bought) if pl.exclude_bought else set()
        if page_sku:
            exclude.add(page_sku)
        candidates = blend(rec, sources, lists, viewed, pl.k, exclude, limit=max(pl.k * 4, 20))

        # 4. the catalogue: deleted or unavailable products are left out
        want = {c.sku for c in candidates} | set(bought[:20]) | set(viewed[:20])
        products = cache.products(crm, cur, dialect, gen, want)
        arms = None
        if pl.alternatives and "bandit" in pl.strategies:  # also in control: a constant number of queries
            arms = {
                str(arm): (int(trials), int(wins))
                for arm, trials, wins in stmts.arms.rows(cur, {"ws": ws, "placement": pl.name, "segment": segment})
            }

    unavailable = _unavailable(crm, [c.sku for c in candidates if c.sku in products])
    kept: list[Candidate] = []
    dropped = 0
    for c in candidates:
        prod = products.get(c.sku)
        if prod is None or not prod[2] or c.sku in unavailable:
            dropped += 1
            continue
        c.title, c.category = prod[0], prod[1]
        kept.append(c)
    if dropped:
        explanation.append(f"{dropped} candidates left out: no longer in the catalogue or unavailable")
    if exclude and pl.exclude_bought and bought:
        explanation.append("products they already bought are excluded")
    categories: Counter[str] = Counter()
    for s in bought[:20] + viewed[:20]:
        prod = products.get(s)
        if prod is not None and prod[1]:
            categories[prod[1]] += 2 if s in bought else 1

    offers = _offer_candidates(crm, pl, cid, control) if pl.offers else []
    dctx = DecisionContext(
        crm=crm,
        placement=pl,
        now=now,
        segment=segment,
        customer_id=cid,
        customer=customer,
        preferences=prefs,
        context=ctx_in,
        bought=tuple(bought),
        viewed=tuple(viewed),
        categories=categories,
        items=kept,
        offers=offers,
        variant={},
        explanation=explanation,
        arms=arms,
        rng=rng or _RNG,
    )
    if computed is not None:
        dctx._computed = computed  # asked for once per decision
    if control:
        dctx.explain(
            f"control group of placement {pl.name!r}: no personalization (popular items, default presentation)"
        )
        _apply(crm, dctx, ("greeting",) if "greeting" in pl.strategies else (), neutral=True)
    else:
        if not bought and not viewed and not page_sku and not fallbacks:
            dctx.explain("no history yet: popular items")
        _apply(crm, dctx, pl.strategies)
    dctx.variant.setdefault("layout", "grid")
    group = "control" if control else "personalized"
    did = tokens.decision_id(
        crm,
        placement=pl.name,
        group=group,
        segment=segment,
        alternatives=tuple(dctx.alternatives),
        customer_id=cid,
        visitor=vid if cid is None else None,
    )
    return Decision(
        id=did,
        placement=pl.name,
        group=group,
        segment=segment,
        items=tuple(
            Item(sku=c.sku, title=c.title, category=c.category, score=c.score, reasons=tuple(c.reasons[:5]))
            for c in dctx.items[: pl.k]
        ),
        offers=tuple(
            OfferPick(code=o.code, name=o.name, kind=o.kind, content=o.content, score=o.score, reason=o.reason)
            for o in dctx.offers[: pl.offers]
        ),
        alternatives=tuple(dctx.alternatives),
        variant=dict(dctx.variant),
        explanation=tuple(dctx.explanation),
        customer_id=cid,
        visitor=cookie_out,
        fallback=fallbacks[0] if fallbacks else None,
    )


def _unavailable(crm: CRM, skus: list[str]) -> set[str]:
    if not skus or not crm.plugins.has_impls("personalize_unavailable"):
        return set()
    out: set[str] = set()
    for impl in crm.plugins.pm.hook.personalize_unavailable.get_hookimpls():
        try:
            found = impl.function(*[{"crm": crm, "skus": list(skus)}[a] for a in impl.argnames])
            out |= {str(s) for s in found or ()}
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit, CancelledError…: the plugin failed, not the decision
            crm.plugins.record_failure(impl.plugin_name, "personalize_unavailable", exc)
    return out


def _offer_candidates(crm: CRM, pl: Placement, customer_id: int | None, control: bool) -> list[OfferCandidate]:
    offers = _active_offers(crm)
    ruled = [o for o in offers if o.eligibility is not None]
    eligible = {o.code for o in offers if o.eligibility is None}
    if ruled and customer_id is not None and not control:
        st = state(crm)
        try:
            kinds: set[str] | None = set()
            rules = {}
            for o in ruled:
                rule = st.cached(
                    ("rule", crm.workspace, o.code, str(o.updated_at)),
                    60.0,
                    lambda o=o: crm.segments.compile(o.eligibility),
                )
                rules[o.code] = rule
                kinds = None if kinds is None or rule.kinds is None else kinds | rule.kinds
            ectx = crm.segments.context(customer_id, kinds=kinds)
            eligible |= {code for code, rule in rules.items() if rule.evaluate(ectx)}
        except Exception as exc:  # a broken rule: the offer is not shown, the decision goes on
            crm.plugins.record_failure("personalize", "offer eligibility", exc)
    return [
        OfferCandidate(
            code=o.code,
            name=o.name,
            kind=o.kind,
            content=dict(o.content),
            score=float(o.priority),
            reason="by priority" if o.eligibility is None else "eligible by its rule",
        )
        for o in offers
        if o.code in eligible
    ]


def _apply(crm: CRM, ctx: DecisionContext, names: tuple[str, ...], *, neutral: bool = False) -> None:
    from .plugin import strategy

    for n in names:
        strat = strategy(crm, n)
        if strat is None:
            ctx.explain(f"strategy {n!r} is not installed: skipped")
            continue
        if neutral:
            saved = ctx.customer
            ctx.customer = None
        try:
            strat.apply(ctx)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit, CancelledError…: the strategy failed, not the decision
            crm.plugins.record_failure(getattr(strat, "_plugin", "personalize"), f"strategy {n}", exc)
            ctx.explain(f"strategy {n!r} failed ({type(exc).__name__}): skipped")
        finally:
            if neutral:
                ctx.customer = saved
