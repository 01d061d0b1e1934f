"""The vocabulary of the rule text (keywords, operators, durations) and its syntax error."""

from __future__ import annotations

import bisect
import difflib
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from ..errors import ValidationError
from .limits import MAX_TEXT_LENGTH

#: The longest rule text :func:`parse` accepts, in characters (see :mod:`.limits`).
MAX_LENGTH = MAX_TEXT_LENGTH

KEYWORDS = frozenset(
    {
        "and",
        "or",
        "not",
        "in",
        "between",
        "contains",
        "starts_with",
        "exists",
        "within",
        "older_than",
        "true",
        "false",
    }
)
AGGS = ("count", "sum", "avg", "first", "last")
#: op → its text (``in``/``not_in``/``between`` are printed by hand).
OP_TEXT = {
    "eq": "==",
    "ne": "!=",
    "lt": "<",
    "le": "<=",
    "gt": ">",
    "ge": ">=",
    "in": "in",
    "not_in": "not in",
    "between": "between",
    "contains": "contains",
    "starts_with": "starts_with",
    "exists": "exists",
    "within": "within",
    "older_than": "older_than",
}
_SYMBOL_OPS = {"==": "eq", "=": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
_NODE_KEYS = ("all", "any", "not", "field", "event", "segment", "consent", "condition")
_BUILTIN_CALLS = ("segment", "consent")

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION = re.compile(r"[1-9][0-9]*[hdw]")
_WINDOW = re.compile(r"[1-9][0-9]*[hdw](?:\.\.[1-9][0-9]*[hdw])?")

_OPERATORS_HUMAN = "==, !=, <, <=, >, >=, in, not in, between, contains, starts_with, exists, within, older_than"
_DURATION_FIX = "durations are a whole number followed by h, d or w, e.g. 90d"
_EXAMPLE = 'country == "KR"'


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
class RuleSyntaxError(ValidationError):
    """Rule text that does not parse.

    ``line`` and ``column`` (both from 1) point at the culprit; ``context`` is
    that line with a caret under the column (:func:`format_caret`), and the
    message shows it between the problem and the fix.
    """

    def __init__(self, field: str, value: Any, problem: str, fix: str, *, line: int = 1, column: int = 1) -> None:
        super().__init__(field, value, problem, fix)
        self.line = line
        self.column = column
        self.context = format_caret(value if isinstance(value, str) else "", line, column)
        self.args = (f"{field}: {problem} at line {line}, column {column}\n{self.context}\n{fix}",)

    def at(self, prefix: str) -> RuleSyntaxError:
        moved = super().at(prefix)
        return RuleSyntaxError(moved.field, self.value, self.problem, self.fix, line=self.line, column=self.column)


def format_caret(text: str, line: int, column: int) -> str:
    """Line ``line`` of ``text`` and, under it, a caret at ``column`` (both from 1).

    Tabs before the column are repeated in the caret line and wide (East
    Asian) characters count twice, so the caret lines up in a terminal; a long
    line is cut to a window around the column.
    """
    lines = text.split("\n")
    src = lines[line - 1].rstrip("\r") if 1 <= line <= len(lines) else ""
    src = "".join(c if c.isprintable() or c == "\t" else "\ufffd" for c in src)
    col = min(max(column, 1), len(src) + 1)
    width = 100
    start = 0
    prefix = suffix = ""
    if len(src) > width:
        start = max(0, min(col - 1 - width // 2, len(src) - width))
        prefix = "…" if start > 0 else ""
        suffix = "…" if start + width < len(src) else ""
    shown = src[start : start + width] if len(src) > width else src
    before = prefix + src[start : col - 1]
    pad = "".join(_pad(c) for c in before)
    return f"{prefix}{shown}{suffix}\n{pad}^"


def _pad(c: str) -> str:
    if c == "\t":
        return "\t"
    if unicodedata.combining(c):
        return ""
    return "  " if unicodedata.east_asian_width(c) in ("W", "F") else " "


class _Lines:
    """Offsets → (line, column), as lark counts them (``\\n`` ends a line)."""

    def __init__(self, text: str) -> None:
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def at(self, pos: int) -> tuple[int, int]:
        i = bisect.bisect_right(self.starts, pos) - 1
        return i + 1, pos - self.starts[i] + 1


def _error(text: str, pos: int, problem: str, fix: str) -> RuleSyntaxError:
    line, column = _Lines(text).at(pos)
    return RuleSyntaxError("rule", text, problem, fix, line=line, column=column)


def _close(word: str, choices: Sequence[str], n: int = 1) -> list[str]:
    exact = [c for c in choices if c.lower() == word.lower()]
    return exact[:n] or difflib.get_close_matches(word.lower(), choices, n=n, cutoff=0.6)
