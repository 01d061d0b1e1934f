"""``personalize(crm)``: the Python API of the plugin."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from ecrm_core.errors import NotFound, ValidationError
from ecrm_core.validation import check_slug

from . import tokens
from .cache import bump_catalogue
from .model import Decision, Outcome, OutcomeResult, Placement, Product
from .schema import OUTCOMES, PLACEMENTS, PREFERENCES, PRODUCTS
from .state import state

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

    from .evaluate import Evaluation
    from .recommend import RefreshReport

__all__ = ["FREQUENCIES", "MAX_PLACEMENT_BYTES", "PREFERENCE_KEYS", "Personalize"]

#: what the preference centre stores
PREFERENCE_KEYS = ("interests", "exclude", "needs", "frequency", "offers", "presentation", "channels")
FREQUENCIES = ("daily", "weekly", "monthly", "never")
#: the message purpose the preference centre controls (registered by the plugin)
PURPOSE = "recommendations"
#: the largest placement, as JSON: what GET /personalize/placements lists is bounded by it and the page size
MAX_PLACEMENT_BYTES = 32 * 1024


def _upsert(
    conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], index: list[str], update: list[str]
) -> None:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    stmt = insert(table).values(rows)
    conn.execute(stmt.on_conflict_do_update(index_elements=index, set_={c: stmt.excluded[c] for c in update}))


def _text_list(value: Any, where: str, max_items: int = 50) -> list[str]:
    if not isinstance(value, list | tuple) or len(value) > max_items:
        raise ValidationError(where, value, f"not a list of at most {max_items} texts", 'send e.g. ["shoes"]')
    out = []
    for i, v in enumerate(value):
        if not isinstance(v, str) or not 0 < len(v.strip()) <= 100:
            raise ValidationError(f"{where}[{i}]", v, "not a short text", "send 1-100 characters")
        out.append(v.strip())
    return list(dict.fromkeys(out))


class Personalize:
    """Personalization for one CRM (in its workspace).  Build with :func:`ecrm_personalize.personalize`."""

    def __init__(self, crm: CRM, *, seed: int | None = None) -> None:
        import random

        self.crm = crm
        #: the bandits' random draws: ``seed`` makes them repeatable (tests, simulations)
        self.rng = random.Random(seed) if seed is not None else None

    def _t(self, name: str) -> sa.Table:
        return self.crm.db.tables[name]

    # ------------------------------------------------------------------
    # placements
    # ------------------------------------------------------------------
    def define(self, name: str, **config: Any) -> Placement:
        """Create or replace the placement ``name`` (see :class:`~ecrm_personalize.Placement`)."""
        from .strategies import check_greeting

        pl = Placement.from_dict(config, name=name)
        for locale, source in pl.greetings.items():  # refused now, not at each decision
            check_greeting(source, f"greetings.{locale}")
        size = len(json.dumps(pl.to_dict(), ensure_ascii=False).encode())
        if size > MAX_PLACEMENT_BYTES:  # every answer that shows placements stays bounded
            raise ValidationError(
                "placement", f"<{size} bytes>", f"larger than {MAX_PLACEMENT_BYTES} bytes as JSON",
                "use fewer or shorter greetings, tones, layouts, alternatives and options",
            )  # fmt: skip
        strategies = self.crm.registry.strategies
        missing = [s for s in pl.strategies if s not in strategies]
        if missing:
            raise ValidationError(
                "strategies", missing[0], "no such strategy", f"installed: {', '.join(sorted(strategies))}"
            )
        t = self._t(PLACEMENTS)
        with self.crm.db.write() as conn:
            _upsert(
                conn,
                t,
                [
                    {
                        "workspace_id": self.crm.workspace,
                        "name": pl.name,
                        "config": pl.to_dict(),
                        "updated_at": self.crm.now(),
                    }
                ],
                ["workspace_id", "name"],
                ["config", "updated_at"],
            )
        state(self.crm).forget("placement", self.crm.workspace, pl.name)
        return pl

    def placement(self, name: str) -> Placement:
        """The placement ``name``; :class:`~ecrm_core.errors.NotFound` if it is not defined."""
        from .engine import load_placement

        state(self.crm).forget("placement", self.crm.workspace, name)
        pl = load_placement(self.crm, check_slug(name, "placement", "placement name"))
        if pl is None:
            raise NotFound("placement", name)
        return pl

    def placements(self, *, limit: int | None = None, after: str | None = None) -> list[Placement]:
        """The placements by name: at most ``limit`` (``None``: all), those named after ``after``."""
        t = self._t(PLACEMENTS)
        q = sa.select(t.c.name, t.c.config).where(t.c.workspace_id == self.crm.workspace).order_by(t.c.name)
        if after is not None:
            q = q.where(t.c.name > after)
        if limit is not None:
            q = q.limit(limit)
        with self.crm.db.read() as conn:
            rows = conn.execute(q).all()
        return [Placement.from_dict(r.config, name=r.name) for r in rows]

    def remove(self, name: str) -> None:
        t = self._t(PLACEMENTS)
        with self.crm.db.write() as conn:
            conn.execute(sa.delete(t).where(t.c.workspace_id == self.crm.workspace, t.c.name == name))
        state(self.crm).forget("placement", self.crm.workspace, name)

    # ------------------------------------------------------------------
    # catalogue
    # ------------------------------------------------------------------
    def add_products(self, products: Iterable[Product | Mapping[str, Any]]) -> int:
        """Create or update catalogue entries (``sku``, ``title``, ``category``, ``attributes``,
        ``available``); return how many.  The recommenders pick them up at the next refresh."""
        rows = []
        now = self.crm.now()
        for i, p in enumerate(products):
            if isinstance(p, Mapping):
                unknown = set(p) - {"sku", "title", "category", "attributes", "available"}
                if unknown:
                    raise ValidationError(
                        f"products[{i}].{sorted(unknown)[0]}",
                        "...",
                        "unknown product field",
                        "use sku, title, category, attributes, available",
                    )
                p = Product(**p)
            sku = p.sku
            if not isinstance(sku, str) or not 0 < len(sku) <= 200 or sku != sku.strip():
                raise ValidationError(f"products[{i}].sku", sku, "not a product id", "send 1-200 characters")
            if not isinstance(p.title, str) or len(p.title) > 500:
                raise ValidationError(f"products[{i}].title", p.title, "not a title", "send at most 500 characters")
            if not isinstance(p.attributes, Mapping):
                raise ValidationError(f"products[{i}].attributes", p.attributes, "not a mapping", "send an object")
            rows.append(
                {
                    "workspace_id": self.crm.workspace,
                    "sku": sku,
                    "title": p.title,
                    "category": p.category,
                    "attributes": dict(p.attributes),
                    "available": bool(p.available),
                    "updated_at": now,
                }
            )
        t = self._t(PRODUCTS)
        with self.crm.db.write() as conn:
            for start in range(0, len(rows), 500):
                _upsert(
                    conn,
                    t,
                    rows[start : start + 500],
                    ["workspace_id", "sku"],
                    ["title", "category", "attributes", "available", "updated_at"],
                )
            bump_catalogue(self.crm, conn)
        return len(rows)

    def remove_products(self, skus: Sequence[str]) -> int:
        """Delete products from the catalogue: they are never recommended again, even from older lists."""
        t = self._t(PRODUCTS)
        with self.crm.db.write() as conn:
            n = conn.execute(
                sa.delete(t).where(t.c.workspace_id == self.crm.workspace, t.c.sku.in_(list(skus)))
            ).rowcount
            bump_catalogue(self.crm, conn)
        return int(n)

    def set_available(self, sku: str, available: bool) -> None:
        t = self._t(PRODUCTS)
        with self.crm.db.write() as conn:
            conn.execute(
                sa.update(t)
                .where(t.c.workspace_id == self.crm.workspace, t.c.sku == sku)
                .values(available=bool(available), updated_at=self.crm.now())
            )
            bump_catalogue(self.crm, conn)

    # ------------------------------------------------------------------
    # deciding and learning
    # ------------------------------------------------------------------
    def decide(
        self,
        customer_or_visitor: int | str | None,
        placement: str,
        context: Mapping[str, Any] | None = None,
        *,
        customer_id: int | None = None,
        visitor: str | None = None,
        anonymous_id: str | None = None,
    ) -> Decision:
        """Decide what ``placement`` shows to a person, and how.

        :param customer_or_visitor: a customer id (int), a visitor cookie
            (str, from :meth:`visitor_cookie` or an earlier decision), or
            ``None`` (a new visitor, or pass ``customer_id=``/``visitor=``
            explicitly).
        :param placement: the placement's name.  ``anonymous_id``
            (analytics.js) is trusted as given: use it only with ids your
            own server vouches for.
        :param context: what the page knows: ``sku`` (the product shown),
            ``locale``, ``timezone``, ``device``…
        :return: a :class:`~ecrm_personalize.Decision`: items, offers,
            alternatives, presentation ``variant``, ``explanation`` and the
            decision ``id`` to report outcomes against.

        Defined fallbacks, never an error for them: an unknown placement
        (popular items, default presentation), an unknown customer or an
        invalid/expired/other-workspace cookie (a new visitor: no one's
        history), no history (popular items), a bandit with no history
        (uniform prior), products gone from the catalogue (left out).
        """
        from .engine import decide

        if isinstance(customer_or_visitor, bool):
            raise ValidationError(
                "customer_or_visitor",
                customer_or_visitor,
                "not a customer id or visitor cookie",
                "send an int or a str",
            )
        if isinstance(customer_or_visitor, int):
            customer_id = customer_or_visitor
        elif isinstance(customer_or_visitor, str):
            visitor = customer_or_visitor
        elif customer_or_visitor is not None:
            raise ValidationError(
                "customer_or_visitor",
                customer_or_visitor,
                "not a customer id or visitor cookie",
                "send an int or a str",
            )
        return decide(
            self.crm,
            placement,
            customer_id=customer_id,
            visitor=visitor,
            anonymous_id=anonymous_id,
            context=context,
            rng=self.rng,
        )

    def report(self, decision: str, event: str, item: str = "", *, value: float | None = None) -> OutcomeResult:
        """Report one outcome (``impression``, ``click``, ``conversion``) of a decision (see :meth:`report_many`)."""
        return self.report_many([Outcome(decision=decision, event=event, item=item, value=value)])[0]

    def report_many(self, outcomes: Iterable[Outcome | Mapping[str, Any]]) -> list[OutcomeResult]:
        """Report outcomes in one set-based write; idempotent (a replay is a ``duplicate``);
        an unknown or forged decision id is ``rejected`` (nothing changes)."""
        from .outcomes import record

        return record(self.crm, [o if isinstance(o, Outcome) else Outcome(**o) for o in outcomes])

    def arms(
        self, placement: str, segment: str | None = None, *, limit: int | None = None, after: str | None = None
    ) -> dict[str, dict[str, dict[str, int]]]:
        """The bandit state: ``{segment: {alternative: {"trials": n, "wins": n}}}``,
        segments in name order; ``limit`` segments at most, those after ``after``
        (a placement segmented by an attribute has one segment per value)."""
        from .schema import ARMS

        a = self._t(ARMS)
        where = [a.c.workspace_id == self.crm.workspace, a.c.placement == placement]
        if segment is not None:
            where.append(a.c.segment == segment)
        if after is not None:
            where.append(a.c.segment > after)
        q = sa.select(a.c.segment, a.c.arm, a.c.trials, a.c.wins).where(*where)
        if limit is not None:
            first = sa.select(a.c.segment).where(*where).distinct().order_by(a.c.segment).limit(limit)
            q = q.where(a.c.segment.in_(first.scalar_subquery()))
        out: dict[str, dict[str, dict[str, int]]] = {}
        with self.crm.db.read() as conn:
            for r in conn.execute(q.order_by(a.c.segment, a.c.arm)):
                out.setdefault(r.segment, {})[r.arm] = {"trials": int(r.trials), "wins": int(r.wins)}
        return out

    def uplift(self, placement: str) -> dict[str, Any]:
        """Outcomes of the placement by group (``personalized`` vs ``control``): impressions,
        clicks, conversions, their rates, and the personalized rate over the control rate."""
        t = self._t(OUTCOMES)
        q = (
            sa.select(t.c.grp, t.c.event, sa.func.count())
            .where(t.c.workspace_id == self.crm.workspace, t.c.placement == placement)
            .group_by(t.c.grp, t.c.event)
        )
        groups: dict[str, dict[str, Any]] = {
            g: {e: 0 for e in ("impression", "click", "conversion")} for g in ("personalized", "control")
        }
        with self.crm.db.read() as conn:
            for grp, event, n in conn.execute(q):
                groups.setdefault(grp, {})[event] = int(n)
        for g in groups.values():
            shown = g["impression"] or 0
            g["click_rate"] = g["click"] / shown if shown else None
            g["conversion_rate"] = g["conversion"] / shown if shown else None
        out: dict[str, Any] = {"placement": placement, "groups": groups}
        for rate in ("click_rate", "conversion_rate"):
            p, c = groups["personalized"][rate], groups["control"][rate]
            out[f"{rate}_lift"] = (p / c) if p is not None and c else None
        return out

    # ------------------------------------------------------------------
    # visitors
    # ------------------------------------------------------------------
    def visitor_cookie(self) -> str:
        """A signed cookie value for a new anonymous visitor (HMAC with the CRM's secret, bound to
        the workspace, valid 400 days)."""
        return tokens.issue_visitor(self.crm)

    def visitor_id(self, cookie: str) -> str | None:
        """The visitor id of a valid cookie of this workspace, else ``None``."""
        return tokens.verify_visitor(self.crm, cookie)

    def identify(self, cookie: str, customer_id: int) -> int | None:
        """The visitor behind ``cookie`` logged in as ``customer_id``: stitch their history onto the customer.

        The cookie's visitor id becomes an ``anonymous`` alias of the
        customer (the core's aliases); if the visitor was already a prospect
        (tracked with that ``anonymous_id``), the prospect is merged into the
        customer (``crm.customers.merge``: interactions, aliases, consent and
        this plugin's rows move).  Returns the merged prospect's id, if any.
        An invalid cookie stitches nothing (``ValidationError``).
        """
        from ecrm_core.domain import Alias

        vid = tokens.verify_visitor(self.crm, cookie)
        if vid is None:
            raise ValidationError(
                "visitor", "***", "not a valid visitor cookie of this workspace", "send the cookie the decision set"
            )
        target = self.crm.customers.get(customer_id)
        assert target.id is not None
        from .people import on_visitor_identified

        owner = self.crm.customers.find(alias=Alias("anonymous", vid))
        merged = None
        if owner is None:
            self.crm.customers.add_alias(target.id, "anonymous", vid)
        elif owner.id != target.id:
            assert owner.id is not None
            self.crm.customers.merge(owner.id, into=target.id, reason="personalize: visitor logged in")
            merged = owner.id
        on_visitor_identified(self.crm, vid, target.id)
        return merged

    # ------------------------------------------------------------------
    # the preference centre
    # ------------------------------------------------------------------
    def preferences(self, customer_id: int) -> dict[str, Any]:
        """What the customer told the preference centre (``{}`` if nothing)."""
        cid = self.crm.customers.get(customer_id).id
        t = self._t(PREFERENCES)
        with self.crm.db.read() as conn:
            row = conn.execute(
                sa.select(t.c.data).where(t.c.customer_id == cid, t.c.workspace_id == self.crm.workspace)
            ).first()
        return dict(row.data) if row is not None else {}

    def set_preferences(self, customer_id: int, *, source: str = "preference centre", **answers: Any) -> dict[str, Any]:
        """Store the customer's answers (merged into earlier ones; ``None`` removes a key).

        * ``interests``/``exclude``: categories to favour / never show;
        * ``needs``: free-text tags (what they are looking for);
        * ``frequency``: ``daily``, ``weekly``, ``monthly`` or ``never``;
        * ``offers``: ``False`` to see no offers;
        * ``presentation``: ``tone``, ``layout``, ``locale``;
        * ``channels``: ``{"email": True, "sms": False}`` — recommendations by
          that channel.

        They change what decisions offer and how they show it, and feed the
        delivery pipeline: ``channels`` and ``frequency`` set the consent of
        the ``recommendations`` purpose (``consent["email:recommendations"]``,
        kept in the consent history); ``frequency: never`` withdraws it on
        every channel given.
        """
        unknown = sorted(set(answers) - set(PREFERENCE_KEYS))
        if unknown:
            raise ValidationError(unknown[0], "...", "unknown preference", f"use {', '.join(PREFERENCE_KEYS)}")
        current = self.preferences(customer_id)
        cid = self.crm.customers.get(customer_id).id
        assert cid is not None
        for key, value in answers.items():
            if value is None:
                current.pop(key, None)
                continue
            if key in ("interests", "exclude", "needs"):
                value = _text_list(value, key)
            elif key == "frequency":
                if value not in FREQUENCIES:
                    raise ValidationError(key, value, "not a frequency", f"use one of {', '.join(FREQUENCIES)}")
            elif key == "offers":
                if not isinstance(value, bool):
                    raise ValidationError(key, value, "not a boolean", "send true or false")
            elif key in ("presentation", "channels"):
                allowed = ("tone", "layout", "locale") if key == "presentation" else None
                if not isinstance(value, Mapping) or len(value) > 20:
                    raise ValidationError(key, value, "not a mapping", 'send e.g. {"tone": "formal"}')
                for k, v in value.items():
                    if allowed is not None and k not in allowed:
                        raise ValidationError(f"{key}.{k}", v, "unknown", f"use {', '.join(allowed)}")
                    if key == "channels":
                        check_slug(k, f"channels.{k}", "channel name")
                        if not isinstance(v, bool):
                            raise ValidationError(f"channels.{k}", v, "not a boolean", "send true or false")
                    elif not isinstance(v, str) or not 0 < len(v) <= 35:
                        raise ValidationError(f"{key}.{k}", v, "not a short text", "send 1-35 characters")
                value = dict(value)
            current[key] = value
        t = self._t(PREFERENCES)
        with self.crm.db.write() as conn:
            _upsert(
                conn,
                t,
                [
                    {
                        "customer_id": cid,
                        "workspace_id": self.crm.workspace,
                        "data": current,
                        "updated_at": self.crm.now(),
                    }
                ],
                ["customer_id"],
                ["data", "updated_at"],
            )
        channels = dict(current.get("channels") or {})
        if current.get("frequency") == "never":
            channels = dict.fromkeys(channels or {"email": False}, False)
        for channel, granted in channels.items():
            self.crm.customers.set_consent(cid, f"{channel}:{PURPOSE}", bool(granted), source=source)
        return current

    # ------------------------------------------------------------------
    # models
    # ------------------------------------------------------------------
    def refresh(self) -> RefreshReport:
        """Recompute every recommendation list now (what the ``personalize.refresh`` job does)."""
        from .recommend import _watermark, refresh

        return refresh(self.crm, watermark=_watermark(self.crm))

    def evaluate(self, *, k: int = 10, holdout: int = 1, min_purchases: int = 2) -> Evaluation:
        """Offline evaluation: replay held-out purchases (see :mod:`ecrm_personalize.evaluate`)."""
        from .evaluate import evaluate

        return evaluate(self.crm, k=k, holdout=holdout, min_purchases=min_purchases)
