"""Checks a campaign against the journey graph and the CRM, at save time.

Every problem is reported (not only the first), each naming the step or the
part of the campaign it is about: ``steps.remind.duration: negative wait``.
Rules are checked with the core's own parser and validator
(``crm.segments.compile``), interaction filters as the rules' interaction
filters (``kind[filter]``), templates by rendering them once through their
channel with a sample customer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ecrm_core.errors import EcrmError, NotFound, ValidationError

from .model import Campaign, Step, check_document, parse_duration

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = [
    "MAX_LISTED",
    "MAX_TEMPLATE_BYTES",
    "MAX_TEMPLATE_NAME",
    "CampaignInvalid",
    "check",
    "data_problems",
    "event_rule",
    "graph_problems",
]

#: Interaction kinds that count as engaging with a message (``engaged`` branch cases).
ENGAGEMENT_KINDS = ("email_open", "email_click", "click", "open")

#: A customer as the template check sees it (a positive id: channels sign links with it, e.g. the
#: e-mail channel's preference page, and refuse ids below 1).
SAMPLE_CUSTOMER = {
    "id": 1,
    "external_id": "sample",
    "email": "sample@example.com",
    "phone": "+10000000000",
    "name": "Sample Customer",
    "first_name": "Sample",
    "attributes": {},
    "lifecycle_stage": None,
    "timezone": "UTC",
    "locale": "en",
    "consent": {},
}


#: Problems a :class:`CampaignInvalid` message spells out (``problems`` keeps them all).
MAX_LISTED = 10

#: Largest inline template (a send step's ``template`` given as a mapping of parts), as JSON bytes.
MAX_TEMPLATE_BYTES = 256 * 1024
#: Longest template name (a send step's ``template`` given as text).
MAX_TEMPLATE_NAME = 200

#: The Python types a typed attribute's value may have (``AttributeDef.type``).
_ATTRIBUTE_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "datetime": (str,),
    "list": (list, tuple),
}


class CampaignInvalid(ValidationError):
    """A campaign was refused; ``problems`` lists every problem found (each a ValidationError)."""

    def __init__(self, problems: list[ValidationError]) -> None:
        first = problems[0]
        super().__init__(first.field, first.value, first.problem, first.fix)
        self.problems = problems
        if len(problems) > 1:
            # the message stays short: the first problems, and how many there are in all
            more = "; ".join(str(p) for p in problems[1:MAX_LISTED])
            cut = f"; ... (all {len(problems)} in .problems)" if len(problems) > MAX_LISTED else ""
            self.args = (f"{self.args[0]}; and {len(problems) - 1} more: {more}{cut}",)

    def at(self, prefix: str) -> CampaignInvalid:
        """The same problems with ``prefix`` in front of every field."""
        return CampaignInvalid([p.at(prefix) for p in self.problems])


def event_rule(kind: str, where: str | None) -> str:
    """Rule text that holds when a customer has one interaction of ``kind`` matching ``where``."""
    return f"`{kind}`[{where}].count() >= 1" if where else f"`{kind}`.count() >= 1"


def graph_problems(c: Campaign) -> Iterator[ValidationError]:
    """Duplicate ids, unknown targets, cycles, unreachable steps, negative waits, bad splits."""
    ids: dict[str, Step] = {}
    for s in c.steps:
        if s.id in ids:
            yield ValidationError(f"steps.{s.id}", s.id, "step id used twice", "give each step its own id")
        ids[s.id] = s
    for s in c.steps:
        for fld, target in s.targets():
            if target not in ids:
                yield ValidationError(f"steps.{s.id}.{fld}", target, "no such step", f"use one of: {_some(ids)}")
    # cycles: depth-first with an explicit stack (a journey of MAX_STEPS steps never reaches
    # the recursion limit), colouring the steps; `parent` gives the loop for the message
    colour: dict[str, int] = {c.first: 1}
    parent: dict[str, str] = {}
    stack: list[tuple[str, Iterator[tuple[str, str]]]] = [(c.first, iter(ids[c.first].targets()))]
    while stack:
        sid, todo = stack[-1]
        for fld, target in todo:
            if target not in ids:
                continue
            if colour.get(target) == 1:
                yield ValidationError(
                    f"steps.{sid}.{fld}",
                    target,
                    f"makes a cycle ({_loop(parent, sid, target)})",
                    "journeys go forward: end the loop with an exit or another step",
                )
            elif target not in colour:
                colour[target] = 1
                parent[target] = sid
                stack.append((target, iter(ids[target].targets())))
                break
        else:
            colour[sid] = 2
            stack.pop()
    for s in c.steps:
        if s.id not in colour:
            yield ValidationError(
                f"steps.{s.id}",
                s.id,
                "unreachable: no step leads to it",
                f"point a next/case at it, or delete it (the journey starts at {c.first!r})",
            )
    for s in c.steps:
        for fld in ("duration", "timeout"):
            value = getattr(s, fld)
            if value is not None:
                try:
                    d = parse_duration(value, f"steps.{s.id}.{fld}")
                except ValidationError as exc:
                    yield exc
                    continue
                if d < timedelta(0):
                    yield ValidationError(f"steps.{s.id}.{fld}", value, "negative wait", "wait 0 or more, e.g. 1d")
        variants = {v.name for v in c.variants}
        for i, case in enumerate(s.cases):
            if case.variant is not None and case.variant not in variants:
                yield ValidationError(
                    f"steps.{s.id}.cases[{i}].variant",
                    case.variant,
                    "no such variant",
                    f"declare it under variants (have: {', '.join(sorted(variants)) or 'none'})",
                )
            if case.engaged is not None and (case.engaged not in ids or ids[case.engaged].type != "send"):
                yield ValidationError(
                    f"steps.{s.id}.cases[{i}].engaged", case.engaged, "not a send step", "name an earlier send step"
                )
        splits = [case.split for case in s.cases if case.split is not None]
        if splits and sum(splits) > 100 + 1e-9:
            yield ValidationError(
                f"steps.{s.id}.cases",
                sum(splits),
                "the splits add up to more than 100 %",
                "make them add to 100 at most (the rest goes to otherwise)",
            )
        if splits and len(splits) != len(s.cases):
            yield ValidationError(
                f"steps.{s.id}.cases",
                None,
                "a split branch mixes split and other cases",
                "split in a branch of its own",
            )
    if c.variants:
        total = sum(v.percent for v in c.variants)
        if abs(total - 100) > 1e-9:
            yield ValidationError("variants", total, "the split does not sum to 100 %", "make the percents add to 100")
        names = [v.name for v in c.variants]
        if len(set(names)) != len(names):
            yield ValidationError("variants", names, "a variant name is used twice", "name each variant once")
    if c.holdout >= 100:
        yield ValidationError("holdout", c.holdout, "everyone would be held out", "use less than 100")


def _loop(parent: dict[str, str], sid: str, target: str) -> str:
    """``target -> ... -> sid -> target``: the steps of the loop closed by ``sid -> target``
    (``target`` is an ancestor of ``sid`` on the depth-first path), long loops shortened."""
    chain = [sid]
    while chain[-1] != target:
        chain.append(parent[chain[-1]])
    chain.reverse()
    if len(chain) > 12:
        chain = [*chain[:5], f"... ({len(chain) - 10} more)", *chain[-5:]]
    return " -> ".join([*chain, target])


def _some(names: Iterable[str], limit: int = 10) -> str:
    """At most ``limit`` names, comma-separated (a fix message stays short)."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names) - limit} more)" if len(names) > limit else shown


def check(crm: CRM, c: Campaign, *, now: datetime | None = None, actions: frozenset[str] = frozenset()) -> None:
    """Raise :class:`CampaignInvalid` listing every problem of ``c`` (graph and CRM references).

    ``c``'s plain form goes through :func:`~ecrm_campaigns.model.check_document` first (as
    ``Campaign.from_dict`` does): a Campaign object built in Python meets the same limits."""
    try:
        check_document(c.to_dict())
    except ValidationError as exc:
        raise CampaignInvalid([exc]) from None
    problems = list(graph_problems(c))
    problems += list(data_problems(crm, c))
    problems += list(_crm_problems(crm, c, now or crm.now(), actions))
    if problems:
        raise CampaignInvalid(problems)


def data_problems(crm: CRM, c: Campaign) -> Iterator[ValidationError]:
    """The free-form values of the steps, held to the rules their use at run time applies, so that
    a value that would fail for every customer is refused at save time, naming the step:

    * a send's ``context`` and an action's ``args``: the core's free-form JSON rules
      (:func:`ecrm_core.validation.properties_json`: JSON values, finite numbers, 64-bit integers,
      at most ``MAX_JSON_DEPTH`` deep, ``MAX_JSON_KEYS`` keys, ``MAX_PROPERTIES_BYTES`` bytes);
    * a send's ``template``: a name of at most :data:`MAX_TEMPLATE_NAME` characters, or a mapping
      of parts under the same rules with at most :data:`MAX_TEMPLATE_BYTES` bytes;
    * an update's ``value``: what ``crm.customers.update(id, attributes={attribute: value})`` checks,
      and for an attribute a plugin declares (``ecrm_register_attributes``) its type.
    """
    from ecrm_core.validation import MAX_PROPERTIES_BYTES, check_string, properties_json

    declared = {a.name: a.type for a in crm.registry.attributes.values()}
    for s in c.steps:
        path = f"steps.{s.id}"
        try:
            if s.type == "send":
                if isinstance(s.template, str):
                    check_string(s.template, f"{path}.template")
                    if len(s.template) > MAX_TEMPLATE_NAME:
                        raise ValidationError(
                            f"{path}.template",
                            s.template,
                            f"longer than {MAX_TEMPLATE_NAME} characters",
                            "name a stored template",
                        )
                else:
                    properties_json(s.template, f"{path}.template", MAX_TEMPLATE_BYTES)
                if s.context is not None:
                    properties_json(s.context, f"{path}.context", MAX_PROPERTIES_BYTES)
            elif s.type == "action" and s.args is not None:
                properties_json(s.args, f"{path}.args", MAX_PROPERTIES_BYTES)
            elif s.type == "update" and s.attribute is not None and s.value is not None:
                yield from _value_problems(s.attribute.removeprefix("attributes."), s.value, path, declared)
        except ValidationError as exc:
            yield exc


def _value_problems(name: str, value: Any, path: str, declared: Mapping[str, str]) -> Iterator[ValidationError]:
    from ecrm_core.validation import properties_json

    try:
        properties_json({name: value}, "attributes")  # what crm.customers.update checks
    except ValidationError as exc:
        inner = f"attributes.{name}"
        rest = exc.field[len(inner) :] if exc.field.startswith(inner) else ""
        yield ValidationError(f"{path}.value{rest}", exc.value, exc.problem, exc.fix)
        return
    typ = declared.get(name)
    if typ is None:
        return
    ok = isinstance(value, _ATTRIBUTE_TYPES.get(typ, (object,))) and not (isinstance(value, bool) and typ != "boolean")
    if ok and typ == "datetime":
        from ecrm_core.validation import aware_datetime

        try:
            aware_datetime(value, f"{path}.value")
        except ValidationError as exc:
            yield exc
            return
    if not ok:
        yield ValidationError(
            f"{path}.value",
            value,
            f"not {_an(typ)} (the attribute {name!r} is declared as {typ})",
            f"give {_an(typ)} value",
        )


def _an(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _rule(crm: CRM, text: str, path: str) -> Iterator[ValidationError]:
    try:
        crm.segments.compile(text)
    except ValidationError as exc:
        yield ValidationError(path, text, f"bad rule: {exc}", "fix the rule (see docs/rules.md)")


def _event(crm: CRM, kind: str | None, where: str | None, path: str) -> Iterator[ValidationError]:
    if kind is None:
        return
    try:
        crm.check_kind(kind)
    except ValidationError as exc:
        yield ValidationError(path, kind, exc.problem, exc.fix)
        return
    if where:
        try:
            crm.segments.compile(event_rule(kind, where))
        except ValidationError as exc:
            yield ValidationError(f"{path}.where", where, f"bad filter: {exc}", "fix the filter (see docs/rules.md)")


def _segment(crm: CRM, slug: str | None, path: str) -> Iterator[ValidationError]:
    if slug is None:
        return
    try:
        crm.segments.get(slug)
    except NotFound as exc:
        yield ValidationError(path, slug, f"no such segment ({exc})", "create the segment first or fix the slug")


def _crm_problems(crm: CRM, c: Campaign, now: datetime, actions: frozenset[str]) -> Iterator[ValidationError]:
    reg = crm.registry
    if c.audience is not None:
        yield from _segment(crm, c.audience.segment, "audience.segment")
        if c.audience.rule:
            yield from _rule(crm, c.audience.rule, "audience.rule")
    t = c.trigger
    yield from _segment(crm, t.segment, "trigger.segment")
    yield from _event(crm, t.kind, t.where, "trigger.kind")
    if t.type == "date" and t.attribute != "first_purchase":
        yield from _rule(crm, f"{t.attribute} exists", "trigger.attribute")
    if t.type == "schedule" and t.at is not None and t.every is None and t.at < now:
        yield ValidationError(
            "trigger.at",
            t.at.isoformat(),
            "a one-off schedule in the past",
            "give a future time, or every: for a recurring one",
        )
    if c.goal is not None:
        yield from _event(crm, c.goal.kind, c.goal.where, "goal.kind")
    offers: dict[str, Any] = {}
    for i, ref in enumerate(c.offers):
        try:
            offer = crm.offers.get(ref.code)
        except NotFound:
            yield ValidationError(f"offers[{i}]", ref.code, "no such offer", "create it with crm.offers.create first")
            continue
        offers[ref.code] = offer
        if offer.status != "active":
            yield ValidationError(f"offers[{i}]", ref.code, f"the offer is {offer.status}", "activate it or drop it")
        elif offer.valid_until is not None and offer.valid_until <= now:
            yield ValidationError(
                f"offers[{i}]",
                ref.code,
                f"the offer expired at {offer.valid_until.isoformat()}",
                "extend valid_until or drop the offer",
            )
    for s in c.steps:
        path = f"steps.{s.id}"
        if s.type == "send":
            yield from _send(crm, c, s, path, offers)
        elif s.type == "wait":
            yield from _event(crm, s.event, s.where, f"{path}.event")
        elif s.type == "branch":
            for i, case in enumerate(s.cases):
                if case.rule:
                    yield from _rule(crm, case.rule, f"{path}.cases[{i}].rule")
        elif s.type == "update" and s.segment is not None:
            try:
                seg = crm.segments.get(s.segment)
            except NotFound:
                yield ValidationError(f"{path}.segment", s.segment, "no such segment", "create a static segment first")
            else:
                if seg.kind != "static":
                    yield ValidationError(
                        f"{path}.segment", s.segment, "not a static segment", "a dynamic segment follows its rule"
                    )
        elif s.type == "update":
            yield from _rule(crm, f"{_attr(s.attribute or '')} exists", f"{path}.attribute")
        elif s.type == "action" and s.name not in actions:
            yield ValidationError(
                f"{path}.name",
                s.name,
                "no plugin registers this action",
                f"use one of: {', '.join(sorted(actions)) or '(none installed)'}",
            )
    del reg


def _attr(name: str) -> str:
    return name if name.startswith("attributes.") else f"attributes.{name}"


def _send(crm: CRM, c: Campaign, s: Step, path: str, offers: dict[str, Any]) -> Iterator[ValidationError]:
    reg = crm.registry
    if s.channel not in reg.channels:
        yield ValidationError(
            f"{path}.channel",
            s.channel,
            "no such channel",
            f"use one of: {', '.join(sorted(reg.channels)) or '(none installed)'}",
        )
        return
    purpose = s.purpose or "marketing"
    if purpose not in reg.purposes:
        yield ValidationError(f"{path}.purpose", purpose, "no such purpose", f"use one of: {', '.join(reg.purposes)}")
    ctx: dict[str, Any] = dict(s.context or {})
    if s.offer is not None:
        if s.offer not in {o.code for o in c.offers}:
            yield ValidationError(
                f"{path}.offer", s.offer, "not one of the campaign's offers", "list it under offers first"
            )
        elif s.offer in offers:
            from ecrm_core.validation import thaw

            o = offers[s.offer]
            ctx["offer"] = {"id": o.id, "code": o.code, "name": o.name, "kind": o.kind, "content": thaw(o.content)}
    ctx["customer"] = dict(SAMPLE_CUSTOMER)
    ctx["message"] = {
        "id": "validate",
        "channel": s.channel,
        "purpose": purpose,
        "transactional": False,
        "workspace": crm.workspace,
    }
    try:
        crm.channels.get(s.channel or "").render(s.template, ctx, message_id="validate", purpose=purpose)
    except EcrmError as exc:
        yield ValidationError(
            f"{path}.template",
            s.template if isinstance(s.template, str) else "(inline)",
            f"does not render: {exc}",
            "fix the template or its name",
        )
    except Exception as exc:  # a channel plugin's bug: reported, never a crash of the save
        yield ValidationError(
            f"{path}.template",
            s.template if isinstance(s.template, str) else "(inline)",
            f"the channel failed to render it: {type(exc).__name__}: {exc}",
            "fix the template",
        )
