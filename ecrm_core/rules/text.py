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

import bisect
import difflib
import functools
import json
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from ..errors import ValidationError
from .limits import MAX_DEPTH, MAX_TEXT_LENGTH

if TYPE_CHECKING:  # pragma: no cover
    from lark import Lark, Token, Tree
    from lark.exceptions import UnexpectedInput

__all__ = [
    "MAX_LENGTH",
    "MAX_DEPTH",
    "RuleSyntaxError",
    "parse",
    "parse_with_positions",
    "to_text",
    "format_caret",
]

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


# ---------------------------------------------------------------------------
# a light tokenizer: the depth guard and error messages
# ---------------------------------------------------------------------------
class _Tok(NamedTuple):
    kind: str
    value: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.value)


_SCAN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*)
  | (?P<str>"(?:[^"\\\n\r]|\\.)*"|'(?:[^'\\\n\r]|\\.)*')
  | (?P<qname>`[^`\n\r]+`)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<num>-?[0-9][A-Za-z0-9_.]*)
  | (?P<op>[<>=!]+)
  | (?P<range>\.\.)
  | (?P<punct>[()\[\],.])
  | (?P<unclosed>["'`][^\n]*)
  | (?P<other>.)
    """,
    re.X | re.S,
)


def _scan(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    for m in _SCAN.finditer(text):
        kind = m.lastgroup or "other"
        if kind not in ("ws", "comment"):
            out.append(_Tok(kind, m.group(), m.start()))
    return out


def _is_kw(tok: _Tok | None, *words: str) -> bool:
    return tok is not None and tok.kind == "word" and tok.value.lower() in words


class _Brackets(NamedTuple):
    unclosed: list[_Tok]  # brackets still open at the end, innermost last
    unmatched: list[_Tok]  # closing brackets without an opening one


def _precheck(text: str) -> _Brackets:
    """Refuse what must not reach the parser: too long, NUL, nested too deep."""
    if len(text) > MAX_LENGTH:
        raise _error(
            text,
            MAX_LENGTH,
            f"the rule is longer than {MAX_LENGTH:,} characters ({len(text):,}; limit 'text_length')",
            "split it into segments and refer to them with segment(...)",
        )
    nul = text.find("\0")
    if nul >= 0:
        raise _error(text, nul, "the rule contains a NUL character", "remove it")
    toks = _scan(text)
    # A frame per open bracket: [token, counts as a level, pending nots].
    frames: list[tuple[_Tok | None, bool, list[int]]] = [(None, False, [0])]
    unmatched: list[_Tok] = []
    depth = 0
    prev: _Tok | None = None
    for i, tok in enumerate(toks):
        v = tok.value
        if tok.kind == "punct" and v in "([":
            group = v == "(" and (prev is None or prev.value == "(" or _is_kw(prev, "and", "or", "not"))
            frames.append((tok, group, [0]))
            depth += group
        elif tok.kind == "punct" and v in ")]":
            if len(frames) > 1:
                _, group, nots = frames.pop()
                depth -= group + nots[0]
            else:
                unmatched.append(tok)
        elif _is_kw(tok, "not") and not _is_kw(toks[i + 1] if i + 1 < len(toks) else None, "in"):
            frames[-1][2][0] += 1
            depth += 1
        elif _is_kw(tok, "and", "or"):
            depth -= frames[-1][2][0]
            frames[-1][2][0] = 0
        if depth > MAX_DEPTH:
            raise _error(
                text,
                tok.start,
                f"the rule nests parentheses and not deeper than {MAX_DEPTH} levels (limit 'depth')",
                "flatten it, or split it into segments and refer to them with segment(...)",
            )
        prev = tok
    return _Brackets([f[0] for f in frames[1:] if f[0] is not None], unmatched)


# ---------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------
def parse(text: str) -> dict[str, Any]:
    """Parse rule text into the canonical JSON tree, or raise :class:`RuleSyntaxError`."""
    return parse_with_positions(text)[0]


def parse_with_positions(text: str) -> tuple[dict[str, Any], dict[int, tuple[int, int]]]:
    """Like :func:`parse`, and also ``{id(d): (line, column)}`` for every dict of the tree.

    Every node dict, every ``event`` dict and every ``where`` filter dict is
    in the map, so that a later (semantic) error can point at the text.
    """
    if not isinstance(text, str):
        raise ValidationError("rule", type(text).__name__, "rule text must be a string", f"write e.g. {_EXAMPLE}")
    brackets = _precheck(text)
    from lark.exceptions import UnexpectedInput, VisitError

    parser, transformer = _machinery()
    try:
        lark_tree = parser.parse(text)
    except UnexpectedInput as exc:
        raise _translate(text, exc, brackets) from None
    builder = transformer(text)
    try:
        tree = builder.transform(lark_tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, RuleSyntaxError):
            raise exc.orig_exc from None
        raise
    return tree, builder.positions


class _Builder(Protocol):
    """The interface of the lazily defined lark Transformer."""

    positions: dict[int, tuple[int, int]]

    def transform(self, tree: Tree[Token]) -> dict[str, Any]: ...  # pragma: no cover


@functools.cache
def _machinery() -> tuple[Lark, Callable[[str], _Builder]]:
    """The LALR parser and the transformer class, built once on first use."""
    from lark import Lark

    grammar = Path(__file__).with_name("grammar.lark").read_text(encoding="utf-8")
    parser = Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True, maybe_placeholders=False)
    return parser, _transformer_class()


class _Field(NamedTuple):
    name: str
    start: int


class _Window(NamedTuple):
    text: str


class _Arg(NamedTuple):
    keyword: Token | None
    token: Token  # the value token (or the name token of a positional name)
    value: Any
    bare_name: bool


_NO_VALUE: Any = object()


def _transformer_class() -> Callable[[str], _Builder]:
    from lark import Token, Transformer, v_args
    from lark.tree import Meta

    def start(meta: Meta | Token) -> int:
        pos = meta.start_pos
        assert pos is not None
        return pos

    @v_args(meta=True)
    class ToTree(Transformer[Token, Any]):
        def __init__(self, text: str) -> None:
            super().__init__(visit_tokens=False)
            self.text = text
            self.lines = _Lines(text)
            self.positions: dict[int, tuple[int, int]] = {}

        def _at(self, node: dict[str, Any], pos: int) -> dict[str, Any]:
            self.positions[id(node)] = self.lines.at(pos)
            return node

        def _fail(self, pos: int, problem: str, fix: str) -> RuleSyntaxError:
            return _error(self.text, pos, problem, fix)

        # -- boolean structure ------------------------------------------
        def or_expr(self, meta: Meta, children: list[Any]) -> dict[str, Any]:
            return self._at({"any": [c for c in children if not isinstance(c, Token)]}, start(meta))

        def and_expr(self, meta: Meta, children: list[Any]) -> dict[str, Any]:
            return self._at({"all": [c for c in children if not isinstance(c, Token)]}, start(meta))

        def negation(self, meta: Meta, children: list[Any]) -> dict[str, Any]:
            return self._at({"not": children[-1]}, start(meta))

        # -- comparisons ------------------------------------------------
        def comparison(self, meta: Meta, children: list[Any]) -> dict[str, Any]:
            subject, (op, value) = children
            node: dict[str, Any]
            if isinstance(subject, _Field):
                node = {"field": subject.name, "op": op}
            else:
                node = {"event": subject, "op": op}
            if value is not _NO_VALUE:
                node["value"] = value
            return self._at(node, start(meta))

        def field_ref(self, meta: Meta, children: list[Token]) -> _Field:
            return _Field(".".join(_name(t) for t in children), start(meta))

        def filter(self, meta: Meta, children: list[Any]) -> dict[str, Any]:
            field, (op, value) = children
            node: dict[str, Any] = {"field": field.name, "op": op}
            if value is not _NO_VALUE:
                node["value"] = value
            return self._at(node, start(meta))

        def filters(self, meta: Meta, children: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return children

        def window(self, meta: Meta, children: list[Token]) -> _Window:
            return _Window("..".join(self._duration(t) for t in children if t.type == "DURATION"))

        def event(self, meta: Meta, children: list[Any]) -> dict[str, Any]:
            kind_tok, agg_tok = [c for c in children if isinstance(c, Token)]
            agg = _name(agg_tok)
            if agg not in AGGS:
                guess = _close(agg, AGGS)
                hint = f'did you mean "{guess[0]}"? ' if guess else ""
                raise self._fail(
                    start(agg_tok),
                    f'unknown aggregate "{agg}"',
                    f"{hint}an event is aggregated with {', '.join(AGGS)}, e.g. purchase.count(90d) >= 3",
                )
            ev: dict[str, Any] = {"kind": _name(kind_tok), "agg": agg}
            for c in children:
                if isinstance(c, _Window):
                    ev["window"] = c.text
            for c in children:
                if isinstance(c, list):
                    ev["where"] = c
            return self._at(ev, start(meta))

        def _duration(self, tok: Token) -> str:
            v = str(tok.value)
            digits, unit = v[:-1].lstrip("0"), v[-1].lower()
            if not digits:
                raise self._fail(start(tok), f'the duration "{tok.value}" is zero', f"{_DURATION_FIX}, at least 1")
            return digits + unit

        # -- predicates: (op, value) ------------------------------------
        def p_compare(self, meta: Meta, children: list[Token]) -> tuple[str, Any]:
            return _SYMBOL_OPS[children[0].value], self._scalar(children[1])

        def p_in(self, meta: Meta, children: list[Any]) -> tuple[str, Any]:
            return "in", children[-1]

        def p_not_in(self, meta: Meta, children: list[Any]) -> tuple[str, Any]:
            return "not_in", children[-1]

        def p_between(self, meta: Meta, children: list[Token]) -> tuple[str, Any]:
            return "between", [self._scalar(children[1]), self._scalar(children[3])]

        def p_contains(self, meta: Meta, children: list[Token]) -> tuple[str, Any]:
            return "contains", self._scalar(children[1])

        def p_starts_with(self, meta: Meta, children: list[Token]) -> tuple[str, Any]:
            return "starts_with", self._scalar(children[1])

        def p_exists(self, meta: Meta, children: list[Token]) -> tuple[str, Any]:
            return "exists", _NO_VALUE

        def p_within(self, meta: Meta, children: list[Token]) -> tuple[str, Any]:
            return "within", self._duration(children[1])

        def p_older_than(self, meta: Meta, children: list[Token]) -> tuple[str, Any]:
            return "older_than", self._duration(children[1])

        def value_list(self, meta: Meta, children: list[Token]) -> list[Any]:
            return [self._scalar(t) for t in children]

        # -- calls --------------------------------------------------------
        def kwarg(self, meta: Meta, children: list[Any]) -> _Arg:
            key, _, value = children
            if isinstance(value, Token):
                return _Arg(key, value, self._scalar(value), False)
            return _Arg(key, key, value, False)

        def posarg(self, meta: Meta, children: list[Token]) -> _Arg:
            return _Arg(None, children[0], self._scalar(children[0]), False)

        def posname(self, meta: Meta, children: list[Token]) -> _Arg:
            return _Arg(None, children[0], _name(children[0]), True)

        def call(self, meta: Meta, children: list[Any]) -> dict[str, Any]:
            name_tok: Token = children[0]
            args: list[_Arg] = children[1:]
            name = _name(name_tok)
            if name_tok.type == "IDENT" and name in _BUILTIN_CALLS:
                return self._at(self._builtin(name, name_tok, args, meta), start(meta))
            values: dict[str, Any] = {}
            for arg in args:
                if arg.keyword is None:
                    guess = _close(name, _BUILTIN_CALLS)
                    hint = f" (did you mean {guess[0]}(...)?)" if guess else ""
                    raise self._fail(
                        start(arg.token),
                        f"the condition {name}(...) takes keyword arguments only{hint}",
                        f"name the argument, e.g. {name}(min=4)",
                    )
                key = _name(arg.keyword)
                if key in values:
                    raise self._fail(
                        start(arg.keyword), f'the argument "{key}" is given twice', "give each argument once"
                    )
                values[key] = arg.value
            return self._at({"condition": name, "args": values}, start(meta))

        def _builtin(self, name: str, name_tok: Token, args: list[_Arg], meta: Meta) -> dict[str, Any]:
            example = 'segment("vip")' if name == "segment" else "consent(email)"
            what = "segment name" if name == "segment" else "channel"
            if len(args) != 1:
                pos = start(args[1].token) if len(args) > 1 else meta.end_pos - 1
                raise self._fail(pos, f"{name}(...) takes exactly one {what}", f"write e.g. {example}")
            arg = args[0]
            if arg.keyword is not None:
                raise self._fail(
                    start(arg.keyword), f"{name}(...) takes the {what} without a keyword", f"write e.g. {example}"
                )
            if not isinstance(arg.value, str):
                raise self._fail(start(arg.token), f"the {what} must be text", f"write e.g. {example}")
            return {name: arg.value}

        def _scalar(self, tok: Token) -> Any:
            if tok.type in ("STRING", "SQSTRING"):
                return _unquote(self.text, tok)
            if tok.type == "NUMBER":
                return _number(self.text, tok)
            if tok.type == "TRUE":
                return True
            if tok.type == "FALSE":
                return False
            raise AssertionError(tok.type)  # pragma: no cover

    return ToTree


def _name(tok: Token) -> str:
    v = str(tok.value)
    return v[1:-1] if tok.type == "QNAME" else v


_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")


def _unquote(text: str, tok: Token) -> str:
    """A quoted string token's value: JSON escapes (and ``\\'``)."""
    body = str(tok.value)[1:-1]
    base = (tok.start_pos or 0) + 1
    if "\\" not in body:
        return body
    out: list[str] = []
    i = 0
    while True:
        j = body.find("\\", i)
        if j < 0:
            out.append(body[i:])
            break
        out.append(body[i:j])
        c = body[j + 1]
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
            i = j + 2
            continue
        if c == "u" and _HEX4.fullmatch(body[j + 2 : j + 6]):
            code = int(body[j + 2 : j + 6], 16)
            i = j + 6
            # a surrogate pair written as two escapes is one character, as in JSON
            if 0xD800 <= code < 0xDC00 and body[i : i + 2] == "\\u" and _HEX4.fullmatch(body[i + 2 : i + 6]):
                low = int(body[i + 2 : i + 6], 16)
                if 0xDC00 <= low < 0xE000:
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    i += 6
            out.append(chr(code))
            continue
        bad = body[j : j + 6] if c == "u" else body[j : j + 2]
        raise _error(
            text,
            base + j,
            f'invalid escape "{bad}" in a string',
            "use one of \\\" \\' \\\\ \\/ \\b \\f \\n \\r \\t or \\uXXXX (four hex digits)",
        )
    return "".join(out)


def _number(text: str, tok: Token) -> int | float:
    v = str(tok.value)
    pos = tok.start_pos or 0
    if any(c in v for c in ".eE"):
        f = float(v)
        if not math.isfinite(f):
            raise _error(text, pos, f"the number {v} is too large", "write a smaller number")
        return f
    try:
        return int(v)
    except ValueError:  # more digits than int() converts
        raise _error(text, pos, "the number has too many digits", "write a smaller number, or text in quotes") from None


# ---------------------------------------------------------------------------
# syntax errors: lark's exception → a RuleSyntaxError in human words
# ---------------------------------------------------------------------------
_OP_TERMINALS = frozenset({"EQ", "ASSIGN", "NE", "LT", "LE", "GT", "GE"})
_VALUE_TERMINALS = frozenset({"STRING", "SQSTRING", "NUMBER", "TRUE", "FALSE"})
_KEYWORD_TERMINALS = frozenset(k.upper() for k in KEYWORDS)
_OP_WORDS = ("in", "not", "between", "contains", "starts_with", "exists", "within", "older_than")
_OP_SYMBOLS = ("==", "!=", "<", "<=", ">", ">=")
_OP_FIXES = {"=>": ">=", "=<": "<=", "<>": "!=", "===": "==", "!==": "!=", "=!": "!=", "!": "!="}
_TERMINAL_WORDS = {
    "LPAR": '"("',
    "RPAR": '")"',
    "LSQB": '"["',
    "RSQB": '"]"',
    "COMMA": '","',
    "DOT": '"."',
    "RANGE": '".."',
    "IDENT": "a name",
    "QNAME": "a name in backticks",
    "DURATION": "a duration such as 90d",
    "STRING": "a string",
    "SQSTRING": "a string",
    "NUMBER": "a number",
    "$END": "the end of the rule",
    **{t: f'"{t.lower()}"' for t in _KEYWORD_TERMINALS},
    **{
        t: f'"{s}"'
        for t, s in {"EQ": "==", "ASSIGN": "=", "NE": "!=", "LT": "<", "LE": "<=", "GT": ">", "GE": ">="}.items()
    },
}


def _expected_words(expected: set[str]) -> str:
    if {"EQ", "IN", "BETWEEN"} <= expected:
        return f"a comparison operator ({_OPERATORS_HUMAN})"
    if "STRING" in expected and "LPAR" in expected:
        return 'a value (a string in quotes, a number, true or false) or a list such as ("a", "b")'
    if "STRING" in expected:
        return "a value (a string in quotes, a number, true or false)"
    if "DURATION" in expected and "RPAR" in expected:
        return 'a window (a duration such as 90d, or a range such as 210d..30d) or ")"'
    if "DURATION" in expected:
        return "a duration (a whole number followed by h, d or w, e.g. 90d)"
    if {"LPAR", "LSQB"} <= expected and "IDENT" not in expected:
        return 'a list of values in parentheses, e.g. ("KR", "JP")'
    if {"IDENT", "NOT", "LPAR"} <= expected:
        return 'a condition (e.g. country == "KR", purchase.count(90d) >= 1, segment("vip"), consent(email), not …, or ( … ))'
    words = [_TERMINAL_WORDS.get(t, t) for t in sorted(expected, key=_terminal_order)]
    words = list(dict.fromkeys(words))
    if not words:
        return "something else"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _terminal_order(t: str) -> tuple[int, str]:
    order = ["AND", "OR", "IDENT", "QNAME", "COMMA", "RPAR", "RSQB", "DOT", "$END"]
    return (order.index(t) if t in order else len(order), t)


def _got_words(kind: str, value: str) -> str:
    if kind == "$END":
        return "the end of the rule"
    if kind in _KEYWORD_TERMINALS:
        return f'the keyword "{value}"'
    if kind == "IDENT":
        return f'the name "{value}"'
    if kind == "QNAME":
        return f"the name {value}"
    if kind in ("STRING", "SQSTRING"):
        return f"the string {value}"
    if kind == "NUMBER":
        return f"the number {value}"
    if kind == "DURATION":
        return f"the duration {value}"
    return f'"{value}"'


def _translate(text: str, exc: UnexpectedInput, brackets: _Brackets) -> RuleSyntaxError:
    from lark.exceptions import UnexpectedCharacters, UnexpectedToken

    toks = _scan(text)
    if isinstance(exc, UnexpectedCharacters):
        return _bad_character(text, toks, exc.pos_in_stream or 0, set(exc.allowed or ()))
    if isinstance(exc, UnexpectedToken):
        expected: set[str] = set()
        try:
            expected = set(exc.accepts or ())
        except Exception:  # pragma: no cover - the interactive parser could not say
            expected = set()
        expected = expected or set(exc.expected)
        tok = exc.token
        if tok.type == "$END":
            return _unexpected(text, toks, len(text), "$END", "", expected, brackets)
        return _unexpected(text, toks, tok.start_pos or 0, tok.type, str(tok.value), expected, brackets)
    return _error(text, exc.pos_in_stream or 0, "the rule does not parse", f"write e.g. {_EXAMPLE}")  # pragma: no cover


def _before(toks: list[_Tok], pos: int) -> _Tok | None:
    """The last token that ends at or before ``pos``."""
    best = None
    for t in toks:
        if t.start >= pos:
            break
        best = t
    return best


def _bad_character(text: str, toks: list[_Tok], pos: int, allowed: set[str]) -> RuleSyntaxError:
    c = text[pos]
    if c in "\"'":
        return _error(
            text,
            pos,
            "unclosed string: this quote has no closing quote on the same line",
            f"end the string with a matching {c} (write \\n for a line break inside a string)",
        )
    if c == "`":
        return _error(
            text,
            pos,
            "unclosed name: this backtick has no closing backtick on the same line",
            "end the name with a backtick, e.g. `checkout.completed`",
        )
    if c.isdigit() or (c == "-" and text[pos + 1 : pos + 2].isdigit()):
        m = re.compile(r"-?[0-9][A-Za-z0-9_.+\-]*").match(text, pos)
        bad = m.group() if m else c
        if "DURATION" in allowed:
            return _error(text, pos, f'bad duration "{bad}"', _DURATION_FIX)
        return _error(text, pos, f'bad number "{bad}"', "numbers are written like 3, -2 or 4.5")
    hints = {
        "&": 'did you mean "and"?',
        "|": 'did you mean "or"?',
        "!": 'did you mean "!=" or "not"?',
        ";": "join conditions with and / or",
        "\u201c": 'use straight double quotes: "text"',
        "\u201d": 'use straight double quotes: "text"',
        "\u2018": "use straight quotes: 'text'",
        "\u2019": "use straight quotes: 'text'",
    }
    if c in hints:
        return _error(text, pos, f"unexpected character {c!r}", hints[c])
    expected = f"; expected {_expected_words(allowed)}" if allowed else ""
    fix = "names that are not plain identifiers go in backticks, e.g. `checkout.completed`"
    return _error(text, pos, f"unexpected character {c!r}{expected}", fix)


def _unexpected(
    text: str,
    toks: list[_Tok],
    pos: int,
    kind: str,
    value: str,
    expected: set[str],
    brackets: _Brackets,
) -> RuleSyntaxError:
    prev = _before(toks, pos)
    if kind == "$END":
        pos = prev.end if prev is not None else len(text)
    want = _expected_words(expected)
    got = _got_words(kind, value)
    problem = f"expected {want}" if kind == "$END" else f"expected {want}, got {got}"
    fail = functools.partial(_error, text)

    # an operator that is not one: >==, =>, <>
    if kind in _OP_TERMINALS or (kind != "$END" and prev is not None and prev.kind == "op" and prev.end == pos):
        run_start = pos
        while run_start > 0 and text[run_start - 1] in "<>=!":
            run_start -= 1
        run_end = pos
        while run_end < len(text) and text[run_end] in "<>=!":
            run_end += 1
        run = text[run_start:run_end]
        if run and run not in _SYMBOL_OPS:
            op_guess = _OP_FIXES.get(run) or next(iter(_close(run, _OP_SYMBOLS)), None)
            fix = f'did you mean "{op_guess}"?' if op_guess else f"operators are {_OPERATORS_HUMAN}"
            return fail(
                run_start, f'"{run}" is not an operator; expected a comparison operator ({_OPERATORS_HUMAN})', fix
            )

    # a bracket never closed, or one closed twice
    if kind == "$END" and expected & {"RPAR", "RSQB"} and brackets.unclosed:
        b = brackets.unclosed[-1]
        closer = ")" if b.value == "(" else "]"
        return fail(b.start, f'this "{b.value}" is never closed; the rule ends first', f'add the missing "{closer}"')
    if kind in ("RPAR", "RSQB") and any(t.start == pos for t in brackets.unmatched):
        opener = "(" if value == ")" else "["
        return fail(pos, f'this "{value}" has no matching "{opener}"', f'remove it, or add the missing "{opener}"')

    # a keyword where a name belongs
    if kind in _KEYWORD_TERMINALS and "IDENT" in expected:
        return fail(
            pos,
            f'"{value}" is a keyword, not a name; {problem}',
            f"to use it as a name, write it in backticks: `{value}`",
        )

    after = f' after "{prev.value}"' if prev is not None else ""

    if expected & _VALUE_TERMINALS:
        if kind in ("$END", "AND", "OR", "RPAR", "COMMA", "RSQB") or kind in _KEYWORD_TERMINALS - {"TRUE", "FALSE"}:
            return fail(pos, f"missing value{after}; {problem}", f"write a value{after}, e.g. {_EXAMPLE}")
        if kind == "IDENT":
            low = value.lower()
            if low in ("nan", "inf", "infinity"):
                return fail(pos, f'"{value}" is not a number that rules accept', "write a finite number, e.g. 3 or 4.5")
            if low in ("null", "none", "nil"):
                return fail(pos, "rules have no null value", "to test for a missing value write: not country exists")
            guess = _close(value, ("true", "false"))
            if guess:
                return fail(pos, problem, f'did you mean "{guess[0]}"?')
            return fail(pos, problem, f'text values go in quotes: "{value}"')
        if kind in ("LPAR", "LSQB"):
            return fail(pos, problem, 'a list of values only follows in / not in, e.g. country in ("KR", "JP")')
        if kind == "DURATION":
            return fail(
                pos,
                problem,
                "a duration only follows within / older_than or goes in an event window, e.g. purchase.count(90d); "
                "write a number, or text in quotes",
            )
        if kind == "QNAME":
            return fail(pos, problem, f'backticks are for names; text values go in double quotes: "{value[1:-1]}"')
        return fail(pos, problem, f"write a value{after}, e.g. {_EXAMPLE}")

    if "DURATION" in expected:
        if kind == "$END":
            return fail(pos, f"missing duration{after}; {problem}", f"write a duration{after}, e.g. 90d")
        m = re.compile(r"-?[0-9A-Za-z_.+\-]+").match(text, pos)
        bad = m.group() if m else value
        if kind in ("NUMBER", "IDENT"):
            return fail(pos, f'bad duration "{bad}"; {problem}', _DURATION_FIX)
        return fail(pos, problem, _DURATION_FIX)

    if {"EQ", "IN", "BETWEEN"} <= expected:
        if kind in ("IDENT", "QNAME") or kind in _KEYWORD_TERMINALS:
            word = value.strip("`")
            guess = _close(word, _OP_WORDS)
            if guess:
                op = "not in" if guess[0] == "not" else guess[0]
                return fail(pos, f'unknown operator "{value}"; {problem}', f'did you mean "{op}"?')
            return fail(
                pos,
                problem,
                f"write an operator between the name and the value, e.g. {_EXAMPLE}; a name with spaces or "
                "other characters goes in backticks, e.g. `first name`",
            )
        if kind == "DOT":
            return fail(
                pos,
                problem,
                "a field is dotted at most once (attributes.country); a longer name, or an event kind with a dot, "
                "goes in backticks, e.g. `checkout.completed`.count() >= 1",
            )
        if kind == "$END":
            return fail(pos, f"the rule ends{after}; {problem}", f"complete the comparison, e.g. {_EXAMPLE}")
        return fail(pos, f"missing operator; {problem}", f"write an operator before the value, e.g. {_EXAMPLE}")

    if expected == {"IN"}:
        return fail(
            pos,
            f'{problem}: "not" after a name only forms "not in"',
            'to negate another comparison write not in front: not country == "KR"',
        )

    if expected == {"AND"}:
        return fail(pos, f"{problem}: between needs two values joined by and", "write e.g. amount between 10 and 20")

    if {"LPAR", "LSQB"} <= expected and "IDENT" not in expected:
        sample = value if kind in _VALUE_TERMINALS else '"KR", "JP"'
        return fail(pos, problem, f"put the values in parentheses, e.g. in ({sample})")

    if {"IDENT", "NOT", "LPAR"} <= expected:
        if kind == "$END" and not toks:
            return fail(0, "the rule is empty", f"write a condition, e.g. {_EXAMPLE}")
        if kind == "$END":
            return fail(pos, f"the rule ends{after}; {problem}", f"add a condition{after}, e.g. {_EXAMPLE}")
        return fail(pos, problem, f"write a condition here, e.g. {_EXAMPLE}")

    if expected & {"AND", "OR", "$END"}:
        if kind == "IDENT":
            guess = _close(value, ("and", "or"))
            if guess:
                return fail(pos, f"{problem}", f'did you mean "{guess[0]}"?')
        if kind in ("IDENT", "QNAME", "LPAR", "NOT") or kind in _VALUE_TERMINALS:
            return fail(pos, problem, "join conditions with and / or")
        return fail(pos, problem, "end the condition here, or join the next one with and / or")

    if prev is not None and prev.value in ("[", ",") and expected <= {"IDENT", "QNAME"}:
        return fail(
            pos,
            f'expected a filter (a name compared with a value, e.g. category == "shoes"), got {got}',
            'write filters like purchase[category == "shoes", channel == "web"].count(), or leave out the brackets',
        )

    if "DOT" in expected and "RSQB" not in expected:
        return fail(pos, problem, 'after the filters name the aggregate, e.g. purchase[channel == "web"].count(30d)')

    if expected <= {"RPAR", "RANGE"} and prev is not None and prev.kind == "num":
        return fail(pos, problem, 'close the window with ")", e.g. purchase.count(90d) or purchase.count(210d..30d)')
    if expected == {"LPAR"} and prev is not None and prev.kind in ("word", "qname"):
        return fail(pos, problem, f"an aggregate is called with parentheses, e.g. {prev.value}() or {prev.value}(90d)")
    if expected <= {"IDENT", "QNAME"} and prev is not None and prev.value == ".":
        return fail(pos, problem, 'write a name after ".", e.g. attributes.country or purchase.count()')
    if kind == "$END" and brackets.unclosed:
        b = brackets.unclosed[-1]
        line, column = _Lines(text).at(b.start)
        return fail(pos, problem, f'close the "{b.value}" opened at line {line}, column {column}')
    return fail(pos, problem, f"write {want} here")


# ---------------------------------------------------------------------------
# printing
# ---------------------------------------------------------------------------
def to_text(tree: Mapping[str, Any]) -> str:
    """Print a rule tree in the canonical text syntax.

    Accepts the node shapes of ``docs/rules.md`` (dicts or other mappings,
    lists or tuples); raises :class:`ValidationError`, with the path of the
    culprit (``all[2].any[0].op``), for a shape that cannot be printed.
    """
    return _print(tree, "", 0)[0]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _short(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(path: str, value: Any, problem: str, fix: str) -> ValidationError:
    return ValidationError(path or "rule", _short(value), problem, fix)


def _is_seq(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _print(node: Any, path: str, depth: int) -> tuple[str, str]:
    """``node`` as text, and its kind (``all``, ``any``, or ``leaf`` for everything else)."""
    if depth > MAX_DEPTH:
        raise _bad(
            path, None, f"nested more than {MAX_DEPTH} levels deep", "flatten the rule or split it into segments"
        )
    if not isinstance(node, Mapping):
        raise _bad(path, node, "not a condition", 'write an object such as {"field": …} or {"all": […]}')
    keys = [k for k in _NODE_KEYS if k in node]
    if len(keys) != 1:
        found = ", ".join(repr(k) for k in node) or "nothing"
        raise _bad(
            path, node, f"a condition needs exactly one of {', '.join(_NODE_KEYS)} (found {found})", "see docs/rules.md"
        )
    key = keys[0]
    allowed = {
        "field": ("field", "op", "value"),
        "event": ("event", "op", "value"),
        "condition": ("condition", "args"),
    }.get(key, (key,))
    for k in node:
        if k not in allowed:
            raise _bad(
                _join(path, str(k)),
                node[k],
                f"unexpected key {k!r} in a {key!r} condition",
                f"a {key!r} condition has only {', '.join(allowed)}",
            )
    here = _join(path, key)
    if key in ("all", "any"):
        children = node[key]
        if not _is_seq(children) or not children:
            raise _bad(here, children, "not a non-empty list", f'write {{"{key}": [condition, …]}}')
        parts: list[str] = []
        last = ("", "leaf")
        for i, child in enumerate(children):
            last = _print(child, f"{here}[{i}]", depth + 1)
            text, kind = last
            if kind == "any" or (kind == "all" and key == "all"):
                text = f"({text})"
            parts.append(text)
        if len(parts) == 1:  # one child: the node means the child
            return last
        return (" and " if key == "all" else " or ").join(parts), key
    if key == "not":
        text, kind = _print(node["not"], here, depth + 1)
        return (f"not ({text})" if kind in ("all", "any") else f"not {text}"), "leaf"
    if key == "field":
        return _field_name(node["field"], here) + _predicate(node, path), "leaf"
    if key == "event":
        return _event(node["event"], here) + _predicate(node, path), "leaf"
    if key == "segment":
        return f"segment({_string(node['segment'], here, 'a segment name')})", "leaf"
    if key == "consent":
        channel = node["consent"]
        return f"consent({channel if _plain(channel) else _string(channel, here, 'a channel name')})", "leaf"
    return _condition(node, path), "leaf"


def _plain(name: Any) -> bool:
    return isinstance(name, str) and _IDENT.fullmatch(name) is not None and name.lower() not in KEYWORDS


def _name_text(name: Any, path: str, what: str = "a name") -> str:
    if _plain(name):
        return str(name)
    if not isinstance(name, str) or not name:
        raise _bad(path, name, f"not {what}", "write a non-empty name as text")
    if any(c in name for c in "`\n\r\0"):
        raise _bad(path, name, f"{what} with a backtick, line break or NUL cannot be written in rule text", "rename it")
    return f"`{name}`"


def _field_name(name: Any, path: str) -> str:
    if isinstance(name, str) and name.count(".") == 1:
        a, _, b = name.partition(".")
        if _plain(a) and _plain(b):
            return name
    return _name_text(name, path, "a field name")


def _string(value: Any, path: str, what: str) -> str:
    if not isinstance(value, str):
        raise _bad(path, value, f"not {what}", "write it as text")
    return json.dumps(value, ensure_ascii=False)


def _scalar_text(value: Any, path: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # more digits than str() converts
            raise _bad(path, "<huge int>", "a number with too many digits", "write a smaller number") from None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _bad(path, value, "not a finite number", "write a finite number")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        raise _bad(path, value, "rule text has no null", 'to test for a missing value use {"op": "exists"} under "not"')
    raise _bad(path, value, "not a value", "write text, a number, true or false")


def _list_text(value: Any, path: str) -> str:
    if not _is_seq(value):
        raise _bad(path, value, "not a list", 'write a list of values, e.g. ["KR", "JP"]')
    return "(" + ", ".join(_scalar_text(v, f"{path}[{i}]") for i, v in enumerate(value)) + ")"


def _duration_text(value: Any, path: str, pattern: re.Pattern[str] = _DURATION) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        example = "'90d' or '210d..30d'" if pattern is _WINDOW else "'90d'"
        raise _bad(path, value, "not a duration", f"{_DURATION_FIX.replace('e.g. 90d', 'e.g. ' + example)}")
    return value


def _predicate(node: Mapping[str, Any], path: str) -> str:
    """`` op value`` of a comparison or filter node."""
    op = node.get("op")
    opath, vpath = _join(path, "op"), _join(path, "value")
    if not isinstance(op, str) or op not in OP_TEXT:
        guess = _close(str(op), tuple(OP_TEXT))
        hint = f'did you mean "{guess[0]}"? ' if guess else ""
        raise _bad(opath, op, f"unknown operator {op!r}", f"{hint}use one of {', '.join(OP_TEXT)}")
    if op == "exists":
        if node.get("value") is not None:
            raise _bad(vpath, node["value"], "'exists' takes no value", "remove the value")
        return " exists"
    if "value" not in node:
        raise _bad(vpath, None, f"{op!r} needs a value", "add a value")
    value = node["value"]
    if op in ("in", "not_in"):
        return f" {OP_TEXT[op]} {_list_text(value, vpath)}"
    if op == "between":
        if not _is_seq(value) or len(value) != 2:
            raise _bad(vpath, value, "'between' needs a list of two values", "write [low, high]")
        return f" between {_scalar_text(value[0], vpath + '[0]')} and {_scalar_text(value[1], vpath + '[1]')}"
    if op in ("within", "older_than"):
        return f" {op} {_duration_text(value, vpath)}"
    return f" {OP_TEXT[op]} {_scalar_text(value, vpath)}"


def _event(ev: Any, path: str) -> str:
    if not isinstance(ev, Mapping):
        raise _bad(path, ev, "not an event description", 'write {"kind": "purchase", "agg": "count"}')
    for k in ev:
        if k not in ("kind", "agg", "window", "where"):
            raise _bad(_join(path, str(k)), ev[k], f"unexpected key {k!r}", "an event has kind, agg, window, where")
    kind = _name_text(ev.get("kind"), _join(path, "kind"), "an interaction kind")
    agg = ev.get("agg")
    if agg not in AGGS:
        guess = _close(str(agg), AGGS)
        hint = f'did you mean "{guess[0]}"? ' if guess else ""
        raise _bad(_join(path, "agg"), agg, f"unknown aggregate {agg!r}", f"{hint}use one of {', '.join(AGGS)}")
    window = ev.get("window")
    window_text = "" if window is None else _duration_text(window, _join(path, "window"), _WINDOW)
    where = ev.get("where")
    filters = ""
    if where is not None:
        wpath = _join(path, "where")
        if not _is_seq(where):
            raise _bad(
                wpath, where, "not a list of filters", 'write [{"field": "channel", "op": "eq", "value": "web"}]'
            )
        parts = []
        for i, f in enumerate(where):
            fpath = f"{wpath}[{i}]"
            if not isinstance(f, Mapping) or "field" not in f:
                raise _bad(fpath, f, "not a filter", 'write {"field": "category", "op": "eq", "value": "shoes"}')
            for k in f:
                if k not in ("field", "op", "value"):
                    raise _bad(
                        _join(fpath, str(k)), f[k], f"unexpected key {k!r} in a filter", "a filter has field, op, value"
                    )
            parts.append(_field_name(f["field"], _join(fpath, "field")) + _predicate(f, fpath))
        if parts:
            filters = "[" + ", ".join(parts) + "]"
    return f"{kind}{filters}.{agg}({window_text})"


def _condition(node: Mapping[str, Any], path: str) -> str:
    here = _join(path, "condition")
    name = node["condition"]
    if name in _BUILTIN_CALLS:
        head = f"`{name}`"  # a plain segment(...)/consent(...) is the built-in condition
    else:
        head = _name_text(name, here, "a condition name")
    args = node.get("args")
    apath = _join(path, "args")
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise _bad(apath, args, "not an object", 'write args as an object, e.g. {"min": 4}')
    parts = []
    for key, value in args.items():
        kpath = _join(apath, str(key))
        text = _list_text(value, kpath) if _is_seq(value) else _scalar_text(value, kpath)
        parts.append(f"{_name_text(key, kpath, 'an argument name')}={text}")
    return f"{head}({', '.join(parts)})"
