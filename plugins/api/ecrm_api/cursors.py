"""Opaque, signed pagination cursors.

A cursor is the position after the last item of a page (e.g. the sort
value and id of the last row), encoded as URL-safe base64 of JSON and signed
with HMAC-SHA256 under the app's secret (:attr:`ApiConfig.secret`), bound to
the workspace and to what it pages through.  A cursor that was altered,
made for another workspace or listing, or is not a cursor at all is
refused with a 400 problem naming ``query.cursor`` — never decoded into SQL.
(:func:`decode_cursor` raises :class:`ValidationError`; the API answers it
with 400, as a malformed parameter, not 422.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ecrm_core.errors import ValidationError

from .problems import problem

__all__ = ["encode_cursor", "decode_cursor", "keyed_page"]

T = TypeVar("T")

_SIG = 16  # bytes of the HMAC kept (128 bits)


def _mac(secret: bytes, scope: str, payload: bytes) -> bytes:
    return hmac.new(secret, scope.encode() + b"\x00" + payload, hashlib.sha256).digest()[:_SIG]


def encode_cursor(secret: bytes, scope: str, position: Any) -> str:
    """Sign ``position`` (JSON-serialisable) for ``scope`` (e.g. ``"default:customers:created_at"``)."""
    payload = json.dumps(position, separators=(",", ":"), default=str).encode()
    token = payload + _mac(secret, scope, payload)
    return base64.urlsafe_b64encode(token).decode().rstrip("=")


def decode_cursor(secret: bytes, scope: str, cursor: str, field: str = "query.cursor") -> Any:
    """The position in ``cursor``; a 400 problem naming ``field`` if it is not one of ours for ``scope``."""
    try:
        return _decode(secret, scope, cursor, field)
    except ValidationError as exc:
        raise problem(
            400,
            "invalid-request",
            "Invalid request",
            str(exc),
            errors=[{"field": exc.field, "problem": exc.problem, "fix": exc.fix}],
        ) from None


def _decode(secret: bytes, scope: str, cursor: str, field: str) -> Any:
    fix = "send back the `next_cursor` of the previous page unchanged, or omit it for the first page"
    if not isinstance(cursor, str) or not cursor or len(cursor) > 2000:
        raise ValidationError(field, cursor, "not a cursor", fix)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise ValidationError(field, cursor, "not a cursor", fix) from None
    payload, sig = raw[:-_SIG], raw[-_SIG:]
    if len(raw) <= _SIG or not hmac.compare_digest(sig, _mac(secret, scope, payload)):
        raise ValidationError(field, cursor, "cursor is forged, altered or from another listing", fix)
    return json.loads(payload)


def keyed_page(
    items: Iterable[T], key: Callable[[T], str], limit: int, after: str | None
) -> tuple[list[T], str | None]:
    """A page of a small listing by a unique name (segments by slug, campaigns
    by key): the first ``limit`` of ``items`` whose ``key`` sorts after
    ``after``, in ``key`` order, and the ``key`` to pass as ``after`` for the
    next page (``None`` on the last)."""
    found = sorted((i for i in items if after is None or key(i) > after), key=key)
    page = found[:limit]
    return page, key(page[-1]) if len(found) > limit else None
