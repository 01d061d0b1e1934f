"""What the customer service's parts share: field sets, limits, result types, argument helpers."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import sqlalchemy as sa

from ...domain import CUSTOMER_WRITABLE, Alias, Consent, Customer
from ...errors import RowError, ValidationError
from ...validation import thaw

#: Customer fields that are also identity aliases (kind of alias per field).
IDENTITY_FIELDS = {"external_id": "external", "email": "email", "phone": "phone"}
_UPSERT_KEYS = set(CUSTOMER_WRITABLE) | {"aliases"}
#: How often a bulk upsert batch is retried after losing a race to another
#: transaction (PostgreSQL and other backends with concurrent writers).
_RACE_RETRIES = 5
#: SQLSTATEs of losing such a race: unique_violation, deadlock_detected,
#: serialization_failure.
_RACE_STATES = frozenset({"23505", "40P01", "40001"})


#: Fields :meth:`Customers.search` sorts on (``-field``: descending).  A
#: whitelist: nothing else reaches an ORDER BY.
SEARCH_SORTS = ("id", "created_at", "updated_at", "name", "email")
_NULLABLE_SORTS = frozenset({"name", "email"})
_MAX_SEARCH_LIMIT = 1000


def _lost_race(exc: sa.exc.DBAPIError) -> bool:
    """Whether a database error means another transaction got there first."""
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state in _RACE_STATES


@attrs.frozen
class UpsertResult:
    """What a bulk upsert did: ids created and updated, rows rejected."""

    created: tuple[int, ...]
    updated: tuple[int, ...]
    errors: tuple[RowError, ...]


@attrs.frozen
class CustomerPage:
    """One page of :meth:`Customers.search`.

    ``next_after`` is the position after the last item — pass it back as
    ``after=`` for the next page — or ``None`` on the last page.  It is plain
    JSON data (``[sort value, id]``, datetimes as ISO 8601 text), so an API
    layer can sign it into an opaque cursor.
    """

    items: tuple[Customer, ...]
    next_after: tuple[Any, ...] | None


def _unknown(fields: Iterable[str], allowed: Iterable[str], where: str = "") -> None:
    allowed = list(allowed)
    for name in fields:
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValidationError(f"{where}{name}", name, "unknown field", f"{hint}known fields: {', '.join(allowed)}")


def _aliases(value: Any) -> list[Alias]:
    """``aliases=`` as given by a caller: Alias objects or (kind, value) pairs."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise ValidationError("aliases", value, "not a list", "send a list of Alias objects or (kind, value) pairs")
    out = []
    for i, al in enumerate(value):
        if isinstance(al, Alias):
            out.append(al)
        elif isinstance(al, (list, tuple)) and len(al) == 2:
            out.append(Alias(*al))
        else:
            raise ValidationError(f"aliases[{i}]", al, "not a kind/value pair", "send e.g. ('anonymous', 'cookie-123')")
    return out


def _consent_json(consent: Mapping[str, Consent]) -> dict[str, Any]:
    return {
        ch: {"status": c.status, "at": c.at.isoformat() if c.at else None, "source": c.source}
        for ch, c in consent.items()
    }


def _merge_patch(current: Mapping[str, Any], patch: Mapping[str, Any] | None) -> dict[str, Any]:
    """Shallow JSON merge patch (RFC 7396): keys in ``patch`` win; ``None`` deletes."""
    out = thaw(current)
    for key, value in (patch or {}).items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out  # type: ignore[no-any-return]
