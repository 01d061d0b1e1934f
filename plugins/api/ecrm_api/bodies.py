"""JSON request bodies are decoded strictly, as their OpenAPI schema says.

Litestar converts a decoded body into the handler's struct with
``msgspec.convert(..., strict=False)``, which also takes ``"true"`` or ``1``
for a boolean, ``"12"`` for an integer and a number for a date-time: more
than the schema admits.  Before the handler runs, the raw body is decoded
once more into the same struct with msgspec's strict JSON decoder, so the
server admits exactly what the declarations (and so the schema generated
from them, :mod:`ecrm_api.openapi`) admit.  The core's value rules
(:func:`ecrm_core.validation.check_json` without its size limits: the
characters of :data:`~ecrm_core.validation.TEXT_PATTERN` in text and keys at
any depth, 64-bit integers) are checked on the same pass, with the core's
messages and paths.

A body that is not JSON at all is left to Litestar's own error.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from ecrm_core.validation import check_json
from litestar import Request
from litestar.exceptions import ValidationException

__all__ = ["check_body", "convert_strictly", "StrictError"]

_S = TypeVar("_S", bound=msgspec.Struct)
_AT = re.compile(r" - at `\$\.?(.*)`$")


class StrictError(Exception):
    """A value that does not decode strictly: ``key`` is its path (``customer_id``, ``a[0].b``; "" for the value)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


def convert_strictly(value: Any, struct: type[_S]) -> _S:
    """``value`` (decoded JSON) as ``struct``, as strictly as a body is decoded (or :class:`StrictError`)."""
    try:
        return msgspec.convert(_integral(value), struct, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        found = _AT.search(message)
        raise StrictError(found.group(1) if found else "", message[: found.start()] if found else message) from None


async def check_body(request: Request[Any, Any, Any], struct: type[msgspec.Struct]) -> None:
    """Raise the 400 (type) or 422 (text, integer range) a body that the schema refuses deserves."""
    raw = await request.body()
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return  # not JSON: Litestar answers it
    try:
        # JSON Schema's "integer" admits 2.0: so does the server (strict otherwise).
        convert_strictly(doc, struct)
    except StrictError as exc:
        key, problem = exc.key, exc.problem
        raise ValidationException(
            detail=f"body{'.' + key if key else ''}: {problem}",
            extra=[{"key": key, "message": problem, "source": "body"}],
        ) from None
    # A batch lists each bad item itself (one bad item must not hide the others).
    if getattr(struct, "per_item_errors", False):
        return
    # Only an escape can carry a control character or a lone surrogate into
    # JSON text, and a 64-bit integer has at most 19 digits.
    if b"\\" in raw or _has_big_int(raw):
        check_json(doc, "body", limits=False)


def _integral(node: Any) -> Any:
    """``node`` with every float that has no fraction as an int (JSON Schema's view of integers)."""
    if type(node) is float:
        return int(node) if node.is_integer() else node
    if type(node) is list:
        return [_integral(v) for v in node]
    if type(node) is dict:
        return {k: _integral(v) for k, v in node.items()}
    return node


def _has_big_int(raw: bytes) -> bool:
    # A JSON integer needs 19 digits to leave the 64-bit range.
    return re.search(rb"[0-9]{19}", raw) is not None
