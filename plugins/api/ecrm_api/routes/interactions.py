"""Routes: interactions — ingest one or many, read one, a customer's timeline and 360° view.

Ingestion needs the ``ingest`` scope (a tracking key can send events but not
read anything); reading needs ``read``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec
from ecrm_core.errors import BatchError, RowError, ValidationError
from ecrm_core.validation import MAX_JSON_DEPTH, aware_datetime, check_json, check_slug, check_string
from litestar import Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, Parameter

from ..bodies import StrictError, convert_strictly
from ..cursors import decode_cursor, encode_cursor
from ..problems import problem, problem_responses
from ..types import (
    IDENTITY_PATTERN,
    Amount,
    CoreSlug,
    Currency,
    DateTime,
    IdempotencyKey,
    Identity,
)

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM
    from ecrm_core.domain import Customer, Interaction

    from ..app import ApiState

__all__ = ["HANDLERS", "check_json_text", "Id", "InteractionOut", "CustomerOut", "customer_out"]

MAX_ID = 2**63 - 1
#: A database id: a positive 64-bit integer.
Id = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]
#: Items per ``POST /interactions/batch``.
MAX_BATCH = 10_000
#: The fields that name an interaction's customer: exactly one is given.
IDENTITIES = ("customer_id", "external_id", "email", "phone", "anonymous_id")
#: Nesting allowed inside ``properties`` (objects and lists): the core's limit.
MAX_DEPTH = MAX_JSON_DEPTH

Text200 = Annotated[str, msgspec.Meta(max_length=200)]
Slug = CoreSlug
AwareTime = DateTime


def check_json_text(value: Any, field: str) -> None:
    """The core's check of free-form JSON data (:func:`ecrm_core.validation.check_json`),
    naming the path under ``field``: NUL and control characters, lone surrogates,
    64-bit integers, depth, keys (iterative: no nesting exhausts the stack)."""
    check_json(value, field)


def _check_string(text: str, path: str) -> None:
    check_string(text, path)


# ---------------------------------------------------------------------------
# schemas
# ---------------------------------------------------------------------------
class InteractionIn(msgspec.Struct, forbid_unknown_fields=True):
    """One interaction to store.

    Identify the customer with ``customer_id`` or exactly one of
    ``external_id``, ``email``, ``phone``, ``anonymous_id`` (an identity nobody
    has creates a prospect).  ``amount`` is a decimal string (exact) or a
    number, with ``currency`` (ISO 4217).  ``occurred_at`` must carry a time
    zone; it defaults to now.
    """

    #: Exactly one way to name the customer (checked by the core), for the OpenAPI document.
    openapi_extra: ClassVar[dict[str, Any]] = {
        "oneOf": [
            {
                "title": f"by {name}",
                "required": [name],
                "properties": {
                    other: ({"not": {"type": "null"}} if other == name else {"type": "null"}) for other in IDENTITIES
                },
            }
            for name in IDENTITIES
        ],
        # amount and currency go together (the core's check)
        "anyOf": [
            {"title": "no amount", "properties": {"amount": {"type": "null"}, "currency": {"type": "null"}}},
            {
                "title": "an amount",
                "required": ["amount", "currency"],
                "properties": {"amount": {"not": {"type": "null"}}, "currency": {"not": {"type": "null"}}},
            },
        ],
    }

    kind: Slug
    customer_id: Id | None = None
    external_id: Identity | None = None
    email: Annotated[str, msgspec.Meta(max_length=320, extra_json_schema={"pattern": IDENTITY_PATTERN})] | None = None
    phone: Annotated[str, msgspec.Meta(max_length=64, extra_json_schema={"pattern": IDENTITY_PATTERN})] | None = None
    anonymous_id: Identity | None = None
    channel: Slug | None = None
    occurred_at: AwareTime | None = None
    amount: Amount | None = None
    currency: Currency | None = None
    properties: dict[str, Any] | None = None
    idempotency_key: IdempotencyKey | None = None


_ROW_FIELDS = InteractionIn.__struct_fields__


class InteractionOut(msgspec.Struct):
    """A stored interaction."""

    id: int
    customer_id: int | None
    kind: str
    channel: str | None
    occurred_at: datetime
    amount: str | None
    currency: str | None
    properties: dict[str, Any]
    idempotency_key: str | None
    recorded_at: datetime | None


#: What an item of ``POST /interactions/batch`` may be, in the document: any
#: value is taken, and judged on its own (as ``/v1/batch`` does).
_BATCH_ITEM = {
    "anyOf": [
        {"$ref": "#/components/schemas/InteractionIn"},
        {
            "description": "any other value: with on_error=skip it is listed in `rejected` and the others are"
            " stored; with on_error=raise (the default) it refuses the batch (400 for a wrong type, 422 else)"
        },
    ]
}


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """Up to 10,000 interactions, stored in one transaction.

    Each item is decoded on its own (as strictly as a body): a bad one is
    listed in ``rejected`` (``on_error=skip``) or refuses the batch
    (``on_error=raise``), so the document admits any value as an item.
    """

    #: The handler reports each bad item (ecrm_api.bodies checks the envelope only).
    per_item_errors: ClassVar[bool] = True

    # The handler checks the count (a 422 naming body.items, not msgspec's 400).
    items: Annotated[list[Any], msgspec.Meta(extra_json_schema={"maxItems": MAX_BATCH, "items": _BATCH_ITEM})]


class Rejected(msgspec.Struct):
    """One rejected item: its position in ``items`` and why."""

    index: int
    field: str
    problem: str
    fix: str


class BatchOut(msgspec.Struct):
    """What a batch stored; ``rejected`` lists the first 100 rejected items
    (``rejected_total`` counts them all): the answer's size is bounded."""

    stored: int
    duplicates: int
    created_customers: int
    rejected: list[Rejected]
    rejected_total: int = 0


#: Rejected items listed in one answer (or problem); the rest are counted.
MAX_LISTED = 100
#: The fix of an item that does not decode as an :class:`InteractionIn`.
_SHAPE_FIX = "send the types and fields the schema declares for an item (InteractionIn)"


class TimelinePage(msgspec.Struct):
    """One page of a timeline, newest first; ``next_cursor`` is null on the last page."""

    items: list[InteractionOut]
    next_cursor: str | None


class ConsentOut(msgspec.Struct):
    status: str
    at: datetime | None
    source: str | None


class CustomerOut(msgspec.Struct):
    """A customer (as in ``GET /customers/{id}``)."""

    id: int
    external_id: str | None
    email: str | None
    phone: str | None
    name: str | None
    attributes: dict[str, Any]
    consent: dict[str, ConsentOut]
    lifecycle_stage: str
    timezone: str | None
    locale: str | None
    created_at: datetime | None
    updated_at: datetime | None


class AliasOut(msgspec.Struct):
    kind: str
    value: str


class KindSummaryOut(msgspec.Struct):
    """Totals of one interaction kind on one channel."""

    kind: str
    channel: str | None
    count: int
    amount: str | None
    first_at: datetime
    last_at: datetime


class CustomerViewOut(msgspec.Struct):
    """The 360° view: the customer, how we know them, what they did."""

    customer: CustomerOut
    aliases: list[AliasOut]
    summary: list[KindSummaryOut]
    recent: list[InteractionOut]


# ---------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------
def _thaw(value: Any) -> Any:
    from ecrm_core.validation import thaw

    return thaw(value)


def _amount(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def interaction_out(i: Interaction) -> InteractionOut:
    assert i.id is not None
    return InteractionOut(
        id=i.id,
        customer_id=i.customer_id,
        kind=i.kind,
        channel=i.channel,
        occurred_at=i.occurred_at,
        amount=_amount(i.amount),
        currency=i.currency,
        properties=_thaw(i.properties),
        idempotency_key=i.idempotency_key,
        recorded_at=i.recorded_at,
    )


def customer_out(c: Customer) -> CustomerOut:
    assert c.id is not None
    return CustomerOut(
        id=c.id,
        external_id=c.external_id,
        email=c.email,
        phone=c.phone,
        name=c.name,
        attributes=_thaw(c.attributes),
        consent={k: ConsentOut(v.status, v.at, v.source) for k, v in c.consent.items()},
        lifecycle_stage=c.lifecycle_stage,
        timezone=c.timezone,
        locale=c.locale,
        created_at=c.created_at,
        updated_at=c.updated_at,
    )


def _row(item: InteractionIn) -> dict[str, Any]:
    """The ``track_many`` row of an item (fields that were sent)."""
    row = {f: v for f in _ROW_FIELDS if (v := getattr(item, f)) is not None}
    amount = row.get("amount")
    if type(amount) is float:
        # Every valid amount (< 10^11, at most 4 decimals: 15 digits) survives a
        # double exactly; the shortest repr gives back the digits that were sent.
        row["amount"] = repr(amount)
    return row


def _check_item(item: InteractionIn, api: ApiState, now: datetime) -> None:
    """What the API checks beyond the core: clock skew, NUL/surrogates, nesting."""
    at = None if item.occurred_at is None else aware_datetime(item.occurred_at, "occurred_at")
    if at is not None and at > now + api.config.future_tolerance:
        raise ValidationError(
            "occurred_at",
            item.occurred_at,
            f"in the future (more than {_span(api.config.future_tolerance)} ahead of the server's clock)",
            "send the time the interaction happened; check the sending device's clock",
        )
    if item.properties:
        check_json_text(item.properties, "properties")  # the core checks it too: here to list every bad item
    for name in ("external_id", "anonymous_id", "email", "phone"):
        v = getattr(item, name)
        if v is not None:
            _check_string(v, name)


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} s"


def _error_entry(index: int, error: Exception, prefix: str = "body.items") -> Rejected:
    if isinstance(error, ValidationError):
        field = f"{prefix}[{index}].{error.field}" if error.field else f"{prefix}[{index}]"
        return Rejected(index, field, error.problem, error.fix)
    from ecrm_core.errors import IdempotencyConflict, NotFound

    if isinstance(error, IdempotencyConflict):
        return Rejected(
            index,
            f"{prefix}[{index}].idempotency_key",
            str(error),
            "send the same payload to retry safely, or use a new key",
        )
    if isinstance(error, NotFound):
        field = "customer_id" if isinstance(error.key, int) else "customer"
        return Rejected(index, f"{prefix}[{index}].{field}", str(error), "send the id of an existing customer")
    return Rejected(index, f"{prefix}[{index}]", str(error), "fix or remove this item")


def _merge(pre: list[Rejected], errors: tuple[RowError, ...] | list[RowError], positions: list[int]) -> list[Rejected]:
    out = list(pre)
    out.extend(_error_entry(positions[e.index], e.error) for e in errors)
    out.sort(key=lambda r: r.index)
    return out


# ---------------------------------------------------------------------------
# handlers
# ---------------------------------------------------------------------------
@post(
    "/interactions",
    opt={"scope": "ingest"},
    tags=["interactions"],
    sync_to_thread=True,
    status_code=201,
    responses={
        200: ResponseSpec(data_container=InteractionOut, description="An idempotent retry: the stored interaction"),
        **problem_responses(404, 409),
    },
)
def create_interaction(
    data: JSONBody[InteractionIn], crm: NamedDependency[CRM], api: NamedDependency[ApiState]
) -> Response[InteractionOut]:
    """Store one interaction.

    Answers 201 with the stored interaction, or 200 when an idempotent retry
    (the same ``idempotency_key`` and payload) returned the interaction
    stored earlier.  The same key with a different payload is a 409
    ``idempotency-conflict``.  An unregistered ``kind`` is a 422 with a
    "did you mean" hint; an unknown ``customer_id`` a 404.
    """
    try:
        _check_item(data, api, crm.now())
    except ValidationError as exc:
        raise exc.at("body") from None
    row = _row(data)
    kind = row.pop("kind")
    try:
        stored, created = crm.interactions.track_status(kind, **row)
    except ValidationError as exc:
        raise exc.at("body") from None
    return Response(interaction_out(stored), status_code=201 if created else 200)


@post(
    "/interactions/batch",
    opt={"scope": "ingest"},
    tags=["interactions"],
    sync_to_thread=True,
    status_code=200,
    responses=problem_responses(),
)
def create_interactions_batch(
    data: JSONBody[BatchIn],
    crm: NamedDependency[CRM],
    api: NamedDependency[ApiState],
    on_error: Annotated[
        Literal["raise", "skip"],
        Parameter(
            description="`raise`: one bad item stores nothing (422 listing every bad item); "
            "`skip`: store the good items and list the rejected ones",
        ),
    ] = "raise",
) -> BatchOut:
    """Store up to 10,000 interactions in one transaction (set-based).

    With ``on_error=raise`` (default) a single bad item stores nothing and
    the 422 problem lists the bad items (``errors[].field`` is
    ``body.items[<index>].<field>``; the first 100, ``error_total`` counts
    them all).  With ``on_error=skip`` the good items are stored and the
    answer lists the first 100 ``rejected`` ones (``rejected_total``).  Items
    repeating a stored ``idempotency_key`` with the same payload count as
    ``duplicates``; unknown identities create prospects
    (``created_customers``).  Each item is decoded on its own, as strictly
    as a body: an item that is not an interaction at all (a string where a
    number belongs, a timestamp without a time zone, not an object) is a
    400 naming it with ``on_error=raise``, and one more ``rejected`` entry
    with ``on_error=skip``.
    """
    if on_error not in ("raise", "skip"):
        raise ValidationError("query.on_error", on_error, "unknown mode", "send on_error=raise or on_error=skip")
    items = data.items
    if len(items) > MAX_BATCH:
        raise ValidationError(
            "body.items",
            f"<{len(items)} items>",
            f"more than {MAX_BATCH} items",
            f"send at most {MAX_BATCH} items per request (split the batch)",
        )
    now = crm.now()
    pre: list[Rejected] = []
    rows: list[dict[str, Any]] = []
    positions: list[int] = []
    for index, value in enumerate(items):
        try:
            item = convert_strictly(value, InteractionIn)
        except StrictError as exc:
            field = f"body.items[{index}]" + (f".{exc.key}" if exc.key else "")
            pre.append(Rejected(index, field, exc.problem, _SHAPE_FIX))
            continue
        try:
            _check_item(item, api, now)
        except ValidationError as exc:
            pre.append(_error_entry(index, exc))
            continue
        rows.append(_row(item))
        positions.append(index)
    if on_error == "raise":
        shape = [r for r in pre if r.fix == _SHAPE_FIX]
        if shape:  # items that are not InteractionIn at all: a 400, as a body would be
            raise ValidationException(
                detail=f"{shape[0].field}: {shape[0].problem}",
                extra=[
                    {"key": r.field.removeprefix("body."), "message": r.problem, "source": "body"}
                    for r in shape[:MAX_LISTED]
                ],
            )
        if pre:
            # Find the core's objections too (in a transaction rolled back) so
            # the problem lists every bad item, not only the first kind.
            found = _dry_run(crm, rows)
            _raise_batch(_merge(pre, found, positions), len(items))
        try:
            result = crm.interactions.track_many(rows, on_error="raise")
        except BatchError as exc:
            _raise_batch(_merge(pre, exc.errors, positions), len(items))
    else:
        result = crm.interactions.track_many(rows, on_error="skip")
    rejected = _merge(pre, result.errors, positions)
    return BatchOut(
        stored=result.stored,
        duplicates=result.duplicates,
        created_customers=result.created_customers,
        rejected=rejected[:MAX_LISTED],
        rejected_total=len(rejected),
    )


def _dry_run(crm: CRM, rows: list[dict[str, Any]]) -> tuple[RowError, ...]:
    """The core's row errors for ``rows``, in a transaction that is rolled back."""
    if not rows:
        return ()
    with crm.db.engine.connect() as conn:
        trans = conn.begin()
        try:
            return crm.using(conn).interactions.track_many(rows, on_error="skip").errors
        finally:
            trans.rollback()


def _raise_batch(rejected: list[Rejected], total: int) -> None:
    shown = "; ".join(f"{r.field}: {r.problem}" for r in rejected[:3])
    more = f" (and {len(rejected) - 3} more)" if len(rejected) > 3 else ""
    raise problem(
        422,
        "validation",
        "Invalid items",
        f"{len(rejected)} of {total} item(s) rejected, nothing was stored: {shown}{more}. "
        "Fix the items, or send on_error=skip to store the valid ones.",
        errors=[
            {"field": r.field, "problem": r.problem, "fix": r.fix, "index": r.index} for r in rejected[:MAX_LISTED]
        ],
        error_total=len(rejected),
    )


@get(
    "/interactions/{interaction_id:int}",
    opt={"scope": "read"},
    tags=["interactions"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def get_interaction(
    interaction_id: Annotated[int, Parameter(ge=1, le=MAX_ID, description="the interaction's id")],
    crm: NamedDependency[CRM],
) -> InteractionOut:
    """One interaction by id (404 for an id of another workspace)."""
    return interaction_out(crm.interactions.get(interaction_id))


@get(
    "/customers/{customer_id:int}/timeline",
    opt={"scope": "read"},
    tags=["interactions"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def customer_timeline(
    customer_id: Annotated[int, Parameter(ge=1, le=MAX_ID, description="the customer's id")],
    crm: NamedDependency[CRM],
    api: NamedDependency[ApiState],
    kinds: Annotated[
        list[CoreSlug] | None,
        Parameter(description="only these interaction kinds (repeat the parameter)", max_items=50),
    ] = None,
    channels: Annotated[
        list[CoreSlug] | None,
        Parameter(description="only these channels (repeat the parameter)", max_items=50),
    ] = None,
    limit: Annotated[int, Parameter(ge=1, le=1000, description="items per page")] = 50,
    cursor: Annotated[str | None, Parameter(max_length=2000, description="`next_cursor` of the previous page")] = None,
) -> TimelinePage:
    """A customer's interactions across every channel, newest first (cursor-paginated).

    Includes interactions of customers merged into this one.  Pass the
    page's ``next_cursor`` back as ``cursor`` for the next page, with the
    same filters (a cursor is bound to the customer and filters).
    """
    kinds_l = sorted(set(kinds or ()))
    channels_l = sorted(set(channels or ()))
    for i, v in enumerate(kinds_l):
        crm.check_kind(v, f"query.kinds[{i}]")
    for i, v in enumerate(channels_l):
        check_slug(v, f"query.channels[{i}]", "channel name")
    scope = f"{crm.workspace}:timeline:{customer_id}:{','.join(kinds_l)}:{','.join(channels_l)}"
    before = None
    if cursor is not None:
        before = _position(decode_cursor(api.config.secret, scope, cursor))
    page = crm.interactions.timeline(
        customer_id, limit=limit + 1, before=before, kinds=kinds_l or None, channels=channels_l or None
    )
    more = len(page) > limit
    page = page[:limit]
    next_cursor = None
    if more and page:
        last = page[-1]
        next_cursor = encode_cursor(api.config.secret, scope, [last.occurred_at.isoformat(), last.id])
    return TimelinePage(items=[interaction_out(i) for i in page], next_cursor=next_cursor)


def _position(value: Any) -> tuple[datetime, int]:
    fix = "send back the `next_cursor` of the previous page unchanged"
    try:
        at, last_id = value
        when = datetime.fromisoformat(at)
        if isinstance(last_id, bool) or not isinstance(last_id, int) or when.tzinfo is None:
            raise ValueError
    except (TypeError, ValueError):
        raise ValidationError("query.cursor", value, "not a timeline cursor", fix) from None
    return when, last_id


@get(
    "/customers/{customer_id:int}/view",
    opt={"scope": "read"},
    tags=["interactions"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def customer_view(
    customer_id: Annotated[int, Parameter(ge=1, le=MAX_ID, description="the customer's id")],
    crm: NamedDependency[CRM],
    recent: Annotated[int, Parameter(ge=0, le=100, description="how many recent interactions")] = 20,
) -> CustomerViewOut:
    """The 360° view of a customer: who they are, their aliases, totals per
    kind and channel, and their most recent interactions."""
    view = crm.interactions.view(customer_id, recent=max(recent, 1))
    return CustomerViewOut(
        customer=customer_out(view.customer),
        aliases=[AliasOut(a.kind, a.value) for a in view.aliases],
        summary=[
            KindSummaryOut(s.kind, s.channel, s.count, _amount(s.amount), s.first_at, s.last_at) for s in view.summary
        ],
        recent=[interaction_out(i) for i in view.recent[:recent]],
    )


def _iter_handlers() -> Iterator[Any]:
    yield from (create_interaction, create_interactions_batch, get_interaction, customer_timeline, customer_view)


HANDLERS: list[Any] = list(_iter_handlers())
