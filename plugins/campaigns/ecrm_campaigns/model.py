"""A campaign as data: frozen attrs objects, a plain-dict form and YAML.

The plain form (``Campaign.to_dict()``) is what is stored (one JSON document
per version) and what the YAML text is made of; ``Campaign.from_dict`` is
its exact inverse, and refuses unknown keys with the path of the key.  These
checks are *structural* (types, shapes, durations, references between
steps); the checks against the CRM (segments, offers, channels, templates,
rules) are in :mod:`ecrm_campaigns.validate`, run when a campaign is saved.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from attrs import field, frozen
from ecrm_core.errors import ValidationError

__all__ = [
    "TRIGGERS",
    "STEP_TYPES",
    "Audience",
    "Branch",
    "Campaign",
    "Case",
    "Goal",
    "OfferRef",
    "Reentry",
    "Step",
    "Trigger",
    "Variant",
    "Window",
    "MAX_DEFINITION_BYTES",
    "MAX_DEFINITION_DEPTH",
    "MAX_DURATION",
    "MAX_STEPS",
    "check_document",
    "parse_duration",
]

TRIGGERS = ("segment_entered", "segment_exited", "interaction", "schedule", "date", "api")
STEP_TYPES = ("send", "wait", "branch", "update", "action", "exit")
REENTRY = ("never", "always", "cooldown")

_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_DURATION = re.compile(r"^\s*(-?\d{1,12})\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


#: Longest duration accepted (a wait, a timeout, a schedule's ``every``, a cooldown, a goal's
#: ``within``): 100 years, in seconds.
MAX_DURATION = 36500 * 86400
#: Most steps in one campaign.
MAX_STEPS = 2000
#: Largest campaign definition accepted: its plain form as compact JSON, in bytes.
MAX_DEFINITION_BYTES = 1_000_000
#: Deepest nesting of mappings and lists in a definition (``{"steps": [{"context": {}}]}`` is 4
#: deep); the free-form parts (a send's ``context`` and inline ``template``, an action's ``args``,
#: an update's ``value``) are held to the core's own limit within that
#: (:data:`ecrm_core.validation.MAX_JSON_DEPTH`).
MAX_DEFINITION_DEPTH = 40


def parse_duration(value: Any, path: str) -> timedelta:
    """``"30m"``, ``"12h"``, ``"3d"``, ``"2w"`` (or whole seconds: ``86400`` or ``"86400"``) as a
    timedelta, at most :data:`MAX_DURATION` either way; may be negative (the validation refuses
    negative waits, naming the step)."""
    seconds: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds is None:
        raise ValidationError(path, value, "not a duration", "write e.g. '3d', '12h' or '30m'")
    if abs(seconds) > MAX_DURATION:
        shown = value if len(str(value)) <= 40 else f"<{len(str(value))}-character duration>"
        raise ValidationError(path, shown, "too long", "use at most 100 years")
    return timedelta(seconds=seconds)


_DURATION_KEYS = frozenset({"duration", "timeout", "every", "cooldown", "within"})
_STEP_INDEX = re.compile(r"^steps\[(\d+)\]")


def _step_path(data: Any, path: str) -> str:
    """``steps[3].context.x`` as ``steps.remind.context.x`` when step 3 has a valid id (errors
    name the step, as the model's own do)."""
    m = _STEP_INDEX.match(path)
    if m is None:
        return path
    try:
        sid = data["steps"][int(m.group(1))]["id"]
    except (KeyError, IndexError, TypeError):
        return path
    if not isinstance(sid, str) or not _KEY.match(sid):
        return path
    return f"steps.{sid}{path[m.end() :]}"


def check_document(data: Any) -> None:
    """Refuse a definition's plain form (before it is read) that is not plain JSON data within
    the limits: the core's value rules (:func:`ecrm_core.validation.check_json`: text without
    control characters, 64-bit integers, finite numbers, string keys), at most
    :data:`MAX_DEFINITION_DEPTH` deep, at most :data:`MAX_DEFINITION_BYTES` as JSON.
    Iterative: no document can exhaust the stack."""
    from ecrm_core.validation import check_json

    try:
        check_json(data, "$", limits=False)
    except ValidationError as exc:
        field = _step_path(data, exc.field.removeprefix("$").removeprefix(".") or "campaign")
        if exc.problem.startswith("integer outside") and field.rsplit(".", 1)[-1] in _DURATION_KEYS:
            raise ValidationError(field, exc.value, "too long", "use at most 100 years") from None
        raise ValidationError(field, exc.value, exc.problem, exc.fix) from None
    # depth, iteratively (only containers are pushed); `where` is the top of the path
    # (``steps[3]``, ``trigger``) for the message
    stack: list[tuple[Any, int, str]] = [(data, 0, "campaign")] if isinstance(data, Mapping | list | tuple) else []
    while stack:
        node, depth, where = stack.pop()
        if depth >= MAX_DEFINITION_DEPTH:
            raise ValidationError(
                _step_path(data, where),
                "<nested data>",
                f"nested deeper than {MAX_DEFINITION_DEPTH} levels",
                "write flatter data",
            )
        if depth == 0 and isinstance(node, Mapping):
            stack.extend((v, 1, str(k)) for k, v in node.items() if isinstance(v, Mapping | list | tuple))
        elif depth == 1 and where == "steps" and isinstance(node, list | tuple):
            stack.extend((v, 2, f"steps[{i}]") for i, v in enumerate(node) if isinstance(v, Mapping | list | tuple))
        else:
            values = node.values() if isinstance(node, Mapping) else node
            stack.extend((v, depth + 1, where) for v in values if isinstance(v, Mapping | list | tuple))
    size = len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_DEFINITION_BYTES:
        raise ValidationError(
            "campaign",
            f"<{size} bytes>",
            f"larger than {MAX_DEFINITION_BYTES} bytes as JSON",
            "keep big content in templates or offers and refer to them by name",
        )


def _check_keys(data: Any, path: str, allowed: Sequence[str], required: Sequence[str] = ()) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ValidationError(path or "campaign", data, "not a mapping", "write a mapping of keys to values")
    for k in data:
        if k not in allowed:
            import difflib

            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of: {', '.join(allowed)}"
            raise ValidationError(_join(path, str(k)), data[k], "unknown key", hint)
    for k in required:
        if data.get(k) is None:
            raise ValidationError(_join(path, k), None, "missing", f"give {k}")
    return data


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _key(value: Any, path: str, what: str) -> str:
    if not isinstance(value, str) or not _KEY.match(value):
        raise ValidationError(path, value, f"not a valid {what}", "use a-z, 0-9 and '_', starting with a letter")
    return value


def _str(value: Any, path: str, *, optional: bool = False, limit: int = 20_000) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ValidationError(path, value, "not a text", f"write 1 to {limit} characters")
    return value


def _pct(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise ValidationError(path, value, "not a percentage", "write a number from 0 to 100")
    return value


def _opt(d: dict[str, Any], **items: Any) -> dict[str, Any]:
    """Add the items whose value is not None/empty (the plain form omits defaults)."""
    for k, v in items.items():
        if v is not None and v != () and v != {}:
            d[k] = v
    return d


# ---------------------------------------------------------------------------
# The parts
# ---------------------------------------------------------------------------


@frozen(kw_only=True)
class Audience:
    """Who may enter: members of ``segment`` and/or customers matching ``rule`` (rule text)."""

    segment: str | None = None
    rule: str | None = None

    @classmethod
    def from_dict(cls, data: Any, path: str = "audience") -> Audience:
        d = _check_keys(data, path, ("segment", "rule"))
        if d.get("segment") is None and d.get("rule") is None:
            raise ValidationError(path, data, "empty audience", "give a segment, a rule or both")
        return cls(
            segment=_str(d.get("segment"), f"{path}.segment", optional=True),
            rule=_str(d.get("rule"), f"{path}.rule", optional=True),
        )

    def to_dict(self) -> dict[str, Any]:
        return _opt({}, segment=self.segment, rule=self.rule)


@frozen(kw_only=True)
class Trigger:
    """When customers enter.

    * ``segment_entered`` / ``segment_exited``: ``segment``;
    * ``interaction``: ``kind`` and an optional ``where`` (the rules'
      interaction-filter syntax, e.g. ``amount > 50, category == "shoes"``);
    * ``schedule``: ``at`` (ISO date-time, the first run) and optional
      ``every`` (a duration: recurring); the audience is enrolled at each run;
    * ``date``: ``attribute`` (a date attribute such as ``birthday``, or
      ``first_purchase`` for the anniversary of the first purchase), at
      ``time`` (``HH:MM``) in the customer's timezone, ``offset`` days before
      (negative) or after;
    * ``api``: only ``campaigns.trigger(key, customer_ids)`` (transactional).
    """

    type: str
    segment: str | None = None
    kind: str | None = None
    where: str | None = None
    at: datetime | None = None
    every: str | int | None = None
    attribute: str | None = None
    time: str | None = None
    offset: int | None = None

    @classmethod
    def from_dict(cls, data: Any, path: str = "trigger") -> Trigger:
        d = _check_keys(
            data, path, ("type", "segment", "kind", "where", "at", "every", "attribute", "time", "offset"), ("type",)
        )
        typ = d["type"]
        if typ not in TRIGGERS:
            raise ValidationError(f"{path}.type", typ, "unknown trigger", f"use one of: {', '.join(TRIGGERS)}")
        need = {
            "segment_entered": ("segment",),
            "segment_exited": ("segment",),
            "interaction": ("kind",),
            "schedule": ("at",),
            "date": ("attribute",),
            "api": (),
        }[typ]
        for k in need:
            if d.get(k) is None:
                raise ValidationError(f"{path}.{k}", None, f"missing for a {typ} trigger", f"give {k}")
        at = d.get("at")
        if at is not None:
            if isinstance(at, str):
                try:
                    at = datetime.fromisoformat(at)
                except ValueError:
                    at = None
            if not isinstance(at, datetime) or at.tzinfo is None:
                raise ValidationError(
                    f"{path}.at", d.get("at"), "not an aware date-time", "write e.g. 2026-12-24T09:00:00+00:00"
                )
        every = d.get("every")
        if every is not None:
            if parse_duration(every, f"{path}.every") <= timedelta(0):
                raise ValidationError(f"{path}.every", every, "not positive", "write e.g. '1d' or '1w'")
        time = d.get("time")
        if time is not None and (not isinstance(time, str) or not _HHMM.match(time)):
            raise ValidationError(f"{path}.time", time, "not a time of day", "write HH:MM, e.g. '09:00'")
        offset = d.get("offset")
        if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int) or abs(offset) > 366):
            raise ValidationError(f"{path}.offset", offset, "not a number of days", "write -366..366")
        return cls(
            type=typ,
            segment=_str(d.get("segment"), f"{path}.segment", optional=True),
            kind=_str(d.get("kind"), f"{path}.kind", optional=True),
            where=_str(d.get("where"), f"{path}.where", optional=True),
            at=at,
            every=every,
            attribute=_str(d.get("attribute"), f"{path}.attribute", optional=True),
            time=time,
            offset=offset,
        )

    def to_dict(self) -> dict[str, Any]:
        return _opt(
            {"type": self.type},
            segment=self.segment,
            kind=self.kind,
            where=self.where,
            at=self.at.isoformat() if self.at else None,
            every=self.every,
            attribute=self.attribute,
            time=self.time,
            offset=self.offset,
        )


@frozen(kw_only=True)
class Reentry:
    """``never`` (once per customer, ever), ``always`` (whenever the trigger fires and the customer
    is not mid-journey) or ``cooldown`` (again once ``cooldown`` has passed since the last entry)."""

    policy: str = "never"
    cooldown: str | int | None = None

    @classmethod
    def from_dict(cls, data: Any, path: str = "reentry") -> Reentry:
        if isinstance(data, str):
            data = {"policy": data}
        d = _check_keys(data, path, ("policy", "cooldown"), ("policy",))
        if d["policy"] not in REENTRY:
            raise ValidationError(f"{path}.policy", d["policy"], "unknown policy", f"use one of: {', '.join(REENTRY)}")
        if (d["policy"] == "cooldown") != (d.get("cooldown") is not None):
            raise ValidationError(
                f"{path}.cooldown", d.get("cooldown"), "cooldown goes with policy 'cooldown'", "give both or neither"
            )
        if d.get("cooldown") is not None and parse_duration(d["cooldown"], f"{path}.cooldown") <= timedelta(0):
            raise ValidationError(f"{path}.cooldown", d["cooldown"], "not positive", "write e.g. '30d'")
        return cls(policy=d["policy"], cooldown=d.get("cooldown"))

    def to_dict(self) -> Any:
        if self.cooldown is None:
            return self.policy
        return {"policy": self.policy, "cooldown": self.cooldown}


@frozen(kw_only=True)
class Window:
    """Sends happen only between ``start`` and ``end`` (``HH:MM``) in the customer's timezone
    (a send due outside is moved to the next ``start``); ``days`` limits the weekdays (mon..sun)."""

    start: str
    end: str
    days: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, path: str = "window") -> Window:
        d = _check_keys(data, path, ("start", "end", "days"), ("start", "end"))
        for k in ("start", "end"):
            if not isinstance(d[k], str) or not _HHMM.match(d[k]):
                raise ValidationError(f"{path}.{k}", d[k], "not a time of day", "write HH:MM, e.g. '09:00'")
        if d["start"] == d["end"]:
            raise ValidationError(f"{path}.end", d["end"], "the window is empty", "make end differ from start")
        days = d.get("days") or ()
        week = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
        if not isinstance(days, list | tuple) or any(x not in week for x in days):
            raise ValidationError(f"{path}.days", days, "not a list of weekdays", "write e.g. [mon, tue, wed]")
        return cls(start=d["start"], end=d["end"], days=tuple(days))

    def to_dict(self) -> dict[str, Any]:
        return _opt({"start": self.start, "end": self.end}, days=list(self.days) or None)


@frozen(kw_only=True)
class OfferRef:
    """One of the core's offers (by code): how often one customer may get it from this campaign
    (``limit``) and how many messages with it the campaign may send in all (``budget``)."""

    code: str
    limit: int | None = None
    budget: int | None = None

    @classmethod
    def from_dict(cls, data: Any, path: str) -> OfferRef:
        if isinstance(data, str):
            data = {"code": data}
        d = _check_keys(data, path, ("code", "limit", "budget"), ("code",))
        for k in ("limit", "budget"):
            n = d.get(k)
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10**12):
                raise ValidationError(f"{path}.{k}", n, "not a positive whole number", "write e.g. 1")
        return cls(code=_str(d["code"], f"{path}.code", limit=200), limit=d.get("limit"), budget=d.get("budget"))

    def to_dict(self) -> Any:
        if self.limit is None and self.budget is None:
            return self.code
        return _opt({"code": self.code}, limit=self.limit, budget=self.budget)


@frozen(kw_only=True)
class Variant:
    name: str
    percent: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "percent": self.percent}


@frozen(kw_only=True)
class Goal:
    """The conversion: an interaction of ``kind`` (optionally filtered by ``where``) within
    ``within`` of entering.  With ``exit: true`` a converted customer leaves the journey."""

    kind: str
    where: str | None = None
    within: str | int = "30d"
    exit: bool = True

    @classmethod
    def from_dict(cls, data: Any, path: str = "goal") -> Goal:
        d = _check_keys(data, path, ("kind", "where", "within", "exit"), ("kind",))
        within = d.get("within", "30d")
        if parse_duration(within, f"{path}.within") <= timedelta(0):
            raise ValidationError(f"{path}.within", within, "not positive", "write e.g. '7d'")
        ex = d.get("exit", True)
        if not isinstance(ex, bool):
            raise ValidationError(f"{path}.exit", ex, "not true/false", "write true or false")
        return cls(
            kind=_str(d["kind"], f"{path}.kind"),
            where=_str(d.get("where"), f"{path}.where", optional=True),
            within=within,
            exit=ex,
        )

    def to_dict(self) -> dict[str, Any]:
        d = _opt({"kind": self.kind}, where=self.where)
        d["within"] = self.within
        if not self.exit:
            d["exit"] = False
        return d


@frozen(kw_only=True)
class Case:
    """One arm of a branch: exactly one of ``rule`` (rule text about the customer),
    ``engaged`` (the customer opened/clicked the message of that earlier send step),
    ``variant`` (the customer's arm) or ``split`` (a percentage of the customers reaching this
    step: a traffic split of its own, deterministic per customer and step); then go to ``next``."""

    next: str
    rule: str | None = None
    engaged: str | None = None
    variant: str | None = None
    split: float | None = None

    @classmethod
    def from_dict(cls, data: Any, path: str) -> Case:
        d = _check_keys(data, path, ("rule", "engaged", "variant", "split", "next"), ("next",))
        given = [k for k in ("rule", "engaged", "variant", "split") if d.get(k) is not None]
        if len(given) != 1:
            raise ValidationError(path, data, "a case needs exactly one of rule, engaged, variant, split", "give one")
        return cls(
            next=_key(d["next"], f"{path}.next", "step id"),
            rule=_str(d.get("rule"), f"{path}.rule", optional=True),
            engaged=d.get("engaged"),
            variant=d.get("variant"),
            split=None if d.get("split") is None else _pct(d["split"], f"{path}.split"),
        )

    def to_dict(self) -> dict[str, Any]:
        return _opt({}, rule=self.rule, engaged=self.engaged, variant=self.variant, split=self.split, next=self.next)


@frozen(kw_only=True)
class Branch:
    cases: tuple[Case, ...]
    otherwise: str | None = None


_STEP_KEYS = {
    "send": ("channel", "template", "offer", "purpose", "context"),
    "wait": ("duration", "until", "event", "where", "timeout", "on_event"),
    "branch": ("cases", "otherwise"),
    "update": ("attribute", "value", "segment", "remove"),
    "action": ("name", "args"),
    "exit": (),
}


@frozen(kw_only=True)
class Step:
    """One step of the journey.  ``next`` is the following step (``None``: the journey ends).

    * ``send``: ``channel``, ``template`` (a name, or a mapping of parts),
      optional ``offer`` (a code from the campaign's offers), ``purpose``
      (default ``marketing``), ``context`` (shared template data);
    * ``wait``: ``duration``; or ``until`` (``HH:MM``: the next such time in
      the customer's timezone); or ``event`` (an interaction kind, optional
      ``where``) with ``timeout``: on the event go to ``on_event``, after the
      timeout to ``next``;
    * ``branch``: ``cases`` (see :class:`Case`), the first that holds wins,
      else ``otherwise``;
    * ``update``: set customer ``attribute`` to ``value``, or add the customers to the static
      ``segment`` (``remove: true``: take them out);
    * ``action``: call the plugin action ``name`` with ``args``;
    * ``exit``: leave the journey.
    """

    id: str
    type: str
    next: str | None = None
    channel: str | None = None
    template: Any = None
    offer: str | None = None
    purpose: str | None = None
    context: Mapping[str, Any] | None = None
    duration: str | int | None = None
    until: str | None = None
    event: str | None = None
    where: str | None = None
    timeout: str | int | None = None
    on_event: str | None = None
    cases: tuple[Case, ...] = ()
    otherwise: str | None = None
    attribute: str | None = None
    value: Any = None
    segment: str | None = None
    remove: bool | None = None
    name: str | None = None
    args: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Any, path: str) -> Step:
        if not isinstance(data, Mapping):
            raise ValidationError(path, data, "not a mapping", "write a step as a mapping with id and type")
        typ = data.get("type")
        if typ not in STEP_TYPES:
            raise ValidationError(f"{path}.type", typ, "unknown step type", f"use one of: {', '.join(STEP_TYPES)}")
        d = _check_keys(data, path, ("id", "type", "next", *_STEP_KEYS[typ]), ("id",))
        sid = _key(d["id"], f"{path}.id", "step id")
        path = f"steps.{sid}"
        nxt = d.get("next")
        if nxt is not None:
            _key(nxt, f"{path}.next", "step id")
        kw: dict[str, Any] = {"id": sid, "type": typ, "next": nxt}
        if typ == "send":
            for k in ("channel", "template"):
                if d.get(k) is None:
                    raise ValidationError(f"{path}.{k}", None, "missing for a send step", f"give {k}")
            tpl = d["template"]
            if not isinstance(tpl, str | Mapping):
                raise ValidationError(f"{path}.template", tpl, "not a template", "give a name or a mapping of parts")
            ctx = d.get("context")
            if ctx is not None and not isinstance(ctx, Mapping):
                raise ValidationError(f"{path}.context", ctx, "not a mapping", "give template data as a mapping")
            kw.update(
                channel=_str(d["channel"], f"{path}.channel"),
                template=tpl,
                offer=d.get("offer"),
                purpose=d.get("purpose"),
                context=ctx,
            )
        elif typ == "wait":
            modes = [k for k in ("duration", "until", "event") if d.get(k) is not None]
            if len(modes) != 1:
                raise ValidationError(path, data, "a wait needs exactly one of duration, until, event", "give one")
            if d.get("duration") is not None:
                parse_duration(d["duration"], f"{path}.duration")
            if d.get("until") is not None and (not isinstance(d["until"], str) or not _HHMM.match(d["until"])):
                raise ValidationError(f"{path}.until", d["until"], "not a time of day", "write HH:MM, e.g. '09:00'")
            if d.get("event") is not None:
                if d.get("timeout") is None:
                    raise ValidationError(
                        f"{path}.timeout", None, "missing for a wait on an event", "give e.g. timeout: 3d"
                    )
                parse_duration(d["timeout"], f"{path}.timeout")
                if d.get("on_event") is None:
                    raise ValidationError(
                        f"{path}.on_event",
                        None,
                        "missing for a wait on an event",
                        "name the step to go to when the event comes",
                    )
            elif d.get("timeout") is not None or d.get("on_event") is not None or d.get("where") is not None:
                raise ValidationError(
                    path, data, "timeout/on_event/where go with event", "drop them or wait on an event"
                )
            kw.update(
                duration=d.get("duration"),
                until=d.get("until"),
                event=d.get("event"),
                where=d.get("where"),
                timeout=d.get("timeout"),
                on_event=d.get("on_event"),
            )
        elif typ == "branch":
            cases = d.get("cases")
            if not isinstance(cases, list | tuple) or not cases:
                raise ValidationError(f"{path}.cases", cases, "no cases", "give a list of cases")
            kw.update(
                cases=tuple(Case.from_dict(c, f"{path}.cases[{i}]") for i, c in enumerate(cases)),
                otherwise=d.get("otherwise"),
            )
            if nxt is not None:
                raise ValidationError(f"{path}.next", nxt, "a branch has no next", "use otherwise")
        elif typ == "update":
            if (d.get("attribute") is None) == (d.get("segment") is None):
                raise ValidationError(
                    path,
                    data,
                    "an update needs exactly one of attribute, segment",
                    "set an attribute or a static segment",
                )
            if d.get("segment") is not None:
                if d.get("value") is not None:
                    raise ValidationError(
                        f"{path}.value", d["value"], "a segment update has no value", "use remove: true"
                    )
                remove = d.get("remove", False)
                if not isinstance(remove, bool):
                    raise ValidationError(f"{path}.remove", remove, "not true/false", "write true or false")
                kw.update(segment=_str(d["segment"], f"{path}.segment", limit=64), remove=remove or None)
            else:
                if d.get("remove") is not None:
                    raise ValidationError(f"{path}.remove", d["remove"], "remove goes with segment", "drop it")
                kw.update(attribute=_str(d["attribute"], f"{path}.attribute", limit=64), value=d.get("value"))
        elif typ == "action":
            args = d.get("args")
            if args is not None and not isinstance(args, Mapping):
                raise ValidationError(f"{path}.args", args, "not a mapping", "give arguments as a mapping")
            kw.update(name=_str(d.get("name"), f"{path}.name", limit=100), args=args)
        elif typ == "exit" and nxt is not None:
            raise ValidationError(f"{path}.next", nxt, "an exit has no next", "drop next")
        return cls(**kw)

    def targets(self) -> list[tuple[str, str]]:
        """(field, step id) of every step this one may go to."""
        out = [("next", self.next)] if self.next else []
        if self.on_event:
            out.append(("on_event", self.on_event))
        out += [(f"cases[{i}].next", c.next) for i, c in enumerate(self.cases)]
        if self.otherwise:
            out.append(("otherwise", self.otherwise))
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "type": self.type}
        for k in _STEP_KEYS[self.type]:
            v = getattr(self, k)
            if k == "cases":
                v = [c.to_dict() for c in v]
            elif isinstance(v, Mapping):
                v = dict(v)
            _opt(d, **{k: v})
        return _opt(d, next=self.next)


# ---------------------------------------------------------------------------
# The campaign
# ---------------------------------------------------------------------------


def _tuple(x: Any) -> tuple[Any, ...]:
    return tuple(x)


@frozen(kw_only=True)
class Campaign:
    """A campaign definition: the offer (what), the mechanism (when and how) and the plan."""

    key: str
    name: str
    trigger: Trigger
    steps: tuple[Step, ...] = field(converter=_tuple)
    audience: Audience | None = None
    description: str | None = None
    offers: tuple[OfferRef, ...] = field(default=(), converter=_tuple)
    reentry: Reentry = Reentry()
    window: Window | None = None
    goal: Goal | None = None
    holdout: float = 0
    variants: tuple[Variant, ...] = field(default=(), converter=_tuple)

    @classmethod
    def from_dict(cls, data: Any) -> Campaign:
        """The campaign of a plain form (a mapping, e.g. parsed YAML or JSON): first checked as a
        whole by :func:`check_document`, then part by part; a ``ValidationError`` names the part."""
        check_document(data)
        d = _check_keys(
            data,
            "",
            (
                "key",
                "name",
                "description",
                "audience",
                "trigger",
                "offers",
                "reentry",
                "window",
                "goal",
                "holdout",
                "variants",
                "steps",
            ),
            ("key", "name", "trigger", "steps"),
        )
        steps = d["steps"]
        if not isinstance(steps, list | tuple) or not steps:
            raise ValidationError("steps", steps, "no steps", "give a list of at least one step")
        if len(steps) > MAX_STEPS:
            raise ValidationError(
                "steps", f"<{len(steps)} steps>", f"more than {MAX_STEPS} steps", "split the journey into campaigns"
            )
        offers = d.get("offers") or []
        if not isinstance(offers, list | tuple):
            raise ValidationError("offers", offers, "not a list", "give a list of offer codes")
        variants = d.get("variants") or []
        if not isinstance(variants, list | tuple):
            raise ValidationError("variants", variants, "not a list", "give a list of {name, percent}")
        vs = []
        for i, v in enumerate(variants):
            vd = _check_keys(v, f"variants[{i}]", ("name", "percent"), ("name", "percent"))
            vs.append(
                Variant(
                    name=_key(vd["name"], f"variants[{i}].name", "variant name"),
                    percent=_pct(vd["percent"], f"variants[{i}].percent"),
                )
            )
        return cls(
            key=_key(d["key"], "key", "campaign key"),
            name=_str(d["name"], "name", limit=200),
            description=_str(d.get("description"), "description", optional=True),
            audience=None if d.get("audience") is None else Audience.from_dict(d["audience"]),
            trigger=Trigger.from_dict(d["trigger"]),
            offers=tuple(OfferRef.from_dict(o, f"offers[{i}]") for i, o in enumerate(offers)),
            reentry=Reentry.from_dict(d.get("reentry", "never")),
            window=None if d.get("window") is None else Window.from_dict(d["window"]),
            goal=None if d.get("goal") is None else Goal.from_dict(d["goal"]),
            holdout=_pct(d.get("holdout", 0), "holdout"),
            variants=tuple(vs),
            steps=tuple(Step.from_dict(s, f"steps[{i}]") for i, s in enumerate(steps)),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"key": self.key, "name": self.name}
        _opt(d, description=self.description, audience=self.audience.to_dict() if self.audience else None)
        d["trigger"] = self.trigger.to_dict()
        _opt(d, offers=[o.to_dict() for o in self.offers] or None)
        if self.reentry != Reentry():
            d["reentry"] = self.reentry.to_dict()
        _opt(d, window=self.window.to_dict() if self.window else None, goal=self.goal.to_dict() if self.goal else None)
        if self.holdout:
            d["holdout"] = self.holdout
        _opt(d, variants=[v.to_dict() for v in self.variants] or None)
        d["steps"] = [s.to_dict() for s in self.steps]
        return d

    # -- conveniences -------------------------------------------------------
    def step(self, sid: str) -> Step:
        for s in self.steps:
            if s.id == sid:
                return s
        raise KeyError(sid)

    @property
    def first(self) -> str:
        return self.steps[0].id

    def to_yaml(self) -> str:
        from .text import dump

        return dump(self)

    @classmethod
    def from_yaml(cls, text: str) -> Campaign:
        from .text import load

        return load(text)
