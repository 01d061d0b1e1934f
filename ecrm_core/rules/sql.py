"""Compile a validated rule into ONE SQLAlchemy statement.

Every leaf compiles to a clause that is never NULL (so ``not`` is plain
two-valued logic, exactly as in the in-memory evaluator), values are bound
parameters and names come from the :class:`~.model.Catalogue` whitelist.

Behaviour conditions become uncorrelated ``IN (SELECT customer_id … GROUP BY
customer_id HAVING …)`` subqueries, which use the ``(workspace, kind,
occurred_at)`` index; conditions of one ``all`` node over the same kind,
window and filters share one subquery (``HAVING count(*) >= 3 AND sum(…) >
100``), as a person writing the query by hand would.  A condition that holds
for a customer with no matching interaction (``count < 1``) compiles to
``NOT IN (… HAVING NOT …)`` so that such customers are included.

Restricted to a few customers (``SqlContext.restrict``: incremental
refreshes), behaviour conditions compile instead to subqueries correlated
with the customer row (``EXISTS``, ``NOT EXISTS``, a lone ``min``/``max``,
or one aggregate row), each an index range over that customer's own
interactions, evaluated only for the rows that get that far.
"""

from __future__ import annotations

import operator as op_
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import sqlalchemy as sa
from attrs import field, frozen
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import ColumnElement, UnaryExpression
from sqlalchemy.sql.visitors import InternalTraversal

from ..errors import ValidationError
from . import memory
from .model import (
    AMOUNT_SCALE,
    KEY_PATTERN,
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
from .normal import normalize

__all__ = [
    "SqlContext",
    "balanced",
    "compile_clause",
    "ids_clause",
    "select_ids",
    "unindexed",
    "values_clause",
]

Clause = ColumnElement[bool]


@frozen
class SqlContext:
    """What a compiler (the core's or a plugin condition's) needs.

    ``restrict`` limits the statement to some customers (incremental
    refresh); plugin compilers should add ``ctx.restrict_clause(column)`` to
    their own subqueries so that incremental refreshes stay cheap.
    """

    tables: Mapping[str, sa.Table]
    workspace: str
    now: datetime
    dialect: str
    segment_ids: Mapping[str, int] = field(factory=dict)
    restrict: Collection[int] | None = None
    crm: Any = field(default=None, eq=False, repr=False)

    @property
    def customers(self) -> sa.Table:
        return self.tables["customers"]

    @property
    def interactions(self) -> sa.Table:
        return self.tables["interactions"]

    _restrict_ids: list[int] | None = field(init=False, eq=False, repr=False)

    @_restrict_ids.default
    def _sorted_restrict(self) -> list[int] | None:
        return None if self.restrict is None else sorted(self.restrict)

    def restrict_clause(self, column: ColumnElement[Any]) -> Clause:
        """``column`` is one of the restricted customers (``true`` when there
        is no restriction).  The ids are ONE bound parameter (a JSON array on
        SQLite, an array on PostgreSQL), not thousands: the statement stays
        cacheable and cheap to compile, whatever the number of customers."""
        if self._restrict_ids is None:
            return sa.true()
        return ids_clause(column, self._restrict_ids, self.dialect, name="restrict_ids")


def ids_clause(column: ColumnElement[Any], ids: Sequence[int], dialect: str, *, name: str = "ids") -> Clause:
    """``column IN ids`` with the ids bound as one parameter: ``IN (SELECT value
    FROM json_each(:ids))`` on SQLite, ``= ANY(:ids)`` on PostgreSQL (an
    expanding ``IN`` elsewhere).  Either way the database drives the lookup
    from the list through an index on ``column``."""
    return values_clause(column, ids, dialect, name=name, element_type=sa.BigInteger)


def values_clause(
    column: ColumnElement[Any],
    values: Sequence[Any],
    dialect: str,
    *,
    name: str | None = "values",
    element_type: Any = sa.String,
    negate: bool = False,
) -> Clause:
    """:func:`ids_clause` for any JSON-representable values (strings, numbers);
    ``name=None`` makes the parameter's name unique in the statement."""
    clause: Clause
    if dialect == "sqlite":
        import json

        each = sa.func.json_each(sa.bindparam(name, json.dumps(list(values)), type_=sa.String)).table_valued("value")
        clause = column.in_(sa.select(each.c.value))
    elif dialect == "postgresql":
        clause = column == sa.any_(sa.bindparam(name, list(values), type_=postgresql.ARRAY(element_type)))
    else:
        clause = column.in_(sa.bindparam(name, list(values), expanding=True))
    return sa.not_(clause) if negate else clause


#: Conditions per level of a balanced and/or tree (see :func:`balanced`).
FANOUT = 16


class _Parens(ColumnElement[bool]):
    """A clause always printed in parentheses (SQLAlchemy drops them between
    ``OR``s of ``OR``s: the database would then parse one left-deep chain)."""

    inherit_cache = True
    _traverse_internals = [("clause", InternalTraversal.dp_clauseelement)]
    type = sa.Boolean()

    def __init__(self, clause: Clause) -> None:
        self.clause = clause


@compiles(_Parens)
def _compile_parens(element: _Parens, compiler: Any, **kw: Any) -> str:
    return "(" + str(compiler.process(element.clause, **kw)) + ")"


def balanced(conj: bool, parts: Sequence[Clause]) -> Clause:
    """``p1 AND p2 AND …`` (``OR`` if not ``conj``) nested as a balanced tree of
    at most :data:`FANOUT` terms per level: a database parses ``a OR b OR c``
    into a chain as deep as it is long (SQLite refuses a depth of 1,000), this
    into one whose depth grows with the logarithm of the number of terms."""
    op = sa.and_ if conj else sa.or_
    if len(parts) <= FANOUT:
        return op(*parts)
    size = -(-len(parts) // FANOUT)
    groups = [parts[i : i + size] for i in range(0, len(parts), size)]
    return op(*(_Parens(balanced(conj, g)) if len(g) > 1 else g[0] for g in groups))


def select_ids(node: Node, ctx: SqlContext) -> sa.Select[tuple[int]]:
    """``SELECT id FROM customers WHERE <workspace, not merged, restrict, rule>``."""
    c = ctx.customers
    ws: ColumnElement[Any] = c.c.workspace_id
    merged: ColumnElement[Any] = c.c.merged_into
    node = normalize(node)
    if ctx.dialect == "sqlite" and (ctx.restrict is not None or _driven_by_subquery(node)):
        # Let SQLite drive the query from the (small) IN-subquery, or from the
        # restricted ids, through the primary key: a unary + keeps it off the
        # (workspace, …) indexes, which would make it visit every customer of
        # the workspace.
        ws, merged = unindexed(ws), unindexed(merged)
    return sa.select(c.c.id).where(
        ws == ctx.workspace,
        merged.is_(None),
        ctx.restrict_clause(c.c.id),
        _clause(node, ctx),
    )


def unindexed(col: ColumnElement[Any]) -> ColumnElement[Any]:
    """``+col`` on SQLite: the same value, but the planner will not use an index on ``col`` for it."""
    return UnaryExpression(col, operator=operators.custom_op("+"), type_=col.type)


def _driven_by_subquery(node: Node) -> bool:
    """Whether every member must be in some ``IN (subquery)`` of the rule's top level."""
    parts = node.children if isinstance(node, All) else (node,)
    for part in parts:
        if isinstance(part, SegmentRef):
            return True
        if isinstance(part, EventCond) and not memory.holds_when_empty(part):
            return True
    return False


def compile_clause(node: Node, ctx: SqlContext) -> Clause:
    """The boolean clause for ``node`` over ``ctx.customers`` (in the normal
    form of :func:`.normal.normalize`: flat, negations at the leaves, equality
    chains as one ``in``, wide lists as balanced trees)."""
    return _clause(normalize(node), ctx)


def _clause(node: Node, ctx: SqlContext) -> Clause:
    if isinstance(node, All):
        return balanced(True, _all_parts(node.children, ctx))
    if isinstance(node, AnyOf):
        return balanced(False, [_clause(ch, ctx) for ch in node.children])
    if isinstance(node, Not):
        return sa.not_(_clause(node.child, ctx))
    if isinstance(node, FieldCond):
        return field_clause(node, ctx.customers, ctx, json_column="attributes")
    if isinstance(node, EventCond):
        return _events([node], ctx)
    if isinstance(node, SegmentRef):
        return _segment(node, ctx)
    if isinstance(node, ConsentCond):
        col = ctx.customers.c.consent[(node.channel, "status")].as_string()
        return sa.and_(col.is_not(None), col == "granted")
    if isinstance(node, PluginCond):
        clause = node.spec.compile(dict(node.args), ctx)
        return sa.func.coalesce(clause, sa.false()) if ctx.dialect != "sqlite" else sa.func.coalesce(clause, 0) == 1
    raise TypeError(f"not a rule node: {node!r}")  # pragma: no cover


def _all_parts(children: Sequence[Node], ctx: SqlContext) -> list[Clause]:
    parts: list[Clause] = []
    groups: dict[tuple[Any, ...], list[EventCond]] = {}
    for ch in children:
        if isinstance(ch, EventCond):
            groups.setdefault((*ch.group_key, memory.holds_when_empty(ch)), []).append(ch)
        else:
            parts.append(_clause(ch, ctx))
    parts.extend(_events(conds, ctx) for conds in groups.values())
    return parts


def _segment(node: SegmentRef, ctx: SqlContext) -> Clause:
    sid = ctx.segment_ids.get(node.slug)
    if sid is None:
        raise ValidationError("segment", node.slug, f"unknown segment {node.slug!r}", "create the segment first")
    m = ctx.tables["segment_members"]
    sub = sa.select(m.c.customer_id).where(m.c.segment_id == sid, ctx.restrict_clause(m.c.customer_id))
    return ctx.customers.c.id.in_(sub)


# ---------------------------------------------------------------------------
# behaviour over interactions
# ---------------------------------------------------------------------------
def _events(conds: list[EventCond], ctx: SqlContext) -> Clause:
    """One subquery for conditions over the same interactions (same group key)."""
    first = conds[0]
    i = ctx.interactions
    # Without statistics SQLite prefers the (workspace, customer) index for a
    # GROUP BY customer_id (no sort), reading every interaction of the
    # workspace; grouping by ``customer_id + 0`` lets it pick the (workspace,
    # kind, time) index, which reads only the matching kind and window.
    # (Incremental refreshes keep the customer index: few customers.)
    # Restricted to a few customers (incremental refresh), it is the other
    # way round: a unary + on ``kind`` keeps SQLite on the (workspace,
    # customer, time) index, a few entries per customer, instead of reading
    # every interaction of the kind in the window.
    who: ColumnElement[Any] = i.c.customer_id
    kind: ColumnElement[Any] = i.c.kind
    if ctx.dialect == "sqlite":
        if ctx.restrict is None:
            who = (i.c.customer_id + 0).label("customer_id")
        else:
            kind = unindexed(kind)
    matching: list[Clause] = [i.c.workspace_id == ctx.workspace, kind == first.kind]
    if first.window is not None:
        matching.append(i.c.occurred_at >= ctx.now - first.window.start)
        if first.window.end is not None:
            matching.append(i.c.occurred_at < ctx.now - first.window.end)
    matching.extend(field_clause(f, i, ctx, json_column="properties") for f in first.where)
    matching = [balanced(True, matching)]
    pushed = _pushdown(first, ctx) if len(conds) == 1 else None
    if ctx.restrict is not None:
        return _correlated(conds, ctx, matching, pushed)
    q = sa.select(who).where(*matching)
    if pushed is not None:
        # "some matching interaction exists" needs no GROUP BY at all
        return ctx.customers.c.id.in_(q.where(pushed))
    q = q.group_by(who)
    having = balanced(True, [_aggregate(c, ctx) for c in conds])
    if memory.holds_when_empty(first):
        return ctx.customers.c.id.not_in(q.having(sa.not_(having)))
    return ctx.customers.c.id.in_(q.having(having))


def _correlated(conds: list[EventCond], ctx: SqlContext, matching: list[Clause], pushed: Clause | None) -> Clause:
    """The restricted form (a few customers): a subquery correlated with the
    customer row, one index range per customer.

    Uncorrelated ``IN (… GROUP BY …)`` lists are computed in full for every
    restricted customer before the first row is tested; a correlated
    subquery runs only for the rows that reach it (cheap conditions of an
    ``all`` first, the later ``WHEN``s of a lifecycle ``CASE`` only when the
    earlier ones failed), ``EXISTS`` stops at the first match and
    ``min``/``max`` over the (workspace, customer, time) index read one
    entry.
    """
    i = ctx.interactions
    mine = [*matching, i.c.customer_id == ctx.customers.c.id]
    if pushed is not None:
        return sa.exists().where(*mine, pushed)
    first = conds[0]
    empty_holds = memory.holds_when_empty(first)
    if len(conds) == 1 and first.agg == "count" and _means_none(first):
        return ~sa.exists().where(*mine)
    if len(conds) == 1 and first.agg in ("first", "last") and first.op != "exists":
        # min/max alone (no count(*) beside it) reads one index entry; NULL
        # (nothing matched) takes the value the condition has on no interactions
        agg = sa.func.min if first.agg == "first" else sa.func.max
        at = sa.select(agg(i.c.occurred_at, type_=i.c.occurred_at.type)).where(*mine).scalar_subquery()
        return _never_null(_date_compare(at, first.op, first.value, ctx), empty_holds, ctx)
    having = balanced(True, [_aggregate(c, ctx) for c in conds])
    n = sa.func.count()
    # an aggregate without GROUP BY has one row even when nothing matches:
    # "IN (… HAVING h)" becomes "n > 0 AND h", "NOT IN (… HAVING NOT h)" "n = 0 OR h"
    test = sa.or_(n == 0, having) if empty_holds else sa.and_(n > 0, having)
    return _never_null(sa.select(test).where(*mine).scalar_subquery(), False, ctx)


def _means_none(c: EventCond) -> bool:
    """Whether a count condition says "no matching interaction" (``== 0``, ``< 1``, ``<= 0``)."""
    return (c.op == "eq" and c.value == 0) or (c.op == "lt" and c.value == 1) or (c.op == "le" and c.value == 0)


def _never_null(clause: Any, default: bool, ctx: SqlContext) -> Clause:
    """``clause``, with NULL read as ``default``."""
    if ctx.dialect == "sqlite":
        return sa.func.coalesce(clause, int(default)) == 1
    return sa.func.coalesce(clause, sa.true() if default else sa.false())


def _pushdown(c: EventCond, ctx: SqlContext) -> Clause | None:
    """A WHERE clause equivalent to "the group is not empty and ``c`` holds", if there is one."""
    at = ctx.interactions.c.occurred_at
    if c.agg == "count" and ((c.op == "ge" and c.value == 1) or (c.op == "gt" and c.value == 0)):
        return sa.true()
    if c.agg in ("first", "last") and c.op == "exists":
        return sa.true()
    if c.agg == "last" and c.op in ("ge", "gt", "within"):  # max(t) >= x  <=>  some t >= x
        return _date_compare(at, c.op, c.value, ctx)
    if c.agg == "first" and c.op in ("le", "lt", "older_than"):  # min(t) < x  <=>  some t < x
        return _date_compare(at, c.op, c.value, ctx)
    return None


def _units(amount: ColumnElement[Any]) -> ColumnElement[int]:
    return sa.cast(sa.func.round(amount * AMOUNT_SCALE), sa.BigInteger)


def _u(value: Decimal) -> int:
    return int(value * AMOUNT_SCALE)


def _aggregate(c: EventCond, ctx: SqlContext) -> Clause:
    i = ctx.interactions
    if c.agg == "count":
        return _compare(sa.func.count(), c.op, c.value)
    if c.agg == "sum":
        total = sa.func.coalesce(sa.func.sum(_units(i.c.amount)), 0)
        return _compare(total, c.op, _scaled(c.value))
    if c.agg == "avg":
        # avg op t  <=>  sum op t * n (n > 0): exact integer arithmetic.
        total = sa.func.coalesce(sa.func.sum(_units(i.c.amount)), 0)
        n = sa.func.count(i.c.amount)
        v = _scaled(c.value)
        if c.op == "between":
            lo, hi = v
            cmp = sa.and_(total >= n * lo, total <= n * hi)
        else:
            cmp = _compare(total, c.op, None, rhs=n * v)
        return sa.and_(n > 0, cmp)
    agg = sa.func.min if c.agg == "first" else sa.func.max
    at = agg(i.c.occurred_at, type_=i.c.occurred_at.type)
    if c.op == "exists":
        return sa.func.count() >= 1
    return _date_compare(at, c.op, c.value, ctx)


def _scaled(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_u(v) for v in value)
    return _u(value)


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "eq": op_.eq,
    "ne": op_.ne,
    "lt": op_.lt,
    "le": op_.le,
    "gt": op_.gt,
    "ge": op_.ge,
}


def _compare(lhs: Any, op: str, value: Any, *, rhs: Any = None, dialect: str = "") -> Clause:
    r = value if rhs is None else rhs
    if op in _BINARY:
        return cast(Clause, _BINARY[op](lhs, r))
    if op == "between":
        return sa.and_(lhs >= value[0], lhs <= value[1])
    if op in ("in", "not_in"):
        # ONE bound parameter however long the list (a JSON array on SQLite,
        # an array on PostgreSQL): merged equality chains can hold thousands
        # of values, and SQLite and PostgreSQL cap the number of parameters.
        # The array takes the left side's type: left to itself, (30, 0.1)
        # would be typed from its first value (INTEGER) on PostgreSQL.
        element = getattr(lhs, "type", None) or sa.String()
        values = list(value)
        if isinstance(element, sa.Float):
            values = [float(v) for v in values]
        return values_clause(lhs, values, dialect, name=None, element_type=element, negate=op == "not_in")
    raise ValueError(op)  # pragma: no cover


def _date_compare(col: ColumnElement[Any], op: str, value: Any, ctx: SqlContext) -> Clause:
    if op == "within":
        return _compare(col, "ge", ctx.now - value)
    if op == "older_than":
        return _compare(col, "lt", ctx.now - value)
    return _compare(col, op, value)


# ---------------------------------------------------------------------------
# fields: columns and JSON keys
# ---------------------------------------------------------------------------
def field_clause(cond: FieldCond, table: sa.Table, ctx: SqlContext, *, json_column: str) -> Clause:
    info = cond.field
    if info.source in ("column", "interaction"):
        col = table.c[info.key]
        if cond.op == "exists":
            return col.is_not(None)
        if info.key == "amount":
            return sa.and_(col.is_not(None), _compare(_units(col), cond.op, _scaled(cond.value), dialect=ctx.dialect))
        if cond.vtype == "datetime":
            return sa.and_(col.is_not(None), _date_compare(col, cond.op, cond.value, ctx))
        return sa.and_(col.is_not(None), _string_op(col, cond.op, cond.value, ctx))
    return _json_clause(table.c[json_column], info.key, cond, ctx)


def _string_op(col: ColumnElement[Any], op: str, value: Any, ctx: SqlContext) -> Clause:
    if op == "contains":
        pos = sa.func.instr(col, value) if ctx.dialect == "sqlite" else sa.func.strpos(col, value)
        return _compare(pos, "gt", 0)
    if op == "starts_with":
        return _compare(sa.func.substr(col, 1, len(value)), "eq", value)
    return _compare(col, op, value, dialect=ctx.dialect)


_SQLITE_TYPES = {
    "string": ("text",),
    "number": ("integer", "real"),
    "boolean": ("true", "false"),
    "list": ("array",),
}
_PG_TYPES = {"string": ("string",), "number": ("number",), "boolean": ("boolean",), "list": ("array",)}


def attribute_expression(key: str, dialect: str) -> str:
    """The SQL text of attribute ``key`` of ``customers.attributes`` as rules
    compile it (a plain key only): what an attribute index is built on."""
    if KEY_PATTERN.fullmatch(key) is None:
        raise ValueError(
            f"attribute key {key!r} cannot be indexed: a key starts with a letter or '_' "
            "and uses letters, digits, '_' and '-' (at most 64)"
        )
    if dialect == "sqlite":
        return f"json_extract(attributes, '$.\"{key}\"')"
    return f"(attributes ->> '{key}')"


class _Json:
    """Dialect-specific access to one key of a JSON column."""

    def __init__(self, col: sa.Column[Any], key: str, ctx: SqlContext) -> None:
        self.col, self.key, self.sqlite = col, key, ctx.dialect == "sqlite"
        # A key the rule language accepts (KEY_PATTERN: every key that passed
        # the catalogue) is written into the SQL text, so the expression is
        # the very one of an attribute index (crm.customers.indexes) and the
        # planner can use it; anything else stays a bound parameter.
        plain = KEY_PATTERN.fullmatch(key) is not None
        self.path: Any = sa.literal_column(f"'$.\"{key}\"'") if plain else f'$."{key}"'
        self.member: Any = sa.literal_column(f"'{key}'") if plain else key

    def type(self) -> ColumnElement[str]:
        if self.sqlite:
            return sa.func.coalesce(sa.func.json_type(self.col, self.path), "missing")
        return sa.func.coalesce(sa.func.json_typeof(self.col.op("->")(self.member)), "missing")

    def is_type(self, vtype: str) -> Clause:
        names = (_SQLITE_TYPES if self.sqlite else _PG_TYPES)[vtype]
        return self.type() == names[0] if len(names) == 1 else self.type().in_(names)

    def text(self) -> ColumnElement[Any]:
        if self.sqlite:
            return sa.func.json_extract(self.col, self.path)
        return cast(ColumnElement[Any], self.col.op("->>", return_type=sa.Text)(self.member))

    def number(self) -> ColumnElement[Any]:
        if self.sqlite:
            return sa.func.json_extract(self.col, self.path)
        # double precision: values (numbers below 10^15) bind as floats, so
        # 0.1 stays 0.1 (a NUMERIC bind without a scale would round it)
        return sa.cast(self.col.op("->>", return_type=sa.Text)(self.member), sa.Float)

    def boolean_is(self, value: bool) -> Clause:
        if self.sqlite:
            return self.type() == ("true" if value else "false")
        return sa.and_(self.is_type("boolean"), self.text() == ("true" if value else "false"))

    def array_contains(self, value: str) -> Clause:
        if self.sqlite:
            each = sa.func.json_each(self.col, self.path).table_valued("value", "type")
            return sa.and_(
                self.is_type("list"),
                sa.exists(sa.select(1).select_from(each).where(each.c.type == "text", each.c.value == value)),
            )
        as_jsonb = sa.cast(self.col.op("->")(self.member), postgresql.JSONB)
        return sa.and_(self.is_type("list"), as_jsonb.contains([value]))


def _json_clause(col: sa.Column[Any], key: str, cond: FieldCond, ctx: SqlContext) -> Clause:
    j = _Json(col, key, ctx)
    op, value, vtype = cond.op, cond.value, cond.vtype
    if op == "exists":
        return j.type().not_in(("missing", "null"))
    if cond.field.type == "list" or (op == "contains" and cond.field.type == "any"):
        arr = j.array_contains(value)
        if cond.field.type == "list":
            return arr
        return sa.or_(arr, sa.and_(j.is_type("string"), _string_op(j.text(), op, value, ctx)))
    if vtype == "boolean":
        return j.boolean_is(value if op == "eq" else not value)
    if vtype == "number":
        return sa.and_(j.is_type("number"), _compare(j.number(), op, value, dialect=ctx.dialect))
    return sa.and_(j.is_type("string"), _string_op(j.text(), op, value, ctx))
