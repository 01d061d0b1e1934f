"""A light tokenizer for rule text: the depth and bracket guard before parsing, and the
tokens that error messages point at."""

from __future__ import annotations

import re
from typing import NamedTuple

from .limits import MAX_DEPTH
from .syntax import MAX_LENGTH, _error


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
