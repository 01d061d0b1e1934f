"""Routes: customers — create, upsert, read, change, delete, search, aliases, merge, consent.

Reading needs the ``read`` scope, every change ``write``.  Ids of another
workspace answer 404 like ids that never existed.  A merged customer's old
id keeps answering ``GET`` with the survivor (``Content-Location`` names the
survivor's URL); changes through a merged id are a 409 naming the survivor.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import anyio.to_thread
import msgspec
from ecrm_core.errors import Conflict, ValidationError
from ecrm_core.validation import MAX_JSON_DEPTH, MAX_JSON_KEYS, check_json, check_string
from litestar import Request, Response, delete, get, patch, post, put
from litestar.connection import ASGIConnection
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from ..app import workspace_crm
from ..cursors import decode_cursor, encode_cursor
from ..problems import problem, problem_responses
from ..types import (
    IDENTITY_PATTERN,
    MAX_ID,
    SLUG_PATTERN,
    TEXT_PATTERN,
    DateTime,
    Identity,
    StrictSlug,
    Timezone,
    date_time_param,
    parse_datetime,
)

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM
    from ecrm_core.domain import Customer, MergeRecord
    from litestar.handlers.base import BaseRouteHandler

    from ..app import ApiState
    from ..keys import ApiKey

__all__ = [
    "HANDLERS",
    "CustomerOut",
    "ConsentOut",
    "CustomerIn",
    "CustomerPatch",
    "CustomerPage",
    "AliasIn",
    "AliasOut",
    "MergeIn",
    "MergeOut",
    "ConsentIn",
    "customer_out",
]

#: Nesting allowed inside ``attributes`` (objects and lists): the core's limit.
MAX_DEPTH = MAX_JSON_DEPTH
#: Keys allowed in ``attributes``, counted at every level: the core's limit.
MAX_KEYS = MAX_JSON_KEYS
SORTS = ("id", "created_at", "updated_at", "name", "email")

Id = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]
Text200 = Annotated[str, msgspec.Meta(max_length=200)]
Email = Annotated[str, msgspec.Meta(max_length=320)]
Phone = Annotated[str, msgspec.Meta(max_length=64)]
Slug = StrictSlug
Locale = Annotated[str, msgspec.Meta(max_length=35)]
Source = Annotated[str, msgspec.Meta(max_length=500)]
CreatedAfter = date_time_param("created after")
CreatedBefore = date_time_param("created before")
UpdatedAfter = date_time_param("updated after")
Attributes = Annotated[
    dict[str, Any],
    msgspec.Meta(description=f"free JSON data: at most {MAX_KEYS} keys in all, nested at most {MAX_DEPTH} deep"),
]
PathId = Annotated[int, Parameter(ge=1, le=MAX_ID, description="the customer's id")]


# ---------------------------------------------------------------------------
# schemas
# ---------------------------------------------------------------------------
class ConsentOut(msgspec.Struct):
    """The current consent decision for one channel."""

    status: Literal["granted", "denied"]
    at: datetime | None
    source: str | None


class CustomerOut(msgspec.Struct):
    """A customer."""

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
    created_at: datetime
    updated_at: datetime


class ConsentIn(msgspec.Struct, forbid_unknown_fields=True):
    """A consent decision: ``at`` defaults to now."""

    status: Literal["granted", "denied"]
    at: DateTime | None = None
    source: Source | None = None


class AliasIn(msgspec.Struct, forbid_unknown_fields=True):
    """An identity: ``kind`` a slug (``email``, ``phone``, ``external``, ``anonymous``, ``external:erp``…)."""

    kind: Slug
    value: Identity


class AliasOut(msgspec.Struct):
    kind: str
    value: str


class AliasList(msgspec.Struct):
    items: list[AliasOut]


class CustomerIn(msgspec.Struct, forbid_unknown_fields=True):
    """A customer to create (or, for ``/customers/upsert``, to create or update).

    ``aliases`` are extra identities (cookie ids, ids in other systems).
    """

    external_id: Text200 | None = None
    email: Email | None = None
    phone: Phone | None = None
    name: Text200 | None = None
    attributes: Attributes | None = None
    consent: dict[Slug, ConsentIn] | None = None
    lifecycle_stage: Slug | None = None
    timezone: Timezone | None = None
    locale: Locale | None = None
    aliases: Annotated[list[AliasIn], msgspec.Meta(max_length=100)] | None = None


class CustomerUpsertIn(CustomerIn, forbid_unknown_fields=True):
    """A customer to create, or to update when one has its identity (at least one is needed)."""

    #: What the core checks (the row must name an identity), for the OpenAPI document.
    openapi_extra: ClassVar[dict[str, Any]] = {
        "anyOf": [
            *(
                {
                    "title": f"by {name}",
                    "required": [name],
                    # not blank once stripped (a blank identity is no identity)
                    "properties": {name: {"type": "string", "pattern": IDENTITY_PATTERN}},
                }
                for name in ("external_id", "email", "phone")
            ),
            {
                "title": "by aliases",
                "required": ["aliases"],
                "properties": {"aliases": {"type": "array", "minItems": 1}},
            },
        ]
    }


class CustomerPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Fields to change; absent fields stay as they are.

    ``null`` clears ``external_id``, ``email``, ``phone``, ``name``,
    ``timezone`` and ``locale``.  ``attributes`` is a JSON merge patch
    (RFC 7396): keys set to ``null`` are removed, ``"attributes": null``
    removes them all.  ``consent`` records decisions for the channels given.
    """

    external_id: Text200 | msgspec.UnsetType | None = msgspec.UNSET
    email: Email | msgspec.UnsetType | None = msgspec.UNSET
    phone: Phone | msgspec.UnsetType | None = msgspec.UNSET
    name: Text200 | msgspec.UnsetType | None = msgspec.UNSET
    attributes: Attributes | msgspec.UnsetType | None = msgspec.UNSET
    consent: dict[Slug, ConsentIn] | msgspec.UnsetType = msgspec.UNSET
    lifecycle_stage: Slug | msgspec.UnsetType = msgspec.UNSET
    timezone: Timezone | msgspec.UnsetType | None = msgspec.UNSET
    locale: Locale | msgspec.UnsetType | None = msgspec.UNSET


class CustomerPage(msgspec.Struct):
    """One page of a search; ``next_cursor`` is null on the last page."""

    items: list[CustomerOut]
    next_cursor: str | None


class MergeIn(msgspec.Struct, forbid_unknown_fields=True):
    """Merge this customer into the customer ``into`` (the survivor)."""

    into: Id
    reason: Source | None = None


class MergeOut(msgspec.Struct):
    """The audit record of a merge."""

    id: int
    source_id: int
    target_id: int
    merged_at: datetime
    moved_interactions: int
    moved_aliases: int
    actor: str | None
    reason: str | None


class ConsentChange(msgspec.Struct, forbid_unknown_fields=True):
    """A consent decision for the channel in the path."""

    granted: bool
    source: Source | None = None


# ---------------------------------------------------------------------------
# conversions and checks
# ---------------------------------------------------------------------------
def customer_out(c: Customer) -> CustomerOut:
    """The API form of a :class:`~ecrm_core.domain.Customer`."""
    from ecrm_core.validation import thaw

    assert c.id is not None and c.created_at is not None and c.updated_at is not None
    return CustomerOut(
        id=c.id,
        external_id=c.external_id,
        email=c.email,
        phone=c.phone,
        name=c.name,
        attributes=thaw(c.attributes),
        consent={ch: ConsentOut(status=s.status, at=s.at, source=s.source) for ch, s in c.consent.items()},
        lifecycle_stage=c.lifecycle_stage,
        timezone=c.timezone,
        locale=c.locale,
        created_at=c.created_at,
        updated_at=c.updated_at,
    )


def _merge_out(m: MergeRecord) -> MergeOut:
    return MergeOut(
        id=m.id,
        source_id=m.source_id,
        target_id=m.target_id,
        merged_at=m.merged_at,
        moved_interactions=m.moved_interactions,
        moved_aliases=m.moved_aliases,
        actor=m.actor,
        reason=m.reason,
    )


def _check_text(text: str, path: str) -> None:
    """The core's character policy (:func:`ecrm_core.validation.check_string`), naming ``path``."""
    check_string(text, path)


def check_attributes(value: Any, field: str = "body.attributes") -> None:
    """The core's check of free-form JSON (:func:`ecrm_core.validation.check_json`), naming ``field``."""
    check_json(value, field)


def _fields(data: CustomerIn | CustomerPatch) -> dict[str, Any]:
    """The given fields of an input struct, as core keyword arguments (checked)."""
    out: dict[str, Any] = {}
    for name in data.__struct_fields__:
        value = getattr(data, name)
        if value is msgspec.UNSET:
            continue
        if isinstance(value, str):
            _check_text(value, f"body.{name}")
        if name == "attributes" and value is not None:
            check_attributes(value)
        elif name == "consent" and value is not None:
            value = {ch: msgspec.structs.asdict(s) for ch, s in value.items()}
            for ch, s in value.items():
                if s["source"] is not None:
                    _check_text(s["source"], f"body.consent.{ch}.source")
        elif name == "aliases" and value is not None:
            for i, al in enumerate(value):
                _check_text(al.value, f"body.aliases[{i}].value")
            value = [(al.kind, al.value) for al in value]
        out[name] = value
    return out


async def json_only(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """Guard: a request body must be sent as ``application/json`` (415 otherwise).

    A coroutine: Litestar runs a synchronous guard in a worker thread."""
    ctype = connection.headers.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise problem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"send the body as application/json (got {media or 'no content type'!r})",
            errors=[
                {"field": "header.content-type", "problem": "not JSON", "fix": "send Content-Type: application/json"}
            ],
        )


def _create_fields(data: CustomerIn) -> dict[str, Any]:
    # null on create means "not given"
    return {k: v for k, v in _fields(data).items() if v is not None}


# ---------------------------------------------------------------------------
# customers
# ---------------------------------------------------------------------------
@post(
    "/customers",
    opt={"scope": "write"},
    guards=[json_only],
    tags=["customers"],
    sync_to_thread=True,
    status_code=HTTP_201_CREATED,
    responses=problem_responses(409),
)
def create_customer(crm: NamedDependency[CRM], data: JSONBody[CustomerIn]) -> CustomerOut:
    """Create a customer.

    409 when the e-mail, phone, external id or an alias already belongs to
    another customer (use ``POST /customers/upsert`` to create-or-update by
    identity).
    """
    return customer_out(crm.customers.create(**_create_fields(data)))


@post(
    "/customers/upsert",
    opt={"scope": "write"},
    guards=[json_only],
    tags=["customers"],
    sync_to_thread=True,
    responses={
        200: ResponseSpec(data_container=CustomerOut, description="An existing customer was updated"),
        **problem_responses(409),
    },
)
def upsert_customer(crm: NamedDependency[CRM], data: JSONBody[CustomerUpsertIn]) -> Response[CustomerOut]:
    """Create the customer, or update the one that has its identity (201 created, 200 updated).

    The identity is looked up by ``external_id``, ``email``, ``phone`` and
    ``aliases`` (at least one is needed); 409 when they belong to two
    different customers (merge them first).
    """
    from ecrm_core.errors import BatchError

    fields = _create_fields(data)
    try:
        result = crm.customers.upsert_many([fields], on_error="raise")
    except BatchError as exc:
        raise exc.errors[0].error from None
    created = bool(result.created)
    cid = (result.created or result.updated)[0]
    return Response(customer_out(crm.customers.get(cid)), status_code=HTTP_201_CREATED if created else HTTP_200_OK)


@get(
    "/customers/{customer_id:int}",
    opt={"scope": "read"},
    tags=["customers"],
    responses=problem_responses(404),
    response_headers=[
        ResponseHeader(
            name="Content-Location",
            description="the survivor's URL, when the id asked for was merged into another customer",
            required=False,
            documentation_only=True,
        )
    ],
)
async def get_customer(request: Request[Any, Any, Any], customer_id: PathId) -> Response[CustomerOut]:
    """A customer by id.

    The id of a merged customer answers with the survivor, and the
    ``Content-Location`` header then names the survivor's URL.
    """
    # On SQLite the read is one indexed statement (~30 µs, see ecrm_api.reads):
    # cheaper on the event loop than the hop to a worker thread.  Elsewhere it
    # is a network round trip: a worker thread.
    api, crm = workspace_crm(request)
    reader = api.reader
    if reader.fast:
        out = reader.read(crm, customer_id)
    else:
        out = await anyio.to_thread.run_sync(reader.read, crm, customer_id)
    headers = {}
    if out.id != customer_id:
        headers["Content-Location"] = f"{request.url.path.rsplit('/', 1)[0]}/{out.id}"
    return Response(out, headers=headers)


@patch(
    "/customers/{customer_id:int}",
    opt={"scope": "write"},
    guards=[json_only],
    tags=["customers"],
    sync_to_thread=True,
    responses=problem_responses(404, 409),
)
def update_customer(crm: NamedDependency[CRM], customer_id: PathId, data: JSONBody[CustomerPatch]) -> CustomerOut:
    """Change some fields of a customer (absent fields stay; see the body schema for ``null``).

    409 when a new e-mail, phone or external id belongs to another customer,
    or when the id was merged (change the survivor).
    """
    changes = _fields(data)
    if "attributes" in changes and changes["attributes"] is None:
        current = crm.customers.get(customer_id, follow_merged=False)
        changes["attributes"] = dict.fromkeys(current.attributes)
    return customer_out(crm.customers.update(customer_id, **changes))


@delete(
    "/customers/{customer_id:int}",
    opt={"scope": "write"},
    tags=["customers"],
    sync_to_thread=True,
    responses=problem_responses(404, 409),
)
def delete_customer(crm: NamedDependency[CRM], key: NamedDependency[ApiKey], customer_id: PathId) -> None:
    """Delete a customer and everything kept about them (204).

    Aliases, consent history, interactions, segment memberships and the
    tombstones of customers merged into it go too, in one transaction.
    409 for a merged id (delete the survivor).
    """
    crm.customers.delete(customer_id, actor=f"api-key:{key.key_id}")


# ---------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------
_SEARCH_PARAMS = frozenset(
    {
        "email",
        "external_id",
        "phone",
        "lifecycle_stage",
        "created_after",
        "created_before",
        "updated_after",
        "segment",
        "where",
        "sort",
        "cursor",
        "limit",
    }
)


def _bad_cursor(exc: ValidationError) -> Exception:
    return problem(
        400,
        "invalid-cursor",
        "Invalid cursor",
        f"query.cursor: {exc.problem}",
        errors=[{"field": "query.cursor", "problem": exc.problem, "fix": exc.fix}],
    )


@get("/customers", opt={"scope": "read"}, tags=["customers"], sync_to_thread=True, responses=problem_responses())
def search_customers(
    request: Request[Any, Any, Any],
    crm: NamedDependency[CRM],
    api: NamedDependency[ApiState],
    email: Annotated[
        str | None,
        Parameter(max_length=320, description="exact e-mail (normalised)", schema_extra={"pattern": TEXT_PATTERN}),
    ] = None,
    external_id: Annotated[
        str | None, Parameter(max_length=200, description="exact external id", schema_extra={"pattern": TEXT_PATTERN})
    ] = None,
    phone: Annotated[
        str | None,
        Parameter(
            max_length=64, description="exact phone (normalised to E.164)", schema_extra={"pattern": TEXT_PATTERN}
        ),
    ] = None,
    lifecycle_stage: Annotated[str | None, Parameter(max_length=64, description="customers in this stage")] = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    updated_after: UpdatedAfter = None,
    segment: Annotated[
        str | None,
        Parameter(
            min_length=1,
            max_length=64,
            description="members of the segment with this slug or id",
            schema_extra={"pattern": TEXT_PATTERN},
        ),
    ] = None,
    where: Annotated[
        str | None,
        Parameter(
            max_length=4000,
            schema_extra={"pattern": TEXT_PATTERN},
            description='a rule in the segments language, e.g. `country = "KR" and purchase.count(90d) >= 1`',
        ),
    ] = None,
    sort: Annotated[
        str,
        Parameter(
            max_length=32,
            description=f"one of {', '.join(SORTS)}; prefix `-` for descending (NULLs first)",
            # the core's check (a 422 listing the fields), as an enumeration
            schema_extra={"enum": [f"{d}{s}" for s in SORTS for d in ("", "-")]},
        ),
    ] = "id",
    cursor: Annotated[str | None, Parameter(max_length=2000, description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Parameter(ge=1, le=1000, description="items per page")] = 50,
) -> CustomerPage:
    """Search customers: filters, a rule, a sort, and cursor pagination.

    Filters combine with AND.  ``where`` takes a rule of the segments
    language (compiled to SQL with bound values, never evaluated as code).
    ``sort``: ``id``, ``created_at``, ``updated_at``, ``name`` or ``email``,
    ``-`` for descending.  Pages are keyset-paginated: pass ``next_cursor``
    back as ``cursor`` with the same filters and sort (a cursor is bound to
    them and to the workspace; anything else is a 400 naming
    ``query.cursor``).  Unknown parameters are refused, not ignored.
    """
    for name in request.query_params:
        if name not in _SEARCH_PARAMS:
            raise ValidationError(
                f"query.{name}", name, "unknown parameter", f"filter on {', '.join(sorted(_SEARCH_PARAMS))}"
            )
        if len(request.query_params.getall(name)) > 1:
            raise ValidationError(f"query.{name}", name, "given more than once", "send each parameter once")
    for name, value in (
        ("email", email),
        ("external_id", external_id),
        ("phone", phone),
        ("where", where),
        ("segment", segment),
    ):
        if value is not None:
            _check_text(value, f"query.{name}")
    filters: dict[str, Any] = {
        "email": email,
        "external_id": external_id,
        "phone": phone,
        "lifecycle_stage": lifecycle_stage,
        "created_after": created_after and parse_datetime(created_after, "query.created_after"),
        "created_before": created_before and parse_datetime(created_before, "query.created_before"),
        "updated_after": updated_after and parse_datetime(updated_after, "query.updated_after"),
        "segment": int(segment)
        if segment is not None and segment.isascii() and segment.isdigit() and len(segment) < 19
        else segment,
        "where": where,
    }
    given = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in filters.items() if v is not None}
    digest = hashlib.sha256(json.dumps(given, sort_keys=True).encode()).hexdigest()[:32]
    scope = f"{crm.workspace}:customers:{sort}:{digest}"
    after = None
    if cursor is not None:
        try:
            after = decode_cursor(api.config.secret, scope, cursor)
        except ValidationError as exc:
            raise _bad_cursor(exc) from None
    try:
        page = crm.customers.search(
            **{k: v for k, v in filters.items() if v is not None}, sort=sort, after=after, limit=limit
        )
    except ValidationError as exc:
        if exc.field == "after":
            raise _bad_cursor(exc) from None
        raise exc.at("query") from None
    return CustomerPage(
        items=[customer_out(c) for c in page.items],
        next_cursor=None if page.next_after is None else encode_cursor(api.config.secret, scope, page.next_after),
    )


# ---------------------------------------------------------------------------
# aliases
# ---------------------------------------------------------------------------
@get(
    "/customers/{customer_id:int}/aliases",
    opt={"scope": "read"},
    tags=["customers"],
    sync_to_thread=True,
    responses=problem_responses(404),
)
def list_aliases(crm: NamedDependency[CRM], customer_id: PathId) -> AliasList:
    """Every identity of the customer (a merged id: the survivor's)."""
    return AliasList(items=[AliasOut(kind=a.kind, value=a.value) for a in crm.customers.aliases(customer_id)])


def _alias_error(exc: ValidationError) -> ValidationError:
    name = "body.kind" if exc.field == "alias.kind" else "body.value"
    return ValidationError(name, exc.value, exc.problem, exc.fix)


@post(
    "/customers/{customer_id:int}/aliases",
    opt={"scope": "write"},
    guards=[json_only],
    tags=["customers"],
    sync_to_thread=True,
    status_code=HTTP_201_CREATED,
    responses=problem_responses(404, 409),
)
def add_alias(crm: NamedDependency[CRM], customer_id: PathId, data: JSONBody[AliasIn]) -> AliasOut:
    """Give the customer one more identity (idempotent); 409 naming the owner when another customer has it."""
    from ecrm_core.domain import Alias

    _check_text(data.value, "body.value")
    try:
        alias = Alias(data.kind, data.value)
    except ValidationError as exc:
        raise _alias_error(exc) from None
    try:
        stored = crm.customers.add_alias(customer_id, alias.kind, alias.value)
    except Conflict as exc:
        owner = crm.customers.find(alias=alias)
        if owner is None or owner.id == customer_id:
            raise
        raise problem(
            409,
            "alias-taken",
            "Alias belongs to another customer",
            f"{alias.kind} {alias.value!r} already belongs to customer {owner.id}; if they are one person, merge "
            f'them: POST /customers/{customer_id}/merge {{"into": {owner.id}}}',
            owner_id=owner.id,
        ) from exc
    return AliasOut(kind=stored.kind, value=stored.value)


@delete(
    "/customers/{customer_id:int}/aliases/{kind:str}/{value:str}",
    opt={"scope": "write"},
    tags=["customers"],
    sync_to_thread=True,
    responses=problem_responses(404, 409),
)
def remove_alias(
    crm: NamedDependency[CRM],
    customer_id: PathId,
    kind: Annotated[
        str, Parameter(max_length=64, description="the alias kind", schema_extra={"pattern": SLUG_PATTERN})
    ],
    value: Annotated[
        str,
        Parameter(
            max_length=200, description="the alias value (URL-encoded)", schema_extra={"pattern": IDENTITY_PATTERN}
        ),
    ],
) -> None:
    """Forget one identity of the customer (204).

    409 for the aliases that mirror the customer's ``email``, ``phone`` or
    ``external_id`` (change the field with PATCH instead).
    """
    _check_text(value, "path.value")
    try:
        crm.customers.remove_alias(customer_id, kind, value)
    except Conflict as exc:
        if "change the field" not in str(exc):
            raise
        raise problem(
            409,
            "conflict",
            "Conflict",
            f"{str(exc).split(';')[0]}; change the field with PATCH /customers/{customer_id} instead",
        ) from exc
    except ValidationError as exc:
        name = "path.kind" if exc.field == "alias.kind" else "path.value"
        raise ValidationError(name, exc.value, exc.problem, exc.fix) from None


# ---------------------------------------------------------------------------
# merge and consent
# ---------------------------------------------------------------------------
@post(
    "/customers/{customer_id:int}/merge",
    opt={"scope": "write"},
    guards=[json_only],
    tags=["customers"],
    sync_to_thread=True,
    status_code=HTTP_200_OK,
    responses=problem_responses(404, 409),
)
def merge_customer(
    crm: NamedDependency[CRM], key: NamedDependency[ApiKey], customer_id: PathId, data: JSONBody[MergeIn]
) -> MergeOut:
    """Merge this customer into ``into``: interactions, aliases and consent move there.

    This id stays as a tombstone that resolves to the survivor.  409 when
    either was already merged.
    """
    if data.reason is not None:
        _check_text(data.reason, "body.reason")
    try:
        record = crm.customers.merge(customer_id, into=data.into, actor=f"api-key:{key.key_id}", reason=data.reason)
    except ValidationError as exc:
        if exc.field == "into":
            raise ValidationError("body.into", exc.value, exc.problem, exc.fix) from None
        raise
    return _merge_out(record)


@put(
    "/customers/{customer_id:int}/consent/{channel:str}",
    opt={"scope": "write"},
    guards=[json_only],
    tags=["customers"],
    sync_to_thread=True,
    responses=problem_responses(404, 409),
)
def set_consent(
    crm: NamedDependency[CRM],
    customer_id: PathId,
    channel: Annotated[str, Parameter(max_length=64, pattern=SLUG_PATTERN, description="the channel")],
    data: JSONBody[ConsentChange],
) -> CustomerOut:
    """Record a consent decision for a channel (kept in the consent history); returns the customer."""
    if data.source is not None:
        _check_text(data.source, "body.source")
    try:
        return customer_out(crm.customers.set_consent(customer_id, channel, data.granted, source=data.source))
    except ValidationError as exc:
        if exc.field.startswith("consent."):
            raise ValidationError("path.channel", exc.value, exc.problem, exc.fix) from None
        raise


HANDLERS: list[Any] = [
    create_customer,
    upsert_customer,
    search_customers,
    get_customer,
    update_customer,
    delete_customer,
    list_aliases,
    add_alias,
    remove_alias,
    merge_customer,
    set_consent,
]
