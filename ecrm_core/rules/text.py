"""The text syntax of rules: parse text into the JSON tree and print it back.

:func:`parse` turns rule text (``purchase.count(90d) >= 3 and country in ("KR")``)
into the canonical tree of ``docs/rules.md``; :func:`to_text` prints a tree in
the canonical text, so that ``parse(to_text(tree)) == tree`` and
``to_text(parse(text)) == text`` for canonical text.  Both check syntax and
shape only: whether a field, kind or condition exists is the validator's job.

The grammar lives in ``grammar.lark`` (LALR).  Lark is imported and the parser
built on the first :func:`parse`, never at import time.  Syntax errors are
:class:`RuleSyntaxError`: they point at a line and column, show the line with a
caret, say what was expected and, where they can, what was probably meant.
"""

from __future__ import annotations

from .limits import MAX_DEPTH as MAX_DEPTH
from .parser import parse as parse
from .parser import parse_with_positions as parse_with_positions
from .printer import to_text as to_text
from .syntax import AGGS as AGGS
from .syntax import KEYWORDS as KEYWORDS
from .syntax import MAX_LENGTH as MAX_LENGTH
from .syntax import OP_TEXT as OP_TEXT
from .syntax import RuleSyntaxError as RuleSyntaxError
from .syntax import format_caret as format_caret

__all__ = [
    "MAX_LENGTH",
    "MAX_DEPTH",
    "RuleSyntaxError",
    "parse",
    "parse_with_positions",
    "to_text",
    "format_caret",
]
