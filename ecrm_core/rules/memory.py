"""Evaluate a validated rule for one customer, in memory, at event time.

The semantics are exactly those of :mod:`.sql` (a property test checks that
the two agree on random rules and data):

- a field condition on a missing value (or a value of another JSON type
  than the one compared with) is false, for every operator;
- ``count`` and ``sum`` of no interactions are 0; ``avg``, ``first`` and
  ``last`` of none are unknown, and every comparison with them is false;
- amounts are compared exactly, in units of 1/10,000.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from attrs import field, frozen

from .model import (
    AMOUNT_SCALE,
    All,
    AnyOf,
    ConsentCond,
    EventCond,
    FieldCond,
    Node,
    Not,
    PluginCond,
    SegmentRef,
)

__all__ = ["EvalContext", "evaluate", "holds_when_empty"]


@frozen
class EvalContext:
    """One customer, the interactions to consider, the time, and memberships.

    ``interactions`` are :class:`~ecrm_core.domain.Interaction` objects (or
    anything with ``kind``, ``channel``, ``occurred_at``, ``amount``,
    ``currency`` and ``properties``); ``segments`` are the slugs of the
    segments the customer is a member of.
    """

    customer: Any
    interactions: Sequence[Any]
    now: datetime
    segments: Collection[str] = frozenset()
    crm: Any = field(default=None, eq=False, repr=False)
    _by_kind: dict[str, list[Any]] = field(factory=dict, init=False, eq=False, repr=False)

    def of_kind(self, kind: str) -> list[Any]:
        if not self._by_kind and self.interactions:
            for it in self.interactions:
                self._by_kind.setdefault(it.kind, []).append(it)
        return self._by_kind.get(kind, [])


def evaluate(node: Node, ctx: EvalContext) -> bool:
    """Whether the customer in ``ctx`` satisfies ``node``."""
    if isinstance(node, All):
        return all(evaluate(ch, ctx) for ch in node.children)
    if isinstance(node, AnyOf):
        return any(evaluate(ch, ctx) for ch in node.children)
    if isinstance(node, Not):
        return not evaluate(node.child, ctx)
    if isinstance(node, FieldCond):
        return _field(node, _customer_value(ctx.customer, node), ctx.now)
    if isinstance(node, EventCond):
        return _event(node, ctx)
    if isinstance(node, SegmentRef):
        return node.slug in ctx.segments
    if isinstance(node, ConsentCond):
        state = ctx.customer.consent.get(node.channel)
        return state is not None and state.status == "granted"
    if isinstance(node, PluginCond):
        return bool(node.spec.evaluate(dict(node.args), ctx))
    raise TypeError(f"not a rule node: {node!r}")  # pragma: no cover


_MISSING = object()


def _customer_value(customer: Any, cond: FieldCond) -> Any:
    info = cond.field
    if info.source == "column":
        return getattr(customer, info.key)
    return customer.attributes.get(info.key, _MISSING)


def _interaction_value(it: Any, cond: FieldCond) -> Any:
    info = cond.field
    if info.source == "interaction":
        return getattr(it, info.key)
    return it.properties.get(info.key, _MISSING)


def _json_type(v: Any) -> str | None:
    if v is _MISSING or v is None:
        return None
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float, Decimal)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "list"
    return "object"


def _field(cond: FieldCond, x: Any, now: datetime) -> bool:
    op, value, info = cond.op, cond.value, cond.field
    if op == "exists":
        return _json_type(x) is not None
    if x is None or x is _MISSING:
        return False
    if cond.vtype == "datetime":
        return _date(x, op, value, now)
    if info.source == "interaction" and info.key == "amount":
        return _compare(_units(x), op, _scaled(value))
    if info.type == "list" or (op == "contains" and info.type == "any"):
        if isinstance(x, (list, tuple)):
            return any(isinstance(e, str) and e == value for e in x)
        return info.type == "any" and isinstance(x, str) and value in x
    t = _json_type(x)
    if cond.vtype == "boolean":
        return t == "boolean" and x is (value if op == "eq" else not value)
    if t != cond.vtype:
        return False
    if op == "contains":
        return value in x
    if op == "starts_with":
        return bool(x.startswith(value))
    return _compare(x, op, value)


def _compare(x: Any, op: str, value: Any) -> bool:
    if op == "eq":
        return bool(x == value)
    if op == "ne":
        return bool(x != value)
    if op == "lt":
        return bool(x < value)
    if op == "le":
        return bool(x <= value)
    if op == "gt":
        return bool(x > value)
    if op == "ge":
        return bool(x >= value)
    if op == "between":
        return bool(value[0] <= x <= value[1])
    if op == "in":
        return x in value
    if op == "not_in":
        return x not in value
    raise ValueError(op)  # pragma: no cover


def _date(x: datetime | None, op: str, value: Any, now: datetime) -> bool:
    if x is None:
        return False
    if op == "within":
        return bool(x >= now - value)
    if op == "older_than":
        return bool(x < now - value)
    return _compare(x, op, value)


def _units(amount: Decimal) -> int:
    return int((Decimal(amount) * AMOUNT_SCALE).to_integral_value())


def _scaled(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(int(v * AMOUNT_SCALE) for v in value)
    return int(value * AMOUNT_SCALE)


def _matching(cond: EventCond, ctx: EvalContext) -> list[Any]:
    rows = ctx.of_kind(cond.kind)
    if cond.window is not None:
        lo = ctx.now - cond.window.start
        hi = None if cond.window.end is None else ctx.now - cond.window.end
        rows = [r for r in rows if r.occurred_at >= lo and (hi is None or r.occurred_at < hi)]
    for f in cond.where:
        rows = [r for r in rows if _field(f, _interaction_value(r, f), ctx.now)]
    return rows


def _event(cond: EventCond, ctx: EvalContext) -> bool:
    return aggregate_holds(cond, _matching(cond, ctx), ctx.now)


def aggregate_holds(cond: EventCond, rows: Sequence[Any], now: datetime) -> bool:
    """Whether ``cond`` holds over ``rows`` (the interactions it aggregates)."""
    agg, op, value = cond.agg, cond.op, cond.value
    if agg == "count":
        return _compare(len(rows), op, value)
    if agg in ("sum", "avg"):
        amounts = [_units(r.amount) for r in rows if r.amount is not None]
        total = sum(amounts)
        if agg == "sum":
            return _compare(total, op, _scaled(value))
        n = len(amounts)
        if n == 0:
            return False
        v = _scaled(value)
        if op == "between":
            return bool(v[0] * n <= total <= v[1] * n)
        return _compare(total, op, v * n)
    if op == "exists":
        return bool(rows)
    if not rows:
        return False
    times = [r.occurred_at for r in rows]
    return _date(min(times) if agg == "first" else max(times), op, value, now)


_EPOCH = datetime(2000, 1, 1).astimezone()


def holds_when_empty(cond: EventCond) -> bool:
    """Whether ``cond`` holds for a customer with no matching interaction."""
    return aggregate_holds(cond, (), _EPOCH)
