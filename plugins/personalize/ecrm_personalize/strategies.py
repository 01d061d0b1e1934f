"""Strategies: how a decision is fitted to a person, one plugin per idea.

A strategy is registered through the core's hook ``ecrm_register_strategies``
as a :class:`~ecrm_core.registry.StrategySpec` whose ``factory(crm)`` returns
an object with an ``apply(ctx)`` method (subclass :class:`Strategy`).  A
placement lists the strategies it applies, in order; each one reads and
changes the :class:`DecisionContext`:

* ``ctx.items`` — the candidate products (:class:`Candidate`: sku, score,
  reasons), already filtered by the business rules;
* ``ctx.offers`` — the candidate offers (:class:`OfferCandidate`);
* ``ctx.variant`` — the presentation (``greeting``, ``locale``, ``tone``,
  ``layout``…);
* ``ctx.alternatives`` — the adaptive alternatives, in the order shown;
* ``ctx.explain(text)`` — add a sentence to the decision's explanation.

A strategy must be cheap (it runs inside every decision: no queries of its
own unless it must, no model fitting) and must not raise for odd data; one
that raises is skipped for that decision, recorded in
``crm.plugins.failures`` and named in the explanation.

The four built-in strategies are one per type of personalization
(Gilmore & Pine): ``greeting`` (cosmetic), ``ranked`` (transparent),
``bandit`` (adaptive) and ``preferences`` (collaborative).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from attrs import define, field

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

    from .model import Placement

__all__ = [
    "KINDS",
    "Bandit",
    "Candidate",
    "DecisionContext",
    "Greeting",
    "OfferCandidate",
    "PreferenceCentre",
    "Ranked",
    "Strategy",
    "part_of_day",
]

#: the four types of personalization a strategy's ``kind`` names
KINDS = ("cosmetic", "transparent", "adaptive", "collaborative")


@define
class Candidate:
    """A product that may be recommended: ``score`` orders them; ``reasons`` explain them."""

    sku: str
    score: float
    reasons: list[str] = field(factory=list)
    title: str = ""
    category: str | None = None


@define
class OfferCandidate:
    code: str
    name: str
    kind: str
    content: Mapping[str, Any]
    score: float
    reason: str


@define
class DecisionContext:
    """Everything a strategy may read and change while one decision is made.

    ``customer``: the person's fields (``name``, ``timezone``, ``locale``,
    ``lifecycle_stage``, ``attributes``) or ``None`` for an unknown visitor;
    ``bought``/``viewed``: product ids, most recent first; ``categories``:
    how often each category appears in their history; ``preferences``: what
    they told the preference centre; ``context``: what the caller passed
    (``sku`` of the page, ``locale``, ``timezone``, ``device``…).
    """

    crm: Any
    placement: Placement
    now: datetime
    segment: str
    customer_id: int | None
    customer: Mapping[str, Any] | None
    preferences: Mapping[str, Any]
    context: Mapping[str, Any]
    bought: tuple[str, ...]
    viewed: tuple[str, ...]
    categories: Counter[str]
    items: list[Candidate]
    offers: list[OfferCandidate]
    variant: dict[str, Any]
    alternatives: list[str] = field(factory=list)
    explanation: list[str] = field(factory=list)
    arms: Mapping[str, tuple[int, int]] | None = None
    rng: random.Random = field(factory=random.Random)

    _computed: Mapping[str, Any] | None = field(default=None, init=False, repr=False)

    def explain(self, text: str) -> None:
        """Add a sentence to the decision's explanation."""
        self.explanation.append(text)

    def attribute(self, name: str, default: Any = None) -> Any:
        """The person's attribute ``name``: stored, else computed by a plugin
        (the core's ``ecrm_computed_attributes``, e.g. ecrm-analytics'
        ``rfm_group``, ``clv_p_alive``); ``default`` for a visitor.

        The computed values are asked for on the first call that needs them,
        once per decision, so a strategy that reads none costs nothing.
        """
        attrs = (self.customer or {}).get("attributes") or {}
        if isinstance(attrs, Mapping) and attrs.get(name) is not None:
            return attrs[name]
        if self.customer_id is None:
            return default
        if self._computed is None:
            self._computed = self.crm.customers.computed([self.customer_id]).get(self.customer_id) or {}
        value = self._computed.get(name)
        return default if value is None else value

    def options(self, strategy: str) -> Mapping[str, Any]:
        """The placement's settings for ``strategy`` (``placement.options[strategy]``)."""
        return self.placement.options.get(strategy, {})


class Strategy:
    """Base class of strategies: override :meth:`apply`."""

    #: the personalization type: cosmetic, transparent, adaptive or collaborative
    kind = "transparent"

    def __init__(self, crm: CRM) -> None:
        self.crm = crm

    def apply(self, ctx: DecisionContext) -> None:  # pragma: no cover - interface
        raise NotImplementedError


# ---------------------------------------------------------------------------
# cosmetic: the presentation only
# ---------------------------------------------------------------------------

DEFAULT_GREETINGS = {
    "en": "Good {{ part_of_day }}{% if first_name %}, {{ first_name }}{% endif %}!",
    "fr": "{% if part_of_day == 'evening' %}Bonsoir{% else %}Bonjour{% endif %}{% if first_name %} {{ first_name }}{% endif %} !",
    "de": "Guten {{ {'morning': 'Morgen', 'afternoon': 'Tag', 'evening': 'Abend', 'night': 'Abend'}[part_of_day] }}"
    "{% if first_name %}, {{ first_name }}{% endif %}!",
    "es": "{{ {'morning': 'Buenos días', 'afternoon': 'Buenas tardes', 'evening': 'Buenas noches', 'night': 'Buenas noches'}"
    "[part_of_day] }}{% if first_name %}, {{ first_name }}{% endif %}!",
    "ko": "{% if first_name %}{{ first_name }}님, {% endif %}안녕하세요!",
}
FORMAL_EN = "Good {{ part_of_day }}{% if name %}, {{ name }}{% endif %}. Welcome back."
DEFAULT_TONES = {
    "prospect": "welcoming",
    "new": "welcoming",
    "at_risk": "warm",
    "lapsed": "warm",
    "default": "friendly",
}
DEFAULT_LAYOUTS = {
    "prospect": "discover",
    "new": "discover",
    "lapsed": "winback",
    "at_risk": "winback",
    "default": "grid",
}


def part_of_day(hour: int) -> str:
    """``morning`` (5-11), ``afternoon`` (12-17), ``evening`` (18-22) or ``night``."""
    if 5 <= hour < 12:
        return "morning"
    if 12 <= hour < 18:
        return "afternoon"
    if 18 <= hour < 23:
        return "evening"
    return "night"


@lru_cache(maxsize=512)
def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return None


@lru_cache(maxsize=1)
def _sandbox() -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(autoescape=True)


#: the variables a greeting template is given
GREETING_VARIABLES = ("name", "first_name", "part_of_day", "tone", "locale", "returning")
#: the filters a greeting template may use: none makes its output longer than its input
GREETING_FILTERS = ("e", "escape", "title", "capitalize", "lower", "upper", "trim", "default", "d", "striptags")
#: the tests (``is defined``…) a greeting template may use
GREETING_TESTS = ("defined", "undefined", "none", "string", "sameas", "eq", "ne", "in")
#: the longest greeting template
MAX_GREETING_SOURCE = 2000
#: the longest greeting (longer output is cut)
MAX_GREETING = 500


def greeting_grammar() -> tuple[type, ...]:
    """The Jinja2 nodes a greeting template may hold: text, variables, conditions, comparisons, joining
    (``~``, ``+``), lookups in literal lists and mappings and the :data:`GREETING_FILTERS`: no loop, call,
    macro, assignment, attribute, slice or arithmetic that repeats text, so the work and the output of a
    render grow with its source and values only."""
    from jinja2 import nodes

    return (
        nodes.Template, nodes.Output, nodes.TemplateData, nodes.Name, nodes.Const, nodes.If, nodes.CondExpr,
        nodes.Compare, nodes.Operand, nodes.And, nodes.Or, nodes.Not, nodes.Concat, nodes.Add, nodes.Filter,
        nodes.Test, nodes.Tuple, nodes.List, nodes.Dict, nodes.Pair, nodes.Getitem,
    )  # fmt: skip


def check_greeting(source: Any, where: str = "greeting") -> str:
    """``source`` if it is a greeting template :func:`render_greeting` renders; else a
    :class:`~ecrm_core.errors.ValidationError` naming ``where`` and what is not allowed."""
    from ecrm_core.errors import ValidationError
    from jinja2 import TemplateSyntaxError, nodes

    fix = (
        f"use text, {{{{ variables }}}} ({', '.join(GREETING_VARIABLES)}), {{% if %}}, ~ and the filters "
        f"{', '.join(GREETING_FILTERS)}, in at most {MAX_GREETING_SOURCE} characters"
    )
    if not isinstance(source, str) or len(source) > MAX_GREETING_SOURCE:
        raise ValidationError(where, source, "not a greeting template of at most 2,000 characters", fix)
    try:
        tree = _sandbox().parse(source)
    except TemplateSyntaxError as exc:
        raise ValidationError(where, source, f"not a template: {exc.message} (line {exc.lineno})", fix) from None
    allowed = greeting_grammar()
    for node in (tree, *tree.find_all(nodes.Node)):
        if not isinstance(node, allowed):
            problem = f"{type(node).__name__.lower()} (line {node.lineno}) is not allowed in a greeting"
            raise ValidationError(where, source, problem, fix)
        if isinstance(node, nodes.Name) and (node.ctx != "load" or node.name not in GREETING_VARIABLES):
            raise ValidationError(where, source, f"unknown variable {node.name!r} (line {node.lineno})", fix)
        if isinstance(node, nodes.Filter) and node.name not in GREETING_FILTERS:
            raise ValidationError(where, source, f"filter {node.name!r} (line {node.lineno}) is not allowed", fix)
        if isinstance(node, nodes.Test) and node.name not in GREETING_TESTS:
            raise ValidationError(where, source, f"test {node.name!r} (line {node.lineno}) is not allowed", fix)
        if isinstance(node, nodes.Filter | nodes.Test) and (node.dyn_args or node.dyn_kwargs):
            raise ValidationError(where, source, f"*args in {node.name!r} (line {node.lineno})", fix)
    return source


@lru_cache(maxsize=256)
def _template(source: str) -> Any:
    return _sandbox().from_string(check_greeting(source))


def render_greeting(source: str, values: Mapping[str, Any]) -> str:
    """Render a greeting template in the Jinja2 sandbox (HTML-escaped, at most 500 characters).

    The template is checked first (:func:`check_greeting`, whatever stored it): without loops, calls or
    repeating arithmetic its work and output grow with its source and values only, so no greeting can
    exhaust the process that decides.
    """
    return str(_template(source).render(**values))[:MAX_GREETING]


class Greeting(Strategy):
    """Cosmetic: greeting by name and time of day in the person's timezone, locale, tone and layout.

    The greeting template comes from ``placement.greetings[locale]`` (else a
    built-in one), rendered in the Jinja2 sandbox; the tone and layout from
    ``placement.tones``/``layouts`` by lifecycle stage (``default`` for the
    rest), unless a preference set them.  Nothing else changes.
    """

    kind = "cosmetic"

    def apply(self, ctx: DecisionContext) -> None:
        c = ctx.customer or {}
        p = ctx.placement
        locale = str(ctx.variant.get("locale") or c.get("locale") or ctx.context.get("locale") or "en")
        lang = locale.replace("_", "-").split("-")[0].lower()
        tz_name = c.get("timezone") or ctx.context.get("timezone") or "UTC"
        zone = _zone(str(tz_name)) or _zone("UTC")
        local = ctx.now.astimezone(zone)
        stage = str(c.get("lifecycle_stage") or "prospect")
        tones = {**DEFAULT_TONES, **p.tones}
        layouts = {**DEFAULT_LAYOUTS, **p.layouts}
        tone = ctx.variant.get("tone") or tones.get(stage) or tones["default"]
        layout = ctx.variant.get("layout") or layouts.get(stage) or layouts["default"]
        source = p.greetings.get(locale) or p.greetings.get(lang)
        if source is None:
            source = (
                FORMAL_EN if lang == "en" and tone == "formal" else DEFAULT_GREETINGS.get(lang, DEFAULT_GREETINGS["en"])
            )
        name = c.get("name") or ""
        values = {
            "name": name,
            "first_name": name.split()[0] if name.strip() else "",
            "part_of_day": part_of_day(local.hour),
            "tone": tone,
            "locale": locale,
            "returning": ctx.customer is not None,
        }
        try:
            greeting = render_greeting(source, values)
        except Exception as exc:  # a broken or hostile template: the built-in greeting instead
            ctx.crm.plugins.record_failure("personalize", "strategy greeting", exc)
            greeting = render_greeting(DEFAULT_GREETINGS["en"], values)
            ctx.explain(f"the greeting template failed ({type(exc).__name__}): the default greeting was used")
        ctx.variant.update(
            greeting=greeting, locale=locale, tone=tone, layout=layout, local_time=local.strftime("%H:%M")
        )
        ctx.explain(
            f"greeting for the {values['part_of_day']} in {getattr(zone, 'key', 'UTC')}, {tone} tone, {layout} layout"
        )


# ---------------------------------------------------------------------------
# transparent: the content changes, silently
# ---------------------------------------------------------------------------

#: offer kinds that suit each lifecycle stage (retention wants incentives, acquisition wants content)
STAGE_OFFER_KINDS = {
    "prospect": ("content", "discount"),
    "new": ("content", "product"),
    "active": ("product", "content"),
    "won_back": ("product", "coupon"),
    "at_risk": ("discount", "coupon"),
    "lapsed": ("coupon", "discount"),
}


class Ranked(Strategy):
    """Transparent: items and offers re-ranked for the person without announcing it.

    Items in the categories the person bought or viewed most gain up to
    ``affinity`` (default 0.5) of their score; offers whose kind suits the
    lifecycle stage (incentives for ``at_risk``/``lapsed``, content for
    ``prospect``/``new``) or the person's RFM group (the ``rfm_group``
    attribute, stored or computed by ecrm-analytics) rank first.  The presentation stays as it is.
    """

    kind = "transparent"

    def apply(self, ctx: DecisionContext) -> None:
        weight = float(ctx.options("ranked").get("affinity", 0.5))
        total = sum(ctx.categories.values())
        if total and ctx.items:
            # one factor and one sentence per category (a decision ranks ~40 items of a few categories)
            boost = {
                c: (1 + weight * (n / total), f"{c} is {n / total:.0%} of their history")
                for c, n in ctx.categories.items()
                if n
            }
            for it in ctx.items:
                found = boost.get(it.category or "")
                if found is not None:
                    it.score *= found[0]
                    it.reasons.append(found[1])
            ctx.items.sort(key=lambda i: -i.score)
            top = ctx.categories.most_common(1)[0][0]
            ctx.explain(f"items ranked by category affinity (top: {top})")
        c = ctx.customer or {}
        stage = str(c.get("lifecycle_stage") or "prospect")
        rfm = ctx.attribute("rfm_group")
        kinds = STAGE_OFFER_KINDS.get(stage, ())
        if rfm in ("champions", "loyal"):
            kinds = ("product", *kinds)
        elif rfm in ("hibernating", "lost", "at_risk"):
            kinds = ("coupon", "discount", *kinds)
        for o in ctx.offers:
            if o.kind in kinds:
                bonus = 100.0 * (len(kinds) - kinds.index(o.kind))
                o.score += bonus
                o.reason = f"{o.kind} suits a {rfm or stage} customer"
        ctx.offers.sort(key=lambda o: -o.score)
        if ctx.offers:
            ctx.explain(f"offers ranked for lifecycle stage {stage!r}" + (f" and RFM group {rfm!r}" if rfm else ""))


# ---------------------------------------------------------------------------
# adaptive: alternatives offered, the choice learned
# ---------------------------------------------------------------------------


class Bandit(Strategy):
    """Adaptive: the placement's alternatives, ranked by Thompson sampling.

    Every alternative is shown; their order comes from one draw of
    ``Beta(1 + wins, 1 + trials - wins)`` each, with the state of the
    placement's bandit for the person's segment (an impression counts a
    trial for every alternative shown, the reward event a win for the one
    chosen).  With no history every alternative has the same uniform prior:
    the order is random, which is the exploration a new bandit needs.  The
    first alternative sets its presentation ``variant`` and puts its
    ``offer`` first.
    """

    kind = "adaptive"

    def apply(self, ctx: DecisionContext) -> None:
        alts = ctx.placement.alternatives
        if not alts:
            return
        arms = ctx.arms or {}
        draws = []
        for a in alts:
            trials, wins = arms.get(a.name, (0, 0))
            wins = max(0, min(wins, trials))
            draws.append((ctx.rng.betavariate(1 + wins, 1 + trials - wins), a))
        draws.sort(key=lambda d: -d[0])
        ctx.alternatives = [a.name for _d, a in draws]
        best = draws[0][1]
        ctx.variant.update(best.variant)
        ctx.variant["alternative"] = best.name
        if best.offer:
            for i, o in enumerate(ctx.offers):
                if o.code == best.offer:
                    o.reason = f"alternative {best.name!r} chosen by the bandit"
                    ctx.offers.insert(0, ctx.offers.pop(i))
                    break
        seen = sum(arms.get(a.name, (0, 0))[0] for a in alts)
        ctx.explain(
            f"alternative {best.name!r} first by Thompson sampling over {len(alts)} alternatives "
            f"({seen} trials in segment {ctx.segment!r})"
        )


# ---------------------------------------------------------------------------
# collaborative: what the person told us changes what and how
# ---------------------------------------------------------------------------


class PreferenceCentre(Strategy):
    """Collaborative: the preference centre's answers change content and presentation.

    ``interests`` (categories) boost items by ``boost`` (default 1.0 = x2)
    and offers whose ``content.category`` matches; ``exclude`` categories are
    removed; ``offers: false`` (or ``frequency: never``) shows no offers;
    ``presentation`` (``tone``, ``layout``, ``locale``) sets how it is shown.
    """

    kind = "collaborative"

    def apply(self, ctx: DecisionContext) -> None:
        prefs = ctx.preferences
        if not prefs:
            return
        boost = float(ctx.options("preferences").get("boost", 1.0))
        interests = {str(i).lower() for i in prefs.get("interests", ())}
        exclude = {str(i).lower() for i in prefs.get("exclude", ())}
        if exclude:
            before = len(ctx.items)
            ctx.items[:] = [i for i in ctx.items if (i.category or "").lower() not in exclude]
            if len(ctx.items) < before:
                ctx.explain(f"{before - len(ctx.items)} items left out: categories they excluded")
        if interests:
            for it in ctx.items:
                if (it.category or "").lower() in interests:
                    it.score *= 1 + boost
                    it.reasons.append(f"they said they like {it.category}")
            for o in ctx.offers:
                cat = o.content.get("category") if isinstance(o.content, Mapping) else None
                if isinstance(cat, str) and cat.lower() in interests:
                    o.score += 1000
                    o.reason = f"matches their stated interest in {cat}"
            ctx.items.sort(key=lambda i: -i.score)
            ctx.offers.sort(key=lambda o: -o.score)
            ctx.explain(f"stated interests: {', '.join(sorted(interests))}")
        if prefs.get("offers") is False or prefs.get("frequency") == "never":
            if ctx.offers:
                ctx.explain("no offers: they asked for none")
            ctx.offers.clear()
        presentation = prefs.get("presentation") or {}
        if isinstance(presentation, Mapping):
            for key in ("tone", "layout", "locale"):
                if presentation.get(key):
                    ctx.variant[key] = str(presentation[key])
            if presentation:
                ctx.explain("presentation as they chose it")
