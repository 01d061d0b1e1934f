"""What may be stored and shown: addresses and content checked, texts from plugins and
providers made safe (control, surrogate and bidi characters escaped, lengths bounded)."""

from __future__ import annotations

import builtins
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from ...channels import (
    Content,
    DeliveryResult,
)


def _short(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _unsafe_char(ch: str) -> bool:
    """Control characters, lone surrogates, line/paragraph separators and bidi
    controls: never stored verbatim in a reason or a log line."""
    cat = unicodedata.category(ch)
    return cat in ("Cc", "Cs", "Zl", "Zp") or (cat == "Cf" and ch in _BIDI)


_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

#: Exactly the characters of :func:`_unsafe_char` (Cc is U+0000-001F and U+007F-009F, Cs the
#: surrogates, Zl U+2028, Zp U+2029, then the bidi controls) as one pattern: a whole string is
#: checked in C instead of a Unicode lookup per character (tests/test_messages_safety.py proves
#: the two agree on every code point).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    return m.group().encode("unicode_escape").decode("ascii")


def _clean(text: Any, limit: int) -> str:
    """``text`` safe to store and show: unsafe characters escaped (``\\n``,
    ``\\x00``, ``\\u202e``), at most ``limit`` characters."""
    raw = str(text)[: limit * 2]
    out = _UNSAFE.sub(_escape, raw) if _UNSAFE.search(raw) else raw
    return _short(out, limit) or ""


def _clean_opt(text: Any, limit: int) -> str | None:
    return None if text is None else _clean(text, limit)


def _is_safe(text: Any, limit: int, *, optional: bool = True) -> bool:
    """Whether :func:`_clean` would return ``text`` unchanged (``None`` too, when ``optional``)."""
    if text is None:
        return optional
    return type(text) is str and len(text) <= limit and _UNSAFE.search(text) is None


def _safe_result(res: DeliveryResult) -> DeliveryResult:
    """``res`` with its texts safe to store (a provider's reason may hold
    anything; one unstorable reason must not lose the whole batch's outcomes)."""
    if _is_safe(res.provider_id, 500) and _is_safe(res.code, 100) and _is_safe(res.reason, 1000, optional=False):
        return res  # already safe (the usual case): no copy
    import attrs

    return attrs.evolve(
        res,
        provider_id=_clean_opt(res.provider_id, 500),
        code=_clean_opt(res.code, 100),
        reason=_clean(res.reason or "", 1000),
    )


def _plausible_uid(value: Any) -> bool:
    """Could ``value`` be a message id (never look up what cannot be one)?"""
    return isinstance(value, str) and 0 < len(value) <= 64 and value.isascii() and value.isprintable()


def _address_problem(address: Any) -> str | None:
    """Why ``address`` (from ``Channel.address``) cannot be stored or used, or ``None``."""
    if not isinstance(address, str):
        return f"address() returned {type(address).__name__}, not a string"
    if len(address) > 320:
        return f"the address is {len(address)} characters long; at most 320 are stored"
    if _UNSAFE.search(address):
        return "the address contains control, surrogate or bidi characters"
    return None


def _content_problem(content: Any) -> str | None:
    """Why rendered ``content`` cannot be stored or sent, or ``None``."""
    if not isinstance(content, Content):
        return f"the channel rendered {type(content).__name__}, not Content"
    parts: builtins.list[tuple[str, Any, bool]] = [
        ("body", content.body, False),
        ("subject", content.subject, True),
        ("html", content.html, False),
    ]
    if not isinstance(content.headers, Mapping):
        return "content.headers is not a mapping"
    for name, value in content.headers.items():
        parts.append((f"headers[{name!r}]", name, True))
        parts.append((f"headers[{name!r}]", value, True))
    for where, value, one_line in parts:
        if value is None and where not in ("body",):
            continue
        if not isinstance(value, str):
            return f"content.{where} is {type(value).__name__}, not a string"
        if "\x00" in value:
            return f"content.{where} contains NUL"
        if not value.isascii():  # (ASCII text cannot hold a lone surrogate)
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"content.{where} contains lone surrogates (not valid Unicode text)"
        if one_line and ("\r" in value or "\n" in value):
            return f"content.{where} has a line break"
    return None
