"""JSON request bodies are decoded strictly, as their OpenAPI schema says.

Litestar converts a decoded body into the handler's struct with
``msgspec.convert(..., strict=False)``, which also takes ``"true"`` or ``1``
for a boolean, ``"12"`` for an integer and a number for a date-time: more
than the schema admits.  Before the handler runs, the raw body is decoded
once more into the same struct with msgspec's strict JSON decoder, so the
server admits exactly what the declarations (and so the schema generated
from them, :mod:`ecrm_api.openapi`) admit.  The text rule of
:data:`~ecrm_api.types.TEXT_PATTERN` (no NUL, in keys and values at any
depth) and the 64-bit integer range are checked on the same pass.

A body that is not JSON at all is left to Litestar's own error.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from ecrm_core.errors import ValidationError
from litestar import Request
from litestar.exceptions import ValidationException

__all__ = ["check_body"]

_AT = re.compile(r" - at `\$\.?(.*)`$")
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


async def check_body(request: Request[Any, Any, Any], struct: type[msgspec.Struct]) -> None:
    """Raise the 400 (type) or 422 (text, integer range) a body that the schema refuses deserves."""
    raw = await request.body()
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return  # not JSON: Litestar answers it
    try:
        # JSON Schema's "integer" admits 2.0: so does the server (strict otherwise).
        msgspec.convert(_integral(doc), struct, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        found = _AT.search(message)
        key = found.group(1) if found else ""
        problem = message[: found.start()] if found else message
        raise ValidationException(
            detail=f"body{'.' + key if key else ''}: {problem}",
            extra=[{"key": key, "message": problem, "source": "body"}],
        ) from None
    # A batch lists each bad item itself (one bad item must not hide the others).
    if getattr(struct, "per_item_errors", False):
        return
    if b"\\u0000" in raw or _has_big_int(raw):
        _check_values(doc)


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


def _check_values(doc: Any) -> None:
    stack: list[tuple[Any, str]] = [(doc, "body")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                raise ValidationError(path, "<text>", "contains a NUL character", "remove the \\u0000 characters")
        elif isinstance(node, bool):
            continue
        elif isinstance(node, int):
            if not _INT_MIN <= node <= _INT_MAX:
                raise ValidationError(path, node, "integer out of 64-bit range", "send it as a string")
        elif isinstance(node, dict):
            for k, v in node.items():
                if "\x00" in k:
                    raise ValidationError(
                        path, "<key>", "a key contains a NUL character", "remove the \\u0000 characters"
                    )
                stack.append((v, f"{path}.{k}"))
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node))
