# mypy: disable-error-code="misc"
"""Rule trees, validated into typed nodes.

:func:`validate` walks a JSON rule tree (see ``docs/rules.md``) iteratively
with an explicit depth limit, checks every name against a :class:`Catalogue`
built from the plugin registry, checks every value against the type of the
field and the operator, and returns typed, frozen nodes that both evaluators
(:mod:`.sql` and :mod:`.memory`) consume.  Errors are
:class:`~ecrm_core.errors.ValidationError` whose ``field`` is the path in the
tree (``all[2].any[0].field``) and whose fix suggests a close name.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeAlias

from attrs import field, frozen

from ..errors import ValidationError
from .limits import MAX_DEPTH, MAX_EVENTS, MAX_FILTERS, MAX_LIST, MAX_NESTING, MAX_NODES, MAX_TERMS, MAX_VALUES

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_TERMS",
    "MAX_LIST",
    "Catalogue",
    "FieldInfo",
    "Window",
    "Node",
    "All",
    "AnyOf",
    "Not",
    "FieldCond",
    "EventCond",
    "SegmentRef",
    "ConsentCond",
    "PluginCond",
    "validate",
    "parse_duration",
    "walk",
    "AMOUNT_SCALE",
]

# The limits live in .limits (one place); re-exported here for compatibility.
#: Amounts are compared exactly as integers of 1/10,000 (4 decimals).
AMOUNT_SCALE = 10_000

FieldType: TypeAlias = Literal["string", "number", "integer", "boolean", "datetime", "list", "any"]
Op: TypeAlias = str

COMPARISON_OPS = ("eq", "ne", "lt", "le", "gt", "ge")
ALL_OPS = (*COMPARISON_OPS, "in", "not_in", "between", "contains", "starts_with", "exists", "within", "older_than")
AGGS = ("count", "sum", "avg", "first", "last")

_OPS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "string": ("eq", "ne", "in", "not_in", "contains", "starts_with", "exists"),
    "number": ("eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "between", "exists"),
    "boolean": ("eq", "ne", "exists"),
    "datetime": ("lt", "le", "gt", "ge", "between", "within", "older_than", "exists"),
    "list": ("contains", "exists"),
    "any": ("eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "between", "contains", "starts_with", "exists"),
}
_OPS_BY_AGG: dict[str, tuple[str, ...]] = {
    "count": ("eq", "ne", "lt", "le", "gt", "ge", "between"),
    "sum": ("eq", "ne", "lt", "le", "gt", "ge", "between"),
    "avg": ("eq", "ne", "lt", "le", "gt", "ge", "between"),
    "first": ("lt", "le", "gt", "ge", "between", "within", "older_than", "exists"),
    "last": ("lt", "le", "gt", "ge", "between", "within", "older_than", "exists"),
}

_DURATION = re.compile(r"^([1-9][0-9]{0,6})([hdw])$")
_UNIT = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
#: The longest window or relative date a rule may use.
MAX_DURATION = timedelta(days=36600)
#: Attribute and property keys rules may name (also what SQL carries as text: see
#: ``rules.sql.attribute_expression``).
KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
_KEY = KEY_PATTERN


def parse_duration(value: Any, path: str) -> timedelta:
    """``"90d"`` → 90 days; whole hours, days or weeks, at most 100 years."""
    if not isinstance(value, str) or not (m := _DURATION.match(value)):
        raise ValidationError(
            path, value, "not a duration", "write a whole number followed by h, d or w, e.g. '90d' or '12h'"
        )
    d = int(m.group(1)) * _UNIT[m.group(2)]
    if d > MAX_DURATION:
        raise ValidationError(path, value, "longer than 100 years", "use a shorter duration, e.g. '3650d'")
    return d


@frozen
class Window:
    """``occurred_at`` in ``[now - start, now - end)`` (``end`` None: no upper bound)."""

    start: timedelta
    end: timedelta | None = None
    text: str = ""

    @classmethod
    def parse(cls, value: Any, path: str) -> Window:
        if not isinstance(value, str):
            raise ValidationError(path, value, "not a window", "write e.g. '90d' or '210d..30d'")
        if ".." in value:
            a, _, b = value.partition("..")
            start, end = parse_duration(a, path), parse_duration(b, path)
            if end >= start:
                raise ValidationError(
                    path, value, "the window ends before it starts", "write the older bound first, e.g. '210d..30d'"
                )
            return cls(start, end, value)
        return cls(parse_duration(value, path), None, value)


@frozen
class FieldInfo:
    """A field rules can use: a customer column or a (declared) attribute."""

    name: str
    type: FieldType
    source: Literal["column", "attribute", "interaction", "property"]
    key: str
    description: str = ""


_CORE_FIELDS = (
    FieldInfo("email", "string", "column", "email", "the customer's e-mail address"),
    FieldInfo("phone", "string", "column", "phone", "the phone number (E.164)"),
    FieldInfo("name", "string", "column", "name", "the customer's name"),
    FieldInfo("external_id", "string", "column", "external_id", "the host application's id"),
    FieldInfo("lifecycle_stage", "string", "column", "lifecycle_stage", "the lifecycle stage"),
    FieldInfo("timezone", "string", "column", "timezone", "IANA time zone"),
    FieldInfo("locale", "string", "column", "locale", "preferred locale"),
    FieldInfo("created_at", "datetime", "column", "created_at", "when the customer was first recorded"),
    FieldInfo("updated_at", "datetime", "column", "updated_at", "when the customer last changed"),
)
_INTERACTION_FIELDS = (
    FieldInfo("channel", "string", "interaction", "channel"),
    FieldInfo("currency", "string", "interaction", "currency"),
    FieldInfo("amount", "number", "interaction", "amount"),
)
_ATTR_TYPES: dict[str, FieldType] = {
    "string": "string",
    "number": "number",
    "integer": "number",
    "boolean": "boolean",
    "datetime": "string",  # stored as ISO text in JSON: compared as text
    "list": "list",
}


@frozen
class Catalogue:
    """The names a rule may use, from the CRM's registry."""

    fields: Mapping[str, FieldInfo]
    kinds: frozenset[str]
    stages: frozenset[str]
    conditions: Mapping[str, Any]
    #: Slugs of the segments a rule may refer to (None: not checked here).
    segments: frozenset[str] | None = None

    @classmethod
    def from_registry(cls, registry: Any) -> Catalogue:
        fields = {f.name: f for f in _CORE_FIELDS}
        for a in registry.attributes.values():
            if a.name not in fields:
                fields[a.name] = FieldInfo(a.name, _ATTR_TYPES.get(a.type, "any"), "attribute", a.name, a.description)
        return cls(
            fields=fields,
            kinds=frozenset(registry.interaction_kinds),
            stages=frozenset(registry.lifecycle_stages),
            conditions=dict(registry.condition_types),
        )

    def field(self, name: Any, path: str) -> FieldInfo:
        if not isinstance(name, str):
            raise ValidationError(path, name, "not a field name", "write a field name as text, e.g. 'country'")
        if name in self.fields:
            return self.fields[name]
        head, dot, key = name.partition(".")
        if dot and head == "attributes":
            _check_key(key, path, name)
            return FieldInfo(name, "any", "attribute", key)
        raise ValidationError(
            path,
            name,
            f'unknown field "{name}"',
            _suggest(name, [*self.fields, "attributes.<key>"], "use a customer field or attributes.<key>"),
        )

    def interaction_field(self, name: Any, path: str) -> FieldInfo:
        if not isinstance(name, str):
            raise ValidationError(path, name, "not a field name", "write a property name as text, e.g. 'category'")
        for f in _INTERACTION_FIELDS:
            if f.name == name:
                return f
        key = name.removeprefix("properties.")
        _check_key(key, path, name)
        return FieldInfo(name, "any", "property", key)


def _check_key(key: str, path: str, name: str) -> None:
    if not _KEY.match(key):
        raise ValidationError(
            path,
            name,
            "not a valid attribute or property key",
            "keys start with a letter or '_' and use letters, digits, '_' and '-' (max 64), e.g. 'country'",
        )


def _suggest(name: str, choices: Iterable[str], otherwise: str) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    if close:
        return f'did you mean "{close[0]}"?'
    return otherwise


# ---------------------------------------------------------------------------
# typed nodes
# ---------------------------------------------------------------------------
@frozen
class All:
    children: tuple[Node, ...]


@frozen
class AnyOf:
    children: tuple[Node, ...]


@frozen
class Not:
    child: Node


@frozen
class FieldCond:
    """``field op value`` on a customer (or, inside ``where``, an interaction)."""

    field: FieldInfo
    op: Op
    value: Any = None
    #: The JSON type the stored value must have for ``any``-typed fields.
    vtype: Literal["string", "number", "boolean", "list", "datetime"] = "string"


@frozen
class EventCond:
    kind: str
    agg: str
    window: Window | None
    where: tuple[FieldCond, ...]
    op: Op
    value: Any = None

    @property
    def group_key(self) -> tuple[Any, ...]:
        """Conditions with the same key aggregate the same interactions."""
        return (self.kind, self.window, self.where)


@frozen
class SegmentRef:
    slug: str


@frozen
class ConsentCond:
    channel: str


@frozen
class PluginCond:
    name: str
    args: Mapping[str, Any] = field(converter=dict)
    spec: Any = field(eq=False, repr=False)


Node: TypeAlias = All | AnyOf | Not | FieldCond | EventCond | SegmentRef | ConsentCond | PluginCond


def walk(node: Node) -> Iterator[Node]:
    """Every node of a validated tree, parents first."""
    stack: list[Node] = [node]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, (All, AnyOf)):
            stack.extend(reversed(n.children))
        elif isinstance(n, Not):
            stack.append(n.child)


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------
_NODE_KEYS = ("all", "any", "not", "field", "event", "segment", "consent", "condition")


def validate(tree: Any, catalogue: Catalogue) -> Node:
    """Check ``tree`` and return its typed form, or raise ``ValidationError``.

    The walk is iterative: a tree nested 10,000 deep is refused at depth
    :data:`MAX_DEPTH` with a clear error, never a ``RecursionError``.
    """
    return _Validator(catalogue).run(tree)


class _Validator:
    def __init__(self, catalogue: Catalogue) -> None:
        self.cat = catalogue
        self.count = 0

    def run(self, tree: Any) -> Node:
        # First pass: shape, depth and size, iteratively (every limit of
        # .limits that the tree's shape decides is checked here, before any
        # name is looked up).
        # An entry: node, path, depth, negated (an odd number of ``not``
        # above), the kind of the enclosing and/or once negations are pushed
        # down (.normal), and how many times and/or alternated so far.
        stack: list[tuple[Any, str, int, bool, str, int]] = [(tree, "", 0, False, "", 0)]
        terms = events = values = 0
        while stack:
            node, path, depth, negated, outer, nesting = stack.pop()
            self.count += 1
            if self.count > MAX_NODES:
                raise _limit(path, f"more than {MAX_NODES} nodes (conditions, and/or/not)", "nodes")
            if depth > MAX_DEPTH:
                raise _limit(path, f"nested more than {MAX_DEPTH} levels deep", "depth")
            key = self._key(node, path)
            if key in ("all", "any"):
                children = node[key]
                if not isinstance(children, (list, tuple)) or not children:
                    raise ValidationError(
                        _join(path, key), _short(children), "not a non-empty list", f'write {{"{key}": [cond, …]}}'
                    )
                kind = key if not negated else ("any" if key == "all" else "all")
                if kind != outer:
                    nesting += 1
                    if nesting > MAX_NESTING:
                        raise _limit(path, f"'and' and 'or' alternate more than {MAX_NESTING} levels deep", "nesting")
                for i in range(len(children) - 1, -1, -1):  # popped in order: errors point at the first culprit
                    stack.append((children[i], f"{_join(path, key)}[{i}]", depth + 1, negated, kind, nesting))
            elif key == "not":
                stack.append((node["not"], _join(path, "not"), depth + 1, not negated, outer, nesting))
            else:
                terms += 1
                if terms > MAX_TERMS:
                    raise _limit(path, f"more than {MAX_TERMS} conditions", "terms")
                if key == "event":
                    events += 1
                    if events > MAX_EVENTS:
                        raise _limit(path, f"more than {MAX_EVENTS} behaviour conditions", "events")
                value = node.get("value")
                if key == "field" and node.get("op") in ("in", "not_in") and isinstance(value, (list, tuple)):
                    values += len(value)
                    if values > MAX_VALUES:
                        raise _limit(
                            _join(path, "value"), f"more than {MAX_VALUES} values in its in-lists together", "values"
                        )
        # Second pass: build typed nodes (depth is bounded, recursion is safe).
        return self.build(tree, "")

    def _key(self, node: Any, path: str) -> str:
        if not isinstance(node, Mapping):
            raise ValidationError(
                path or "rule", _short(node), "not a condition", 'write an object such as {"field": …} or {"all": […]}'
            )
        keys = [k for k in _NODE_KEYS if k in node]
        if len(keys) != 1:
            found = ", ".join(map(repr, node)) or "nothing"
            raise ValidationError(
                path or "rule",
                _short(node),
                f"a condition needs exactly one of {', '.join(_NODE_KEYS)} (found {found})",
                _suggest(next(iter(node), ""), _NODE_KEYS, "see docs/rules.md for the node shapes")
                if node and not keys
                else "split it into separate conditions under 'all'",
            )
        key = keys[0]
        allowed = {
            "all": {"all"},
            "any": {"any"},
            "not": {"not"},
            "field": {"field", "op", "value"},
            "event": {"event", "op", "value"},
            "segment": {"segment"},
            "consent": {"consent"},
            "condition": {"condition", "args"},
        }[key]
        extra = [k for k in node if k not in allowed]
        if extra:
            raise ValidationError(
                _join(path, str(extra[0])),
                _short(node[extra[0]]),
                f"unexpected key {extra[0]!r} in a {key!r} condition",
                f"a {key!r} condition has only {', '.join(sorted(allowed))}",
            )
        return key

    def build(self, node: Mapping[str, Any], path: str) -> Node:
        key = self._key(node, path)
        here = _join(path, key)
        if key == "all":
            return All(tuple(self.build(c, f"{here}[{i}]") for i, c in enumerate(node["all"])))
        if key == "any":
            return AnyOf(tuple(self.build(c, f"{here}[{i}]") for i, c in enumerate(node["any"])))
        if key == "not":
            return Not(self.build(node["not"], here))
        if key == "field":
            info = self.cat.field(node["field"], here)
            return self.comparison(info, node, path)
        if key == "event":
            return self.event(node, path)
        if key == "segment":
            slug = node["segment"]
            if not isinstance(slug, str) or not re.match(r"^[a-z][a-z0-9_\-]{0,63}$", slug):
                raise ValidationError(here, slug, "not a segment name", "use the segment's slug, e.g. 'vip'")
            if self.cat.segments is not None and slug not in self.cat.segments:
                raise ValidationError(
                    here,
                    slug,
                    f'unknown segment "{slug}"',
                    _suggest(slug, self.cat.segments, "create the segment first (crm.segments.create)"),
                )
            return SegmentRef(slug)
        if key == "consent":
            ch = node["consent"]
            if not isinstance(ch, str) or not re.match(r"^[a-z][a-z0-9_]*(?::[a-z0-9_]+)?$", ch) or len(ch) > 64:
                raise ValidationError(here, ch, "not a channel name", "name the channel, e.g. 'email' or 'email:news'")
            return ConsentCond(ch)
        return self.plugin(node, path)

    # -- comparisons ------------------------------------------------------
    def comparison(self, info: FieldInfo, node: Mapping[str, Any], path: str, *, where: bool = False) -> FieldCond:
        op = self._op(node, path, _OPS_BY_TYPE[info.type], info)
        vpath = _join(path, "value")
        if op == "exists":
            if "value" in node:
                raise ValidationError(vpath, _short(node["value"]), "'exists' takes no value", "remove the value")
            return FieldCond(info, op, None, "string")
        if "value" not in node:
            raise ValidationError(vpath, None, f"{op!r} needs a value", "add a value")
        value = node["value"]
        if info.type == "datetime":
            return FieldCond(info, op, _date_value(op, value, vpath), "datetime")
        if info.type == "list":
            return FieldCond(info, op, _string(value, vpath, info.name), "list")
        if info.source == "interaction" and info.key == "amount":
            return FieldCond(info, op, _amounts(op, value, vpath), "number")
        vtype, checked = _typed_value(info, op, value, vpath)
        if info.key == "lifecycle_stage" and info.source == "column":
            for i, v in enumerate(checked if isinstance(checked, tuple) else [checked]):
                if v not in self.cat.stages and op in ("eq", "ne", "in", "not_in"):
                    p = f"{vpath}[{i}]" if isinstance(checked, tuple) else vpath
                    raise ValidationError(
                        p, v, f'unknown lifecycle stage "{v}"', _suggest(v, self.cat.stages, _one_of(self.cat.stages))
                    )
        return FieldCond(info, op, checked, vtype)

    def _op(self, node: Mapping[str, Any], path: str, allowed: Sequence[str], info: FieldInfo | None) -> str:
        op = node.get("op")
        opath = _join(path, "op")
        if not isinstance(op, str) or op not in ALL_OPS:
            raise ValidationError(opath, op, f'unknown operator "{op}"', _suggest(str(op), ALL_OPS, _one_of(ALL_OPS)))
        if op not in allowed:
            what = f"{info.name} ({info.type})" if info else "this aggregate"
            raise ValidationError(opath, op, f'"{op}" does not apply to {what}', f"use one of: {', '.join(allowed)}")
        return op

    # -- events -----------------------------------------------------------
    def event(self, node: Mapping[str, Any], path: str) -> EventCond:
        here = _join(path, "event")
        ev = node["event"]
        if not isinstance(ev, Mapping):
            raise ValidationError(
                here, _short(ev), "not an event description", 'write {"kind": "purchase", "agg": "count"}'
            )
        for k in ev:
            if k not in ("kind", "agg", "window", "where"):
                raise ValidationError(
                    _join(here, str(k)), _short(ev[k]), f"unexpected key {k!r}", "an event has kind, agg, window, where"
                )
        kind = ev.get("kind")
        if not isinstance(kind, str) or kind not in self.cat.kinds:
            raise ValidationError(
                _join(here, "kind"),
                kind,
                f'unknown interaction kind "{kind}"',
                _suggest(str(kind), self.cat.kinds, "register the kind with ecrm_register_interaction_kinds"),
            )
        agg = ev.get("agg")
        if agg not in AGGS:
            raise ValidationError(
                _join(here, "agg"), agg, f'unknown aggregate "{agg}"', _suggest(str(agg), AGGS, _one_of(AGGS))
            )
        window = Window.parse(ev["window"], _join(here, "window")) if ev.get("window") is not None else None
        where_nodes = ev.get("where") or ()
        if not isinstance(where_nodes, (list, tuple)) or len(where_nodes) > MAX_FILTERS:
            raise ValidationError(
                _join(here, "where"),
                _short(where_nodes),
                f"not a list of at most {MAX_FILTERS} filters (limit 'filters')",
                "write a list of filters",
            )
        where: list[FieldCond] = []
        for i, f in enumerate(where_nodes):
            fpath = f"{_join(here, 'where')}[{i}]"
            if not isinstance(f, Mapping) or "field" not in f or set(f) - {"field", "op", "value"}:
                raise ValidationError(
                    fpath, _short(f), "not a filter", 'write {"field": "category", "op": "eq", "value": "shoes"}'
                )
            info = self.cat.interaction_field(f["field"], _join(fpath, "field"))
            cond = self.comparison(info, f, fpath, where=True)
            if cond.op in ("within", "older_than"):
                raise ValidationError(_join(fpath, "op"), cond.op, "not available in filters", "use the window")
            where.append(cond)
        op = self._op(node, path, _OPS_BY_AGG[agg], None)
        vpath = _join(path, "value")
        if op == "exists":
            if "value" in node:
                raise ValidationError(vpath, _short(node["value"]), "'exists' takes no value", "remove the value")
            value: Any = None
        elif "value" not in node:
            raise ValidationError(vpath, None, f"{op!r} needs a value", "add a value")
        elif agg == "count":
            value = _counts(op, node["value"], vpath)
        elif agg in ("sum", "avg"):
            value = _amounts(op, node["value"], vpath)
        else:
            value = _date_value(op, node["value"], vpath)
        return EventCond(kind, agg, window, tuple(where), op, value)

    # -- plugin conditions --------------------------------------------------
    def plugin(self, node: Mapping[str, Any], path: str) -> PluginCond:
        here = _join(path, "condition")
        name = node["condition"]
        spec = self.cat.conditions.get(name) if isinstance(name, str) else None
        if spec is None:
            raise ValidationError(
                here,
                name,
                f'unknown condition type "{name}"',
                _suggest(str(name), self.cat.conditions, "install the plugin that provides it (see `ecrm plugins`)"),
            )
        args = node.get("args", {})
        if not isinstance(args, Mapping):
            raise ValidationError(_join(path, "args"), _short(args), "not an object", "write args as an object")
        if spec.validate is not None:
            try:
                args = spec.validate(dict(args))
            except ValidationError as exc:
                raise exc.at(_join(path, "args")) from None
        return PluginCond(name, args, spec)


# ---------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 1e15


def _typed_value(info: FieldInfo, op: str, value: Any, path: str) -> tuple[Any, Any]:
    """Check a value against the field's type; return (vtype, value)."""
    if op in ("in", "not_in"):
        if not isinstance(value, (list, tuple)) or not value or len(value) > MAX_LIST:
            raise ValidationError(
                path, _short(value), f"not a list of 1 to {MAX_LIST} values (limit 'list')", 'write e.g. ("KR", "JP")'
            )
        items = [_scalar(info, v, f"{path}[{i}]", op) for i, v in enumerate(value)]
        types = {t for t, _ in items}
        if len(types) > 1:
            raise ValidationError(path, _short(value), "mixes text and numbers", "use values of one type")
        return types.pop(), tuple(v for _, v in items)
    if op == "between":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValidationError(path, _short(value), "not a [low, high] pair", "write e.g. [18, 65]")
        lo, hi = (_number(v, f"{path}[{i}]", info.name) for i, v in enumerate(value))
        if lo > hi:
            raise ValidationError(path, _short(value), "low is above high", "write the smaller value first")
        return "number", (lo, hi)
    if op in ("lt", "le", "gt", "ge"):
        return "number", _number(value, path, info.name)
    if op in ("contains", "starts_with"):
        return "string", _string(value, path, info.name)
    return _scalar(info, value, path, op)


def _scalar(info: FieldInfo, value: Any, path: str, op: str) -> tuple[str, Any]:
    want = info.type
    if isinstance(value, bool):
        if want not in ("boolean", "any") or op not in ("eq", "ne"):
            raise _type_error(info, value, path)
        return "boolean", value
    if isinstance(value, str):
        if want not in ("string", "any"):
            raise _type_error(info, value, path)
        return "string", _string(value, path, info.name)
    if isinstance(value, (int, float)):
        if want not in ("number", "any"):
            raise _type_error(info, value, path)
        return "number", _number(value, path, info.name)
    raise _type_error(info, value, path)


def _type_error(info: FieldInfo, value: Any, path: str) -> ValidationError:
    kinds = {"string": "text", "number": "a number", "boolean": "true or false", "any": "text, a number or a boolean"}
    got = type(value).__name__ if not isinstance(value, str) else "text"
    return ValidationError(
        path,
        _short(value),
        f"{info.name} is {kinds.get(info.type, info.type)}; {_short(value)!r} is {got}",
        f"compare {info.name} with {kinds.get(info.type, info.type)}",
    )


def _string(value: Any, path: str, name: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(path, _short(value), f"{name}: not text", "write a quoted string")
    if len(value) > 1000 or "\x00" in value:
        raise ValidationError(path, _short(value), "longer than 1000 characters or contains NUL", "use shorter text")
    return value


def _number(value: Any, path: str, name: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(
            path,
            _short(value),
            f"{name} is compared with numbers; {_short(value)!r} is not one",
            "write a number, e.g. 42",
        )
    if not _is_number(value):
        raise ValidationError(path, value, "not a finite number below 10^15", "write an ordinary number")
    return value


def _counts(op: str, value: Any, path: str) -> Any:
    def one(v: Any, p: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not (0 <= v < 2**31):
            raise ValidationError(p, _short(v), "a count is a whole number ≥ 0", "write e.g. 3")
        return v

    if op == "between":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValidationError(path, _short(value), "not a [low, high] pair", "write e.g. [1, 5]")
        lo, hi = one(value[0], f"{path}[0]"), one(value[1], f"{path}[1]")
        if lo > hi:
            raise ValidationError(path, _short(value), "low is above high", "write the smaller value first")
        return (lo, hi)
    return one(value, path)


def _amount(v: Any, p: str) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, (int, float, str, Decimal)):
        raise ValidationError(p, _short(v), "not an amount", "write a number, e.g. 100 or 99.95")
    try:
        d = Decimal(str(v))
    except InvalidOperation:
        raise ValidationError(p, _short(v), "not an amount", "write a number, e.g. 100 or 99.95") from None
    if not d.is_finite() or abs(d) >= Decimal(10) ** 15:
        raise ValidationError(p, _short(v), "not a finite amount below 10^15", "write an ordinary amount")
    if (d * AMOUNT_SCALE) % 1 != 0:
        raise ValidationError(p, _short(v), "more than 4 decimal places", "round the amount to 4 decimals")
    return d


def _amounts(op: str, value: Any, path: str) -> Any:
    if op == "between":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValidationError(path, _short(value), "not a [low, high] pair", "write e.g. [10, 100]")
        lo, hi = _amount(value[0], f"{path}[0]"), _amount(value[1], f"{path}[1]")
        if lo > hi:
            raise ValidationError(path, _short(value), "low is above high", "write the smaller value first")
        return (lo, hi)
    if op in ("in", "not_in"):
        if not isinstance(value, (list, tuple)) or not value or len(value) > MAX_LIST:
            raise ValidationError(
                path, _short(value), f"not a list of 1 to {MAX_LIST} amounts (limit 'list')", "write e.g. (10, 20)"
            )
        return tuple(_amount(v, f"{path}[{i}]") for i, v in enumerate(value))
    if op in ("contains", "starts_with"):
        raise ValidationError(path, _short(value), f"{op!r} does not apply to amounts", "compare amounts with < > ==")
    return _amount(value, path)


def _date_value(op: str, value: Any, path: str) -> Any:
    if op in ("within", "older_than"):
        return parse_duration(value, path)
    if op == "between":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValidationError(
                path, _short(value), "not a [from, to] pair", 'write e.g. ["2025-01-01", "2025-12-31"]'
            )
        lo, hi = _datetime(value[0], f"{path}[0]"), _datetime(value[1], f"{path}[1]")
        if lo > hi:
            raise ValidationError(path, _short(value), "'from' is after 'to'", "write the earlier date first")
        return (lo, hi)
    return _datetime(value, path)


def _datetime(value: Any, path: str) -> datetime:
    fix = "write an ISO date or time with a zone, e.g. '2025-01-31' or '2025-01-31T09:00:00+09:00'"
    if not isinstance(value, str) or len(value) > 40:
        raise ValidationError(path, _short(value), "not a date", fix)
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            dt = datetime(d.year, d.month, d.day, tzinfo=UTC)
        else:
            dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(path, value, "not a date", fix) from None
    if dt.tzinfo is None:
        raise ValidationError(path, value, "a date-time without a time zone", fix)
    if not 1900 <= dt.year <= 2200:
        raise ValidationError(path, value, "outside the years 1900 to 2200", "write a realistic date")
    return dt.astimezone(UTC)


def _limit(path: str, problem: str, name: str) -> ValidationError:
    """A rule over one of the limits of :mod:`.limits` (``name``): the error names it."""
    return ValidationError(
        path or "rule",
        None,
        f"{problem} (limit '{name}', see docs/rules.md)",
        "simplify the rule (e.g. `field in (…)` instead of many `or`s), or split it into segments "
        "and refer to them with segment(...)",
    )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _short(value: Any) -> Any:
    """A value small enough to show in an error."""
    if isinstance(value, str) and len(value) > 80:
        return value[:77] + "..."
    if isinstance(value, (Mapping, list, tuple)):
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return value


def _one_of(choices: Iterable[str]) -> str:
    return "use one of: " + ", ".join(sorted(choices))


Evaluator: TypeAlias = Callable[..., bool]
