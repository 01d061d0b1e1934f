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
from ecrm_core.validation import _SLUG  # the core's slug rule (kinds, channels, stages, offer codes)

__all__ = [
    "MAX_ID",
    "TEXT_PATTERN",
    "SLUG_PATTERN",
    "DATETIME_PATTERN",
    "REF_PATTERN",
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

MAX_ID = 2**63 - 1
#: What every text in a JSON request body must match, keys included, at any
#: depth (:mod:`ecrm_api.bodies` enforces it; the OpenAPI document says it).
TEXT_PATTERN = r"^[^\x00]*$"
#: A core slug: ``purchase``, ``email_open``, ``external:erp`` (at most 64 characters).
SLUG_PATTERN = _SLUG.pattern
#: An RFC 3339 date-time with an offset, year 1900..2200 (the core's range;
#: ``[0-9]``, not ``\d``, which would admit other scripts' digits).
DATETIME_PATTERN = (
    r"^(?:19[0-9]{2}|2[01][0-9]{2}|2200)-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
)
#: A path reference: an id (no leading zero, at most 18 digits, so below
#: 2^63) or a slug/code that is not all digits.
REF_PATTERN = r"^(?:[1-9][0-9]{0,17}|[0-9]*[a-z_.:\-][a-z0-9_.:\-]*)$"

#: An identity value (alias value, external or anonymous id): not blank once
#: stripped (the class leaves out Python's and ECMAScript's white space both), no NUL.
IDENTITY_PATTERN = r"^[^\x00]*[^\s\x00\x1c-\x1f\x85\ufeff][^\x00]*$"
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
    from ecrm_core.validation import _currencies as core

    codes = sorted(core())
    return codes + [c.lower() for c in codes]


def _timezones() -> list[str]:
    from zoneinfo import available_timezones

    return sorted(available_timezones())


Currency = Annotated[str, msgspec.Meta(max_length=3, extra_json_schema={"enum": _currencies()})]
Timezone = Annotated[str, msgspec.Meta(max_length=64, extra_json_schema={"enum": _timezones()})]
IdempotencyKey = Annotated[
    str, msgspec.Meta(min_length=1, max_length=200, extra_json_schema={"pattern": PRINTABLE_PATTERN})
]
#: A date-time sent as text.  Decoded as a string (msgspec would also take
#: a number as a Unix time), checked against the pattern, parsed by the core.
DateTime = Annotated[
    str,
    msgspec.Meta(
        # decoding refuses a time without an offset (a 400, as before); the year range is the core's
        pattern=r"(?:[Zz]|[+-][0-9]{2}:?[0-9]{2})$",
        extra_json_schema={"format": "date-time", "pattern": DATETIME_PATTERN, "maxLength": 40},
        description="RFC 3339 date-time with an offset, e.g. 2024-05-01T12:00:00+09:00 (years 1900..2200)",
    ),
]


def parse_datetime(text: str, field: str) -> datetime:
    """A :data:`DateTime` value as an aware :class:`~datetime.datetime` in UTC."""
    from ecrm_core.validation import aware_datetime

    return aware_datetime(text, field)


def date_time_param(description: str) -> Any:
    """A query parameter holding a :data:`DateTime` (checked against the pattern by Litestar)."""
    from litestar.params import Parameter

    return Annotated[
        str | None,
        Parameter(
            max_length=40,
            description=f"{description} (RFC 3339 with an offset, years 1900..2200)",
            schema_extra={"format": "date-time", "pattern": DATETIME_PATTERN},
        ),
    ]
