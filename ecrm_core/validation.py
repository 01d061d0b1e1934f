"""Value checks shared by the domain classes and the bulk paths.

Each function takes the value and the name of the field it came from, returns
the normalised value, and raises :class:`~ecrm_core.errors.ValidationError`
naming the field, the value and the fix.  The attrs domain classes call these
from their converters; the bulk paths (``track_many``, imports) call the same
functions on plain dicts, so there is one definition of "valid".
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from .errors import ValidationError

__all__ = [
    "MAX_PROPERTIES_BYTES",
    "normalize_email",
    "normalize_phone",
    "aware_datetime",
    "optional_datetime",
    "check_amount",
    "check_currency",
    "properties_json",
    "check_slug",
    "check_key",
    "check_text",
    "check_timezone",
    "freeze",
]

#: Largest accepted JSON encoding of an interaction's or customer's free-form
#: properties/attributes, in bytes.  Bigger blobs belong in the host's store.
MAX_PROPERTIES_BYTES = 16 * 1024

_MIN_YEAR, _MAX_YEAR = 1900, 2200
# Amounts must round-trip exactly through every backend, SQLite's REAL
# included (15 significant digits): at most 4 decimals, below 10^11.
_MAX_AMOUNT = Decimal("1e11")
_AMOUNT_DECIMALS = 4
_SLUG = re.compile(r"^[a-z][a-z0-9_]*(?:[.:-][a-z0-9_]+)*$")


def normalize_email(value: Any, field: str = "email") -> str:
    """Return the normalised address (lower-cased domain) or raise."""
    if not isinstance(value, str):
        raise ValidationError(field, value, "not a string", "send an e-mail address as text")
    from email_validator import EmailNotValidError, validate_email

    try:
        info = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValidationError(
            field, value, f"not a valid e-mail address: {exc}", "send an address like name@example.com"
        ) from None
    return str(info.normalized).lower()


def normalize_phone(value: Any, field: str = "phone", region: str | None = None) -> str:
    """Return the number in E.164 (``+821012345678``) or raise.

    Numbers without a leading ``+`` need ``region`` (an ISO 3166 code).
    """
    if not isinstance(value, str):
        raise ValidationError(field, value, "not a string", "send the phone number as text, e.g. '+82 10 1234 5678'")
    import phonenumbers

    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise ValidationError(
            field,
            value,
            f"not a phone number ({exc})",
            "send it in international form with a leading '+' and country code",
        ) from None
    if not phonenumbers.is_valid_number(number):
        raise ValidationError(
            field, value, "not a valid phone number for its country", "check the digits and the country code"
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def aware_datetime(value: Any, field: str) -> datetime:
    """Return ``value`` as a timezone-aware datetime in UTC.

    Accepts aware :class:`~datetime.datetime` objects and ISO 8601 strings
    with an offset (``2024-05-01T12:00:00+09:00`` or ``...Z``).  Naive values
    are rejected: ecrm never guesses a timezone.
    """
    if type(value) is datetime and value.tzinfo is UTC and _MIN_YEAR <= value.year <= _MAX_YEAR:
        return value  # the common case on bulk paths: already aware UTC
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise ValidationError(
                field, value, "not an ISO 8601 timestamp", "send e.g. '2024-05-01T12:00:00+09:00'"
            ) from None
        value = parsed
    elif isinstance(value, date) and not isinstance(value, datetime):
        raise ValidationError(field, value, "a date, not a datetime", "send a datetime with a timezone")
    if not isinstance(value, datetime):
        raise ValidationError(field, value, "not a datetime", "send an aware datetime or an ISO 8601 string")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValidationError(
            field,
            value,
            "naive datetime (no timezone)",
            "attach a timezone, e.g. datetime.now(timezone.utc), or add an offset such as '+00:00'",
        )
    if not (_MIN_YEAR <= value.year <= _MAX_YEAR):
        raise ValidationError(field, value, f"year outside {_MIN_YEAR}..{_MAX_YEAR}", "check the clock that made it")
    return value.astimezone(UTC)


def optional_datetime(value: Any, field: str) -> datetime | None:
    return None if value is None else aware_datetime(value, field)


def check_amount(value: Any, field: str = "amount") -> Decimal:
    """Return the amount as a finite :class:`~decimal.Decimal` or raise."""
    if isinstance(value, bool):
        raise ValidationError(field, value, "a boolean is not an amount", "send a number such as 12.50")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(field, value, "not a finite number", "send a real amount such as 12.50")
        result = Decimal(repr(value))
    elif isinstance(value, (int, Decimal)):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValidationError(field, value, "not a number", "send a number such as 12.50") from None
    else:
        raise ValidationError(field, value, "not a number", "send a number such as 12.50")
    if not result.is_finite():
        raise ValidationError(field, value, "not a finite number", "send a real amount such as 12.50")
    if abs(result) >= _MAX_AMOUNT:
        raise ValidationError(field, value, "amount too large", "send amounts below 10^11")
    exponent = result.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -_AMOUNT_DECIMALS and result != result.quantize(Decimal("1e-4")):
        raise ValidationError(
            field, value, f"more than {_AMOUNT_DECIMALS} decimal places", "round the amount to at most 4 decimals"
        )
    return result


@lru_cache(maxsize=1)
def _currencies() -> frozenset[str]:
    import pycountry

    return frozenset(c.alpha_3 for c in pycountry.currencies)


def check_currency(value: Any, field: str = "currency") -> str:
    """Return the upper-cased ISO 4217 code or raise."""
    if not isinstance(value, str) or value.upper() not in _currencies():
        raise ValidationError(
            field, value, "unknown currency code", "send an ISO 4217 code such as 'USD', 'EUR' or 'KRW'"
        )
    return value.upper()


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):  # frozen mappings of domain objects
        return dict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# One encoder for every call: json.dumps with options builds a new one each time.
_ENCODER = json.JSONEncoder(
    separators=(",", ":"),
    sort_keys=True,
    allow_nan=False,
    ensure_ascii=False,
    check_circular=False,  # a cycle or absurd nesting ends in RecursionError, reported as a ValidationError
    default=_json_default,
)


def _make_encode() -> Callable[[Any], str]:
    """``_ENCODER.encode`` without its per-call set-up (a new C encoder per call).

    The C encoder ``JSONEncoder.encode`` itself builds for a mapping, built
    once with the same options: the same text, errors and exceptions.
    """
    from json import encoder

    make = getattr(encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - Python without the _json accelerator
        return _ENCODER.encode
    e = _ENCODER
    chunks = make(
        None,  # markers: no circular check
        e.default,
        encoder.encode_basestring,  # ensure_ascii=False
        e.indent,
        e.key_separator,
        e.item_separator,
        e.sort_keys,
        e.skipkeys,
        e.allow_nan,
    )
    join = "".join

    def encode(value: Any) -> str:
        return join(chunks(value, 0))  # type: ignore[no-any-return]

    return encode


_encode_mapping = _make_encode()


def properties_json(value: Any, field: str = "properties", limit: int = MAX_PROPERTIES_BYTES) -> str:
    """Return the canonical JSON text of a properties mapping, or raise.

    Keys must be strings, values JSON types (no NaN/Infinity), and the
    encoding at most ``limit`` bytes.
    """
    if type(value) is not dict:  # a plain dict: no ABC check
        if value is None:
            return "{}"
        if not isinstance(value, Mapping):
            raise ValidationError(field, value, "not a mapping", "send an object of key/value pairs")
    elif not value:
        return "{}"
    try:
        text = _encode_mapping(value)
    except RecursionError:
        raise ValidationError(
            field,
            "<cyclic or nested too deeply>",
            "not JSON-serialisable (cyclic or nested too deeply)",
            "send flat data",
        ) from None
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            field,
            value,
            f"not JSON-serialisable ({exc})",
            "use strings, numbers, booleans, null, lists and objects only",
        ) from None
    if len(text) > limit and len(text.encode()) > limit:
        raise ValidationError(
            field,
            f"<{len(text.encode())} bytes>",
            f"larger than {limit} bytes",
            "store big payloads elsewhere and keep a reference",
        )
    return text


def check_slug(value: Any, field: str, what: str = "name") -> str:
    """Lower-case identifiers: ``purchase``, ``email_open``, ``external:erp``."""
    if not isinstance(value, str) or not _SLUG.match(value) or len(value) > 64:
        raise ValidationError(
            field,
            value,
            f"not a valid {what}",
            "use lower-case letters, digits and '_' (max 64 chars), e.g. 'page_view'",
        )
    return value


def check_key(value: Any, field: str = "idempotency_key") -> str:
    if not isinstance(value, str) or not (1 <= len(value) <= 200) or not value.isprintable():
        raise ValidationError(field, value, "not a valid key", "send 1 to 200 printable characters, e.g. a UUID")
    return value


def check_text(value: Any, field: str, max_length: int = 500) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, value, "not a string", "send text")
    if len(value) > max_length or "\x00" in value:
        raise ValidationError(
            field, value, f"longer than {max_length} characters or contains NUL", "send shorter, plain text"
        )
    return value


def check_timezone(value: Any, field: str = "timezone") -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(value, str):
        raise ValidationError(field, value, "not a string", "send an IANA zone name such as 'Asia/Seoul'")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(field, value, "unknown timezone", "send an IANA zone name such as 'Asia/Seoul'") from None
    return value


def freeze(value: Any) -> Any:
    """Deep-copy JSON data into read-only mappings and tuples."""
    from types import MappingProxyType

    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The inverse of :func:`freeze`: plain dicts and lists (for JSON)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value
