"""Rules: who a segment, an offer or a lifecycle stage is for — as data.

See ``docs/rules.md``.  The public entry points:

- :func:`parse` / :func:`to_text`: the text syntax, to and from the tree;
- :func:`compile_rule`: validate a tree (or text) against a
  :class:`Catalogue` into a :class:`Rule`;
- :meth:`Rule.select` (SQL, one statement) and :meth:`Rule.evaluate`
  (in memory, one customer), which agree.

Most callers use these through ``crm.segments`` (``crm.segments.compile``,
``preview``, ``evaluate``), which builds the catalogue from the plugins.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from attrs import frozen

from ..errors import ValidationError
from ..validation import thaw
from .memory import EvalContext, evaluate
from .model import (
    All,
    AnyOf,
    Catalogue,
    ConsentCond,
    EventCond,
    FieldCond,
    FieldInfo,
    Node,
    Not,
    PluginCond,
    SegmentRef,
    Window,
    parse_duration,
    validate,
    walk,
)
from .sql import SqlContext, compile_clause, select_ids

__all__ = [
    "Rule",
    "RuleError",
    "compile_rule",
    "parse",
    "to_text",
    "Catalogue",
    "FieldInfo",
    "EvalContext",
    "SqlContext",
    "Node",
    "All",
    "AnyOf",
    "Not",
    "FieldCond",
    "EventCond",
    "SegmentRef",
    "ConsentCond",
    "PluginCond",
    "Window",
    "parse_duration",
    "walk",
]


def parse(text: str) -> dict[str, Any]:
    """Parse rule text into the JSON tree (syntax only; names are checked by :func:`compile_rule`)."""
    from .text import parse as _parse

    return _parse(text)


def to_text(tree: Mapping[str, Any]) -> str:
    """Print a tree in the canonical text syntax."""
    from .text import to_text as _to_text

    return _to_text(tree)


class RuleError(ValidationError):
    """A rule was rejected; for rule text, ``line``/``column`` point at the culprit."""

    def __init__(
        self,
        field: str,
        value: Any,
        problem: str,
        fix: str,
        *,
        line: int | None = None,
        column: int | None = None,
        context: str | None = None,
    ) -> None:
        super().__init__(field, value, problem, fix)
        self.line, self.column, self.context = line, column, context
        if context:
            self.args = (f"{self.args[0]}\n{context}",)


@frozen
class Rule:
    """A validated rule: its canonical tree, typed nodes and dependencies."""

    tree: Mapping[str, Any]
    node: Node

    @property
    def text(self) -> str:
        return to_text(self.tree)

    @property
    def segments(self) -> frozenset[str]:
        """Slugs of the segments this rule refers to."""
        return frozenset(n.slug for n in walk(self.node) if isinstance(n, SegmentRef))

    @property
    def kinds(self) -> frozenset[str] | None:
        """Interaction kinds whose arrival can change the answer (None: any)."""
        out: set[str] = set()
        for n in walk(self.node):
            if isinstance(n, EventCond):
                out.add(n.kind)
            elif isinstance(n, PluginCond):
                if n.spec.kinds is None:
                    return None
                out |= n.spec.kinds
        return frozenset(out)

    @property
    def uses_customer(self) -> bool:
        """Whether a change to the customer's own data can change the answer."""
        return any(isinstance(n, (FieldCond, ConsentCond, PluginCond)) for n in walk(self.node))

    @property
    def uses_time(self) -> bool:
        """Whether the answer can change with time alone (windows, relative dates)."""
        for n in walk(self.node):
            if isinstance(n, EventCond) and (n.window is not None or n.op in ("within", "older_than")):
                return True
            if isinstance(n, FieldCond) and n.op in ("within", "older_than"):
                return True
            if isinstance(n, PluginCond):
                return True
        return False

    def evaluate(self, ctx: EvalContext) -> bool:
        return evaluate(self.node, ctx)

    def clause(self, ctx: SqlContext) -> sa.ColumnElement[bool]:
        return compile_clause(self.node, ctx)

    def select(self, ctx: SqlContext) -> sa.Select[tuple[int]]:
        return select_ids(self.node, ctx)


def compile_rule(rule: str | Mapping[str, Any] | Rule, catalogue: Catalogue) -> Rule:
    """Validate ``rule`` (text or tree) into a :class:`Rule`, or raise :class:`RuleError`."""
    if isinstance(rule, Rule):
        return rule
    tree: Any
    if isinstance(rule, str):
        from .text import parse_with_positions

        text = rule
        tree, positions = parse_with_positions(text)
    elif isinstance(rule, Mapping):
        text, positions = None, {}
        tree = rule
    else:
        raise RuleError("rule", type(rule).__name__, "not a rule", "send rule text or a rule tree (dict)")
    try:
        node = validate(tree, catalogue)
    except ValidationError as exc:
        line = column = None
        context = None
        if text is not None:
            pos = _position(tree, exc.field, positions)
            if pos is not None:
                from .text import format_caret

                line, column = pos
                context = format_caret(text, line, column)
        raise RuleError(exc.field, exc.value, exc.problem, exc.fix, line=line, column=column, context=context) from None
    # The canonical tree is plain JSON (depth is bounded by now).
    return Rule(json.loads(json.dumps(thaw(tree), default=str)), node)


_STEP = re.compile(r"\.?([A-Za-z_]+)|\[(\d+)\]")


def _position(tree: Any, path: str, positions: Mapping[int, tuple[int, int]]) -> tuple[int, int] | None:
    """The text position of the deepest node dict on ``path``."""
    node, best = tree, positions.get(id(tree))
    for m in _STEP.finditer(path):
        key, index = m.group(1), m.group(2)
        try:
            node = node[int(index)] if index is not None else node[key]
        except (KeyError, IndexError, TypeError):
            break
        best = positions.get(id(node), best)
    return best
