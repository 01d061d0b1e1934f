"""Value types shared by the request declarations of the routes.

Each is one declaration that both sides read: msgspec (and Litestar, for
parameters) enforces it when decoding a request, and the OpenAPI document
is generated from it (:mod:`ecrm_api.openapi`).  The patterns are the
core's own rules, so that what the schema admits the core accepts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from ecrm_core.validation import KEY_PATTERN, MAX_INT, MAX_YEAR, MIN_YEAR, SLUG_PATTERN, TEXT_PATTERN, currencies

__all__ = [
    "MAX_ID",
    "TEXT_PATTERN",
    "KEY_PATTERN",
    "SLUG_PATTERN",
    "DATETIME_PATTERN",
    "ref_pattern",
    "ref_param",
    "int_range_pattern",
    "CoreSlug",
    "StrictSlug",
    "Amount",
    "Currency",
    "Timezone",
    "IdempotencyKey",
    "PRINTABLE_PATTERN",
    "IDENTITY_PATTERN",
    "Identity",
    "DateTime",
    "parse_datetime",
    "date_time_param",
]

MAX_ID = MAX_INT
#: What every text in a JSON request body must match at any depth
#: (:data:`~ecrm_core.validation.TEXT_PATTERN`, the core's character rule, which
#: :mod:`ecrm_api.bodies` enforces); keys of free-form objects match
#: :data:`~ecrm_core.validation.KEY_PATTERN`.
assert TEXT_PATTERN.startswith("^[^") and TEXT_PATTERN.endswith("]*$")
_TEXT_EXCLUDED = TEXT_PATTERN[3:-3]


def int_range_pattern(high: int) -> str:
    """A regular expression (no anchors) for the decimal numbers 1..``high``, leading zeros allowed."""
    digits = str(high)
    n = len(digits)
    branches = [f"[1-9][0-9]{{0,{n - 2}}}"] if n > 1 else []  # fewer digits than high
    for i, d in enumerate(digits):  # same length: equal up to i, smaller at i, anything after
        low = "1" if i == 0 else "0"
        if int(d) > int(low):
            top = int(d) - 1
            cls = low if top == int(low) else f"[{low}-{top}]"
            rest = n - i - 1
            branches.append(digits[:i] + cls + (f"[0-9]{{{rest}}}" if rest else ""))
    branches.append(digits)
    return "0*(?:" + "|".join(branches) + ")"


#: The core's years as a pattern: 1900..2200 (checked against the core's constants below).
_YEAR = "(?:19[0-9]{2}|2[01][0-9]{2}|2200)"
assert (MIN_YEAR, MAX_YEAR) == (1900, 2200), "update _YEAR to the core's year range"
_TIME_REST = (
    r"-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
)
#: The shape of an RFC 3339 date-time with an offset, any 4-digit year (a
#: request body's time that does not match is a 400).  ``[0-9]``, not ``\d``,
#: which would admit other scripts' digits.
DATETIME_SHAPE = "^[0-9]{4}" + _TIME_REST
#: The same with the core's year range: what the server takes (a year outside
#: is the core's 422).
DATETIME_PATTERN = "^" + _YEAR + _TIME_REST


def ref_pattern(chars: str) -> str:
    """A path reference: an id (1..2^63-1, leading zeros allowed: ``int()`` reads
    them) or a slug/code made of ``chars`` (a regex class body) that starts with
    a letter or digit and is not all digits."""
    return f"^(?:{int_range_pattern(MAX_ID)}|(?:[0-9]+[a-z{chars}]|[a-z])[a-z0-9{chars}]*)$"


def ref_param(description: str, chars: str) -> Any:
    """A ``{ref}`` path parameter whose slug/code part is made of ``[a-z0-9]`` and ``chars``.

    Litestar refuses what is not ``[a-z0-9][a-z0-9<chars>]*`` (a 400); an id
    out of range is the route's 422; the document states both at once.
    """
    from litestar.params import Parameter

    return Annotated[
        str,
        Parameter(
            description=description,
            min_length=1,
            max_length=64,
            pattern=f"^[a-z0-9][a-z0-9{chars}]*$",
            schema_extra={"pattern": ref_pattern(chars)},
        ),
    ]


#: An identity value (alias value, external or anonymous id): not blank once
#: stripped (the class leaves out Python's and ECMAScript's white space both), no NUL.
IDENTITY_PATTERN = f"^[^{_TEXT_EXCLUDED}]*[^\\s{_TEXT_EXCLUDED}\\x1c-\\x1f\\x85\\ufeff][^{_TEXT_EXCLUDED}]*$"
Identity = Annotated[str, msgspec.Meta(max_length=200, extra_json_schema={"minLength": 1, "pattern": IDENTITY_PATTERN})]
CoreSlug = Annotated[str, msgspec.Meta(max_length=64, extra_json_schema={"pattern": SLUG_PATTERN})]
#: The same, refused at decoding (a 400) where the API always did so.
StrictSlug = Annotated[str, msgspec.Meta(max_length=64, pattern=SLUG_PATTERN)]
#: A decimal amount as text: below 10^11, at most 4 decimals (the core's rule).
#: Patterns given as ``extra_json_schema`` are the core's own checks (a 422
#: naming the field), written for the document; msgspec enforces the rest.
AMOUNT_PATTERN = r"^-?(?:[0-9]{1,11}(?:\.[0-9]{1,4})?|\.[0-9]{1,4})$"
Amount = (
    Annotated[str, msgspec.Meta(max_length=40, extra_json_schema={"pattern": AMOUNT_PATTERN})]
    | Annotated[float, msgspec.Meta(extra_json_schema={"exclusiveMinimum": -(10**11), "exclusiveMaximum": 10**11})]
)
#: What ``str.isprintable`` admits, in the OpenAPI document's regular expressions
#: (Python's ``re`` has no ``\p{…}``: the server checks with ``isprintable``).
PRINTABLE_PATTERN = r"^(?:[^\p{C}\p{Z}]| )*$"


def _currencies() -> list[str]:
    codes = sorted(currencies())
    return codes + [c.lower() for c in codes]


def _timezones() -> list[str]:
    from zoneinfo import available_timezones

    return sorted(available_timezones())


Currency = Annotated[str, msgspec.Meta(max_length=3, extra_json_schema={"enum": _currencies()})]
Timezone = Annotated[str, msgspec.Meta(max_length=64, extra_json_schema={"enum": _timezones()})]
IdempotencyKey = Annotated[
    str, msgspec.Meta(min_length=1, max_length=200, extra_json_schema={"pattern": PRINTABLE_PATTERN})
]
#: A date-time sent as text (a string: Litestar converts loosely and would
#: read a JSON number as epoch seconds).  Decoding refuses what is not an
#: RFC 3339 date-time with an offset (a 400); the core refuses a year outside
#: its range (a 422).  The document states both: msgspec writes the decoding
#: pattern, ``allOf`` adds the year range (one schema cannot hold two patterns).
DateTime = Annotated[
    str,
    msgspec.Meta(
        max_length=64,
        pattern=DATETIME_SHAPE,
        extra_json_schema={"format": "date-time", "allOf": [{"pattern": DATETIME_PATTERN}]},
        description="RFC 3339 date-time with an offset, e.g. 2024-05-01T12:00:00+09:00 (years 1900..2200; a number is refused)",
    ),
]


def parse_datetime(text: str, field: str) -> datetime:
    """A :data:`DateTime` value (or a query parameter's text) as an aware
    :class:`~datetime.datetime` in UTC; anything but an RFC 3339 date-time with
    an offset, in the core's years, is a :class:`~ecrm_core.errors.ValidationError`."""
    import re

    from ecrm_core.errors import ValidationError
    from ecrm_core.validation import aware_datetime

    if not re.match(DATETIME_SHAPE, text):
        raise ValidationError(
            field, text, "not an RFC 3339 date-time with an offset", "send e.g. '2024-05-01T12:00:00+09:00'"
        )
    return aware_datetime(text, field)


def date_time_param(description: str) -> Any:
    """A query parameter holding a :data:`DateTime` (checked against the pattern by Litestar)."""
    from litestar.params import Parameter

    return Annotated[
        str | None,
        Parameter(
            max_length=64,
            description=f"{description} (RFC 3339 with an offset, years 1900..2200)",
            schema_extra={"format": "date-time", "pattern": DATETIME_PATTERN},
        ),
    ]
