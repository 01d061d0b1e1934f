"""Parsing rule text into the JSON tree: the LALR grammar (``grammar.lark``), built on first use."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from ..errors import ValidationError
from .diagnostics import _translate
from .lexer import _precheck
from .syntax import _BUILTIN_CALLS, _DURATION_FIX, _EXAMPLE, _SYMBOL_OPS, AGGS, RuleSyntaxError, _close, _error, _Lines

if TYPE_CHECKING:  # pragma: no cover
    from lark import Lark, Token, Tree


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
    """The LALR parser and the transformer class, built once on first use.

    Building the LALR tables takes ~0.1 s, in every process that reads a
    rule (a CLI command, a worker's first refresh).  They are kept in a
    cache file that lark checks against the grammar's hash and its own
    version, and rebuilds when it does not match or cannot be read
    (:func:`_tables_cache`); ``ECRM_RULES_CACHE=0`` turns it off."""
    from lark import Lark

    grammar = Path(__file__).with_name("grammar.lark").read_text(encoding="utf-8")
    parser = Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
        cache=_tables_cache(),
    )
    return parser, _transformer_class()


def _tables_cache() -> str | bool:
    """Where the parser's tables are cached: a file in a directory only this
    user can write (``$XDG_CACHE_HOME/ecrm`` or ``~/.cache/ecrm``, created
    with mode 0700); ``False`` (no cache) when there is none, when that
    directory is another user's or writable by others (lark reads the file
    with pickle, so nobody else may be able to write it), on systems without
    POSIX owners, or when ``ECRM_RULES_CACHE`` is ``0``."""
    import os

    if os.environ.get("ECRM_RULES_CACHE", "1") == "0" or not hasattr(os, "getuid"):
        return False
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "ecrm")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.stat(folder, follow_symlinks=False)
    except OSError:
        return False
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return False
    import lark

    return os.path.join(folder, f"rules-lalr-lark{lark.__version__}.cache")


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
