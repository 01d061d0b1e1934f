"""Checks a campaign against the journey graph and the CRM, at save time.

Every problem is reported (not only the first), each naming the step or the
part of the campaign it is about: ``steps.remind.duration: negative wait``.
Rules are checked with the core's own parser and validator
(``crm.segments.compile``), interaction filters as the rules' interaction
filters (``kind[filter]``), templates by rendering them once through their
channel with a sample customer.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ecrm_core.errors import EcrmError, NotFound, ValidationError

from .model import Campaign, Step, parse_duration

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["CampaignInvalid", "check", "event_rule", "graph_problems"]

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


class CampaignInvalid(ValidationError):
    """A campaign was refused; ``problems`` lists every problem found (each a ValidationError)."""

    def __init__(self, problems: list[ValidationError]) -> None:
        first = problems[0]
        super().__init__(first.field, first.value, first.problem, first.fix)
        self.problems = problems
        if len(problems) > 1:
            more = "; ".join(str(p) for p in problems[1:])
            self.args = (f"{self.args[0]}; and {len(problems) - 1} more: {more}",)

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
                yield ValidationError(f"steps.{s.id}.{fld}", target, "no such step", f"use one of: {', '.join(ids)}")
    # cycles: depth-first, colouring the steps
    colour: dict[str, int] = {}

    def visit(sid: str, trail: list[str]) -> Iterator[ValidationError]:
        colour[sid] = 1
        for fld, target in ids[sid].targets():
            if target not in ids:
                continue
            if colour.get(target) == 1:
                loop = " -> ".join([*trail[trail.index(target) :], sid, target]) if target in trail else target
                yield ValidationError(
                    f"steps.{sid}.{fld}",
                    target,
                    f"makes a cycle ({loop})",
                    "journeys go forward: end the loop with an exit or another step",
                )
            elif target not in colour:
                yield from visit(target, [*trail, sid])
        colour[sid] = 2

    yield from visit(c.first, [])
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


def check(crm: CRM, c: Campaign, *, now: datetime | None = None, actions: frozenset[str] = frozenset()) -> None:
    """Raise :class:`CampaignInvalid` listing every problem of ``c`` (graph and CRM references)."""
    problems = list(graph_problems(c))
    problems += list(_crm_problems(crm, c, now or crm.now(), actions))
    if problems:
        raise CampaignInvalid(problems)


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
