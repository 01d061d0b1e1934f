"""Syntax errors: lark's exception turned into a :class:`~.syntax.RuleSyntaxError` in human words."""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

from .lexer import _Brackets, _scan, _Tok
from .syntax import (
    _DURATION_FIX,
    _EXAMPLE,
    _OPERATORS_HUMAN,
    _SYMBOL_OPS,
    KEYWORDS,
    RuleSyntaxError,
    _close,
    _error,
    _Lines,
)

if TYPE_CHECKING:  # pragma: no cover
    from lark.exceptions import UnexpectedInput

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
