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
    "MAX_JSON_DEPTH",
    "MAX_JSON_KEYS",
    "MAX_KEY_LENGTH",
    "MIN_INT",
    "MAX_INT",
    "MIN_YEAR",
    "MAX_YEAR",
    "SLUG_PATTERN",
    "MAX_SLUG_LENGTH",
    "currencies",
    "TEXT_PATTERN",
    "KEY_PATTERN",
    "check_json",
    "check_string",
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
#: Deepest nesting of objects and lists accepted in free-form JSON data
#: (``{"a": {"b": 1}}`` is 2 deep).
MAX_JSON_DEPTH = 32
#: Most keys accepted in one free-form JSON value, counted at every level.
MAX_JSON_KEYS = 1000
#: Longest key (in characters) accepted in free-form JSON data.
MAX_KEY_LENGTH = 256
#: Integers in free-form JSON data must fit a signed 64-bit integer (what
#: PostgreSQL's ``jsonb`` numbers compare exactly and SQLite's JSON functions
#: read back as integers).  Bigger numbers belong in strings.
MIN_INT, MAX_INT = -(2**63), 2**63 - 1

#: Years accepted in a time (a time outside is a clock or unit mistake).
MIN_YEAR, MAX_YEAR = 1900, 2200
_MIN_YEAR, _MAX_YEAR = MIN_YEAR, MAX_YEAR
# Amounts must round-trip exactly through every backend, SQLite's REAL
# included (15 significant digits): at most 4 decimals, below 10^11.
_MAX_AMOUNT = Decimal("1e11")
_AMOUNT_DECIMALS = 4
#: A slug (interaction kinds, channels, stages, offer codes): ``purchase``,
#: ``email_open``, ``external:erp``; at most :data:`MAX_SLUG_LENGTH` characters.
SLUG_PATTERN = r"^[a-z][a-z0-9_]*(?:[.:-][a-z0-9_]+)*$"
MAX_SLUG_LENGTH = 64
_SLUG = re.compile(SLUG_PATTERN)


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
def currencies() -> frozenset[str]:
    """The ISO 4217 codes :func:`check_currency` accepts (upper case; it also takes them in lower case)."""
    import pycountry

    return frozenset(c.alpha_3 for c in pycountry.currencies)


def check_currency(value: Any, field: str = "currency") -> str:
    """Return the upper-cased ISO 4217 code or raise."""
    if not isinstance(value, str) or value.upper() not in currencies():
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


# C0 control characters a text value may not hold (tab, line feed and
# carriage return are text); a key may hold none of them.
_VALUE_CONTROLS = r"\x00-\x08\x0b\x0c\x0e-\x1f"
_KEY_CONTROLS = r"\x00-\x1f"
_SURROGATES = r"\ud800-\udfff"
#: What :func:`check_string` admits, as a regular expression (the same in
#: Python and ECMAScript): no C0 control character but tab, line feed and
#: carriage return.  (It also refuses a lone surrogate, which is not Unicode
#: text: a pattern, read over Unicode strings, has nothing to say about it.)
TEXT_PATTERN = f"^[^{_VALUE_CONTROLS}]*$"
#: What a key of free-form JSON data may hold (no control character at all).
KEY_PATTERN = f"^[^{_KEY_CONTROLS}]*$"
_BAD_VALUE_CHARS = re.compile(f"[{_VALUE_CONTROLS}]")
_BAD_KEY_CHARS = re.compile(f"[{_KEY_CONTROLS}]")
_SURROGATE = re.compile(f"[{_SURROGATES}]")
_PLAIN_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$-]{0,63}")
# In canonical JSON text (see properties_json): an integer of 19 or more
# digits (maybe beyond 64 bits; a float's repr has at most 17 digits).  The
# encoder writes numbers in ASCII digits: re.ASCII (twice as fast a scan; other
# scripts' digits are only ever in strings, which need no walk).
_LONG_DIGITS = re.compile(r"\d{19}", re.ASCII)
# The encoder writes a control character as \u00XX (\b and \f short): such
# an escape after an even run of backslashes is a refused character.
_BAD_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\(?:u00[01][0-9a-f]|[bf])")
# A key holding an escaped tab, line feed or carriage return (allowed in
# values): a string followed by ':' -- a false match only costs the walk.
_KEY_ESCAPE = re.compile(r'"(?:[^"\\]|\\.)*?\\[ntr](?:[^"\\]|\\.)*":')
# A key of more than MAX_KEY_LENGTH characters: as many text units (a
# character, or an escape) between its quotes at least.
_LONG_KEY = re.compile(f'"(?:[^"\\\\]|\\\\.){{{MAX_KEY_LENGTH + 1},}}":')


def _char_problem(text: str, *, key: bool) -> str | None:
    """What is wrong with the characters of ``text`` (``None``: nothing)."""
    bad = (_BAD_KEY_CHARS if key else _BAD_VALUE_CHARS).search(text)
    if bad is not None:
        ch = bad.group()
        return "contains a NUL character" if ch == "\x00" else f"contains the control character U+{ord(ch):04X}"
    if not text.isascii() and _SURROGATE.search(text):
        return "contains a lone surrogate (not valid Unicode)"
    return None


def check_string(value: str, field: str) -> str:
    """Return ``value`` or raise: no NUL or other C0 control character except
    tab, line feed and carriage return, no lone surrogate.

    The policy for every text ecrm stores: PostgreSQL refuses NUL in text and
    ``jsonb``, SQLite's JSON functions stop at it (``"a<NUL>b"`` would match
    ``"a"``), and a lone surrogate is not Unicode (it cannot be encoded as UTF-8).
    """
    problem = _char_problem(value, key=False)
    if problem is not None:
        raise ValidationError(field, value, problem, _CHAR_FIX)
    return value


_CHAR_FIX = "send printable Unicode text (tab, line feed and carriage return are allowed in values, not in keys)"


def _child(path: str, key: str) -> str:
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}"
    # Keys that are not plain names are quoted as JSON (control characters
    # escaped, long keys cut): the path stays one printable line.
    shown = key if len(key) <= 64 else key[:61] + "..."
    return f"{path}[{json.dumps(shown)}]"


#: Longest field path an error names: a deeper path keeps its start and end.
MAX_PATH_LENGTH = 300


def _short_path(path: str) -> str:
    if len(path) <= MAX_PATH_LENGTH:
        return path
    return f"{path[:150]}...{path[-(MAX_PATH_LENGTH - 153) :]}"


def check_json(value: Any, field: str = "properties", *, limits: bool = True) -> None:
    """Raise :class:`~ecrm_core.errors.ValidationError` for the first value of
    free-form JSON data ``value`` that ecrm does not store, naming its path
    (``properties.items[2].sku``).

    The rules, the same for every way data enters (Python API, REST, the
    tracking routes, file imports): objects with string keys, lists, strings,
    booleans, ``null``, integers within :data:`MIN_INT`..:data:`MAX_INT` and
    finite floats; strings and keys as :func:`check_string` says (keys allow no
    control character at all) and keys of at most :data:`MAX_KEY_LENGTH`
    characters; nesting at most :data:`MAX_JSON_DEPTH` deep and at most
    :data:`MAX_JSON_KEYS` keys in all.  (The encoded size is checked by
    :func:`properties_json`.)  Iterative: no nesting can exhaust the stack.

    ``limits=False`` checks the values only (characters, integers, finite
    numbers, string keys), not depth, key count or key length: for a whole
    request body, whose free-form parts are checked again with the limits.
    """
    keys = 0
    stack: list[tuple[Any, str, int]] = [(value, field, 0)]
    while stack:
        node, path, depth = stack.pop()
        kind = type(node)
        if kind is str:
            problem = _char_problem(node, key=False)
            if problem is not None:
                raise ValidationError(_short_path(path), node, problem, _CHAR_FIX)
        elif node is None or kind is bool:
            continue
        elif isinstance(node, int) and not isinstance(node, bool):
            if not MIN_INT <= node <= MAX_INT:
                raise ValidationError(
                    _short_path(path),
                    f"<{len(str(abs(node)))}-digit integer>" if abs(node) > 10**40 else node,
                    "integer outside the signed 64-bit range (-2^63 .. 2^63-1)",
                    "send big numbers as strings",
                )
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise ValidationError(_short_path(path), node, "not a finite number", "send a real number, or null")
        elif isinstance(node, str):  # a str subclass
            stack.append((str(node), path, depth))
        elif isinstance(node, (Mapping, list, tuple)):
            if limits and depth >= MAX_JSON_DEPTH:
                raise ValidationError(
                    _short_path(path),
                    "<nested data>",
                    f"nested deeper than {MAX_JSON_DEPTH} levels",
                    "send flatter data",
                )
            if isinstance(node, Mapping):
                keys += len(node)
                if limits and keys > MAX_JSON_KEYS:
                    raise ValidationError(
                        field, f"<{keys}+ keys>", f"more than {MAX_JSON_KEYS} keys in all", "send fewer keys"
                    )
                children = []
                for k, v in node.items():
                    if not isinstance(k, str):
                        raise ValidationError(
                            f"{_short_path(path)}[<{type(k).__name__} key>]",
                            f"<{type(k).__name__}>",
                            "key is not a string",
                            "use text keys only",
                        )
                    sub = _child(path, k)
                    if limits and len(k) > MAX_KEY_LENGTH:
                        raise ValidationError(
                            _short_path(sub), k, f"key longer than {MAX_KEY_LENGTH} characters", "use shorter keys"
                        )
                    problem = _char_problem(k, key=True)
                    if problem is not None:
                        raise ValidationError(_short_path(sub), k, f"key {problem}", _CHAR_FIX)
                    children.append((v, sub, depth + 1))
                stack.extend(reversed(children))  # popped in document order
            else:
                stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in reversed(list(enumerate(node))))
        else:
            raise ValidationError(
                _short_path(path),
                f"<{kind.__name__}>",
                f"not a JSON value ({kind.__name__})",
                "use strings, numbers, booleans, null, lists and objects only",
            )


def properties_json(value: Any, field: str = "properties", limit: int = MAX_PROPERTIES_BYTES) -> str:
    """Return the canonical JSON text of a properties mapping, or raise.

    The mapping must pass :func:`check_json` (named path in the error) and
    its encoding be at most ``limit`` bytes.
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
    except (RecursionError, TypeError, ValueError) as exc:
        check_json(value, field)  # names the offending value
        raise ValidationError(  # pragma: no cover - check_json finds what the encoder refused
            field, "<data>", f"not JSON-serialisable ({type(exc).__name__})", "send plain JSON data"
        ) from None
    # The encoder escapes every control character, quote and backslash, so
    # the escapes in the text show every control character (in a key or a
    # value); a lone surrogate is the only non-ASCII trouble; a nesting depth, a key count or a
    # key length needs as many brackets, colons or characters in the text.
    # Only data that might break a rule is walked (the exact check, with the
    # path): the common event costs a few scans of its text in C.
    if (
        ("\\" in text and (_BAD_ESCAPE.search(text) or _KEY_ESCAPE.search(text)))
        or (not text.isascii() and _SURROGATE.search(text))
        or text.count(":") > MAX_JSON_KEYS
        or text.count("{") + text.count("[") > MAX_JSON_DEPTH
        or _LONG_DIGITS.search(text)
        or (len(text) > MAX_KEY_LENGTH and _LONG_KEY.search(text))
    ):
        check_json(value, field)
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
    if not isinstance(value, str) or not _SLUG.match(value) or len(value) > MAX_SLUG_LENGTH:
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


class Stored(str):
    """Text read back from storage (a marker, as :class:`~types.MappingProxyType`
    is for stored mappings): it was checked when it was written, and a rule made
    stricter later must not make stored rows unreadable.  :func:`check_text`
    returns it as a plain ``str`` without checking it again; changing the value
    checks the new one."""

    __slots__ = ()


def stored(value: Any) -> Any:
    """``value`` marked :class:`Stored` if it is text (``None`` and others unchanged)."""
    return Stored(value) if isinstance(value, str) else value


def check_text(value: Any, field: str, max_length: int = 500) -> str:
    """Return ``value`` if it is a string of at most ``max_length`` characters
    that :func:`check_string` accepts, or raise.  :class:`Stored` text is
    returned as it is (as a plain ``str``)."""
    if type(value) is Stored:
        return str(value)
    if not isinstance(value, str):
        raise ValidationError(field, value, "not a string", "send text")
    if len(value) > max_length:
        raise ValidationError(field, value, f"longer than {max_length} characters", "send shorter text")
    return check_string(value, field)


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
