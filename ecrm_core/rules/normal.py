"""The normal form the SQL compiler works on: flat, with negations at the leaves.

:func:`normalize` rewrites a validated tree into an equivalent one (the
in-memory evaluator gives the same answer for both; the agreement tests check
it) that keeps the statement the database parses shallow:

- ``not`` is pushed down to the conditions (De Morgan: ``not (a and b)`` is
  ``not a or not b``, ``not not a`` is ``a``); every leaf compiles to a
  clause that is never NULL, so two-valued logic holds;
- ``all`` inside ``all`` and ``any`` inside ``any`` are merged into their
  parent (parentheses in the text create no node, but a JSON tree may nest
  them);
- in an ``any``, equality conditions on one field (``name == "a" or name ==
  "b"`` or ``name in (…)``) become ONE ``in`` condition; in an ``all``,
  ``!=`` and ``not in`` on one field become one ``not in``.  The values are
  bound as one parameter (:func:`.sql.values_clause`), however many.

What remains nested is where ``all`` and ``any`` alternate (after the
negations are pushed down); the validator bounds that count
(:data:`.limits.MAX_NESTING`), and the compiler nests wide lists as
balanced trees (:func:`.sql.balanced`).
"""

from __future__ import annotations

from typing import Any

from .model import All, AnyOf, FieldCond, Node, Not

__all__ = ["normalize"]

_MERGE_TYPES = ("string", "number")


def normalize(node: Node, negate: bool = False) -> Node:
    """``node`` (negated if ``negate``) in the normal form described above."""
    if isinstance(node, Not):
        return normalize(node.child, not negate)
    if isinstance(node, (All, AnyOf)):
        conj = isinstance(node, All) != negate
        kind = All if conj else AnyOf
        kids: list[Node] = []
        for ch in node.children:
            n = normalize(ch, negate)
            if isinstance(n, kind):
                kids.extend(n.children)
            else:
                kids.append(n)
        kids = _merge(kids, conj)
        if len(kids) == 1:
            return kids[0]
        return kind(tuple(kids))
    return Not(node) if negate else node


def _mergeable(n: Node, ops: tuple[str, str]) -> bool:
    return (
        isinstance(n, FieldCond)
        and n.op in ops
        and n.vtype in _MERGE_TYPES
        and n.field.type != "list"
        and n.field.source in ("column", "attribute")
    )


def _merge(kids: list[Node], conj: bool) -> list[Node]:
    """Equality on one field into one ``in`` (``any``); ``!=`` into one ``not in`` (``all``)."""
    single, multi = ("ne", "not_in") if conj else ("eq", "in")
    groups: dict[tuple[Any, ...], list[FieldCond]] = {}
    out: list[Node | tuple[Any, ...]] = []
    for n in kids:
        if _mergeable(n, (single, multi)):
            assert isinstance(n, FieldCond)
            key = (n.field, n.vtype)
            if key not in groups:
                groups[key] = []
                out.append(key)
            groups[key].append(n)
        else:
            out.append(n)
    if not groups:
        return kids
    result: list[Node] = []
    for item in out:
        if not isinstance(item, tuple):
            result.append(item)
            continue
        conds = groups[item]
        if len(conds) == 1:
            result.append(conds[0])
            continue
        values: dict[Any, None] = {}
        for c in conds:
            for v in c.value if c.op == multi else (c.value,):
                values[v] = None
        first = conds[0]
        result.append(FieldCond(first.field, multi, tuple(values), first.vtype))
    return result
