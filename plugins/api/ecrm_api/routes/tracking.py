"""Routes: the Segment Tracking API (``/v1/identify`` … ``/v1/batch``).

Segment's and RudderStack's SDKs can be pointed at ecrm unchanged: they
send their *write key* (an ecrm key with the ``ingest`` scope) as the
Basic-auth user name, JSON (or gzip-compressed JSON) bodies, and expect a
2xx.  The mapping to customers and interactions is in
:mod:`ecrm_api.tracking`; this module reads the request (size-bounded,
decompressed, decoded) and answers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import anyio.to_thread
import msgspec
from ecrm_core.validation import KEY_PATTERN, MAX_JSON_KEYS, MAX_KEY_LENGTH, TEXT_PATTERN
from litestar import Request, post
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, Reference, RequestBody, Schema
from litestar.params import Parameter

from ..app import ApiState, workspace_crm
from ..auth import credential
from ..fastpath import check_batch
from ..gzip import decode_body
from ..inbox import Overloaded
from ..messages import (
    _MAX_ID_LENGTH,
    _MAX_MESSAGE_ID,
    BATCH_MAX_MESSAGES,
    CALL_TYPES,
    MESSAGE_MAX_BYTES,
    MessageError,
    Outcome,
    Parsed,
    Rejected,
    parse_time,
)
from ..problems import problem, problem_responses
from ..tracking import Tracker

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

    from ..writer import Slot

__all__ = ["HANDLERS"]

#: ``?sync=true``: answer once the messages are stored (per-message duplicates and conflicts), not once in the inbox.
Sync = Annotated[
    bool,
    Parameter(
        description="true: answer once the messages are stored as customers and interactions, with duplicates "
        "and messageId conflicts in the answer (slower); default: once they are durably in the ingest inbox"
    ),
]


class RejectedMessage(msgspec.Struct):
    """A message of the batch that was not stored."""

    index: int
    messageId: str | None
    field: str
    problem: str
    fix: str


class TrackingResponse(msgspec.Struct):
    """What was done with the request's messages.

    ``success`` is Segment's own answer; ``accepted`` counts stored messages,
    ``duplicates`` retries of stored ones (same ``messageId``, same payload),
    ``rejected`` the batch messages that were not stored and why: the first
    100 of them (``rejected_total`` counts them all), so that the answer's
    size is bounded whatever the request.  ``notes`` likewise (its last
    entry says how many more there were).
    """

    success: bool
    accepted: int
    duplicates: int
    rejected: list[RejectedMessage]
    notes: list[str]
    rejected_total: int = 0


# ----------------------------------------------------------------------
# OpenAPI: the request bodies (the handlers read the raw body themselves:
# gzip, text/plain from analytics.js, and per-message errors in a batch)
# ----------------------------------------------------------------------
def _s(kind: OpenAPIType, description: str, **kw: Any) -> Schema:
    return Schema(type=kind, description=description, **kw)


_NULL = Schema(type=OpenAPIType.NULL)
#: What ``str.isprintable`` admits (no control, format, separator but the
#: space, private-use or unassigned characters), with one that is not a space.
_PRINTABLE = r"^(?:[^\p{C}\p{Z}]| )*$"
_NOT_BLANK = r"^ *[^\p{C}\p{Z}](?:[^\p{C}\p{Z}]| )*$"
_ID = Schema(
    one_of=[
        Schema(type=OpenAPIType.STRING, max_length=_MAX_ID_LENGTH, pattern=_NOT_BLANK),
        Schema(type=OpenAPIType.INTEGER),
    ],
    description="an id (a string, or an integer sent as one); blank or null counts as absent",
)
_OPTIONAL_ID = Schema(one_of=[*(_ID.one_of or []), Schema(type=OpenAPIType.STRING, pattern=r"^ *$"), _NULL])
_TIME = Schema(
    one_of=[_s(OpenAPIType.STRING, "ISO 8601 time with an offset", format="date-time", max_length=64), _NULL],  # type: ignore[arg-type]
    description="ISO 8601 time with an offset (after 2000, not in the future once corrected with sentAt)",
)
#: Free-form data, checked as everywhere in ecrm (ecrm_api.openapi's JSONValue: the core's rules).
_OBJ = Schema(
    one_of=[
        _s(
            OpenAPIType.OBJECT,
            "free key/value pairs",
            additional_properties=Reference(ref="#/components/schemas/JSONValue"),
            property_names=Schema(pattern=KEY_PATTERN, max_length=MAX_KEY_LENGTH),
            max_properties=MAX_JSON_KEYS,
        ),
        _NULL,
    ],
    description="free key/value pairs",
)
_ANY = Schema(description="kept as sent (not checked)")
_TEXT = Schema(one_of=[Schema(type=OpenAPIType.STRING, max_length=200, pattern=TEXT_PATTERN), _NULL])
_COMMON: dict[str, Schema] = {
    "userId": _OPTIONAL_ID,
    "anonymousId": _OPTIONAL_ID,
    "messageId": Schema(
        one_of=[
            _s(
                OpenAPIType.STRING,
                "dedupe key: a retry with the same id is stored once",
                min_length=1,
                max_length=_MAX_MESSAGE_ID,
                pattern=_PRINTABLE,
            ),
            _NULL,
        ]
    ),
    "timestamp": _TIME,
    "originalTimestamp": _TIME,
    "sentAt": _TIME,
    "context": _OBJ,
    "integrations": _ANY,
    "channel": Schema(description="browser, server or mobile (anything else: the call's default)"),
    "writeKey": _s(OpenAPIType.STRING, "the write key again (must be the one in Authorization)"),
}
#: Per call: its own properties, and the ids of which one must be given (not blank).
_PER_CALL: dict[str, tuple[dict[str, Schema], list[list[str]]]] = {
    "identify": ({"traits": _OBJ}, [["userId"], ["anonymousId"]]),
    "track": (
        {
            "event": _s(OpenAPIType.STRING, "the event's name", min_length=1, max_length=200, pattern=TEXT_PATTERN),
            "properties": _OBJ,
        },
        [["userId", "event"], ["anonymousId", "event"]],
    ),
    "page": ({"name": _TEXT, "category": _TEXT, "properties": _OBJ}, [["userId"], ["anonymousId"]]),
    "screen": ({"name": _TEXT, "category": _TEXT, "properties": _OBJ}, [["userId"], ["anonymousId"]]),
    "group": ({"groupId": _OPTIONAL_ID, "traits": _OBJ}, [["userId", "groupId"], ["anonymousId", "groupId"]]),
    "alias": ({"previousId": _OPTIONAL_ID}, [["userId", "previousId"]]),
}


def _message_schema(call: str, *, in_batch: bool) -> Schema:
    props, alternatives = _PER_CALL[call]
    properties = {**_COMMON, **props}
    if in_batch:
        properties["type"] = Schema(type=OpenAPIType.STRING, const=call)
        required = ["type"]
    else:
        properties["type"] = Schema(
            one_of=[Schema(type=OpenAPIType.STRING, enum=[call]), _NULL], description="optional here"
        )
        required = []
    # The ids that must be given: present, and neither null nor blank.
    given = Schema(one_of=[Schema(type=OpenAPIType.STRING, pattern=_NOT_BLANK), Schema(type=OpenAPIType.INTEGER)])
    one_of = [Schema(required=names, properties=dict.fromkeys(names, given)) for names in alternatives]
    return Schema(
        type=OpenAPIType.OBJECT,
        properties=properties,
        required=required or None,
        additional_properties=True,
        any_of=one_of,
        description=f"a Segment {call} call",
    )


def _batch_schema() -> Schema:
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["batch"],
        additional_properties=True,
        properties={
            "batch": Schema(
                type=OpenAPIType.ARRAY,
                # Any value is taken: each message is checked on its own, and the
                # ones that are not valid are listed in the answer's `rejected`.
                items=Schema(
                    any_of=[
                        *(_message_schema(c, in_batch=True) for c in CALL_TYPES),
                        Schema(description="anything else: not stored, listed in `rejected`"),
                    ]
                ),
                max_items=BATCH_MAX_MESSAGES,
                description=f"the messages (up to {BATCH_MAX_MESSAGES} and 500 KB in all, 32 KB each); invalid ones do not fail the request",
            ),
            "sentAt": _TIME,
            "context": _ANY,
            "writeKey": _COMMON["writeKey"],
        },
    )


def _operation(schema: Schema) -> type[Operation]:
    body = RequestBody(
        content={
            "application/json": OpenAPIMediaType(schema=schema),
            "text/plain": OpenAPIMediaType(schema=schema),
        },
        required=True,
        description="JSON, optionally with Content-Encoding: gzip",
    )

    @dataclass
    class _TrackingOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = body

    return _TrackingOperation


# ----------------------------------------------------------------------
# reading the request
# ----------------------------------------------------------------------
def _too_large(limit: int) -> Exception:
    return problem(
        413,
        "too-large",
        "Request body too large",
        f"the body is larger than {limit} bytes; send smaller batches",
        errors=[{"field": "body", "problem": f"larger than {limit} bytes", "fix": "send smaller batches"}],
    )


async def _read(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise _too_large(limit)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise _too_large(limit)
    return bytes(data)


def _bad(field: str, what: str, fix: str) -> Exception:
    return problem(
        400,
        "invalid-request",
        "Invalid request",
        f"{field}: {what}",
        errors=[{"field": field, "problem": what, "fix": fix}],
    )


async def _document(request: Request[Any, Any, Any], api: ApiState, *, single: bool) -> dict[str, Any]:
    return (await _document_sized(request, api, single=single))[0]


async def _document_sized(
    request: Request[Any, Any, Any], api: ApiState, *, single: bool
) -> tuple[dict[str, Any], int]:
    """The decoded JSON object of the body, and the body's size (decompressed)."""
    return _decoded(await _body(request, api, single=single))


def _decoded(body: bytes) -> tuple[dict[str, Any], int]:
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise _bad("body", f"not valid JSON ({exc})", "send one JSON object (UTF-8)") from None
    if type(doc) is not dict:
        raise _bad("body", "not a JSON object", "send one JSON object")
    return doc, len(body)


async def _body(request: Request[Any, Any, Any], api: ApiState, *, single: bool) -> bytes:
    """The body, read within the limits and decompressed."""
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype not in ("", "application/json", "text/plain") and not ctype.endswith("+json"):
        raise problem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"Content-Type {ctype!r} is not accepted here; send application/json",
            errors=[{"field": "header.content-type", "problem": "unsupported", "fix": "send application/json"}],
        )
    limit = api.config.tracking_max_body_bytes
    raw = await _read(request, limit)
    return decode_body(raw, request.headers.get("content-encoding"), MESSAGE_MAX_BYTES if single else limit)


def _check_write_key(doc: dict[str, Any], request: Request[Any, Any, Any]) -> None:
    """A ``writeKey`` in the body must be the key the request was authenticated with."""
    if "writeKey" not in doc:
        return
    write_key = doc["writeKey"]
    if type(write_key) is not str:
        raise _bad("body.writeKey", "not a string", "send the write key as text, or leave it out")
    if write_key != credential(request.headers.get("authorization")):
        raise problem(
            401,
            "unauthorized",
            "Not authenticated",
            "the writeKey in the body is not the key in the Authorization header; send one key",
            headers={"WWW-Authenticate": 'Basic realm="ecrm"'},
        )


#: Rejected messages (and notes) listed in one answer; the rest are counted.
MAX_LISTED = 100


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _answer(outcome: Outcome) -> TrackingResponse:
    notes = [_cut(n, 500) for n in outcome.notes[:MAX_LISTED]]
    if len(outcome.notes) > MAX_LISTED:
        notes.append(f"(and {len(outcome.notes) - MAX_LISTED} more notes)")
    return TrackingResponse(
        success=True,
        accepted=outcome.accepted,
        duplicates=outcome.duplicates,
        rejected=[
            RejectedMessage(
                r.index,
                None if r.message_id is None else _cut(r.message_id, 200),
                _cut(r.field, 500),
                _cut(r.problem, 300),
                _cut(r.fix, 300),
            )
            for r in outcome.rejected[:MAX_LISTED]
        ],
        notes=notes,
        rejected_total=len(outcome.rejected),
    )


def _tracker(crm: CRM, api: ApiState, *, gateway: bool = False) -> Tracker:
    return Tracker(
        crm,
        event_kinds=api.config.event_kinds,
        future_tolerance=api.config.future_tolerance,
        check_properties=gateway,
    )


def _unprocessable(exc: MessageError) -> Exception:
    field, what, fix = _cut(exc.field, 500), _cut(exc.problem, 300), _cut(exc.fix, 300)
    err = [{"field": field, "problem": what, "fix": fix}]
    if exc.conflict:
        return problem(409, "conflict", "Conflict", f"{field}: {what}; {fix}", errors=err)
    return problem(422, "validation", "Invalid value", f"{field}: {what}; {fix}", errors=err)


#: A batch of more messages than this is validated in a worker thread, not on
#: the event loop (other requests would wait for it meanwhile).
PARSE_INLINE = 200
#: A body larger than this skips the fast path (it is checked in a worker thread).
PARSE_INLINE_BYTES = 128 * 1024


async def _single(call: str, request: Request[Any, Any, Any], sync: bool) -> TrackingResponse:
    # No `crm`/`api` dependencies: Litestar resolves two dependencies in an
    # anyio task group, which costs more than it brings here.
    api, crm = workspace_crm(request)
    sync = sync or api.config.tracking_sync
    if not sync:
        check_inbox(api)
    with api.writer.slot() as slot:
        doc = await _document(request, api, single=True)
        _check_write_key(doc, request)
        return await store_single(api, crm, slot, doc, call, sync=sync)


def _overloaded(exc: Overloaded) -> Exception:
    return problem(
        503,
        "unavailable",
        "Service unavailable",
        exc.reason,
        errors=[{"field": "inbox", "problem": exc.reason, "fix": f"retry after {exc.retry_after} s"}],
        headers={"Retry-After": str(exc.retry_after)},
    )


def check_inbox(api: ApiState) -> None:
    """503 with ``Retry-After`` when the inbox is past its configured depth or lag."""
    try:
        api.inbox.check()
    except Overloaded as exc:
        raise _overloaded(exc) from None


async def _to_inbox(
    api: ApiState, crm: CRM, tracker: Tracker, parsed: Parsed, call: str | None, payload: Any
) -> Outcome:
    """Append the accepted messages to the inbox; the answer once they are durable there."""
    count = parsed.events
    data = msgspec.json.encode(payload) if count else b""
    return await _append(api, crm, tracker, count, parsed.rejected, call, data)


async def _append(
    api: ApiState,
    crm: CRM,
    tracker: Tracker,
    count: int,
    rejected: Sequence[Rejected],
    call: str | None,
    payload: bytes,
) -> Outcome:
    if count:
        try:
            await api.inbox.append(crm.workspace, tracker.received_at, call, count, payload)
        except Overloaded as exc:
            raise _overloaded(exc) from None
        if api.processor is not None:
            api.processor.wake()
    return Outcome(count, 0, tuple(sorted(rejected, key=lambda r: r.index)), ())


async def store_single(
    api: ApiState, crm: CRM, slot: Slot, doc: dict[str, Any], call: str, *, sync: bool | None = None
) -> TrackingResponse:
    """Validate one call's message and store it (inbox, or through the writer when
    ``sync``; shared with the browser routes)."""
    if sync is None:
        sync = api.config.tracking_sync
    if not sync:
        check_inbox(api)  # (again: the browser routes come here directly)
    tracker = _tracker(crm, api, gateway=not sync)
    try:
        parsed = tracker.parse_one(doc, call=call)
    except MessageError as exc:
        raise _unprocessable(exc) from None
    if not sync:
        slot.release()
        return _answer(await _to_inbox(api, crm, tracker, parsed, call, doc))
    outcome = await slot.submit(tracker, parsed)
    if outcome.rejected:
        r = outcome.rejected[0]
        raise _unprocessable(MessageError(r.field, r.problem, r.fix, conflict=r.conflict))
    return _answer(outcome)


_COMMON_OPTS: dict[str, Any] = {
    "opt": {"scope": "ingest"},
    "tags": ["tracking (Segment spec)"],
    "request_max_body_size": None,  # read and bounded by the handler (ApiConfig.tracking_max_body_bytes)
    "status_code": 200,
    "security": [{"writeKey": []}, {"apiKey": []}],
}


def _single_handler(call: str, doc: str) -> Any:
    async def handler(request: Request[Any, Any, Any], sync: Sync = False) -> TrackingResponse:
        return await _single(call, request, sync)

    handler.__doc__ = doc
    handler.__name__ = handler.__qualname__ = f"segment_{call}"
    return post(
        f"/v1/{call}",
        operation_class=_operation(_message_schema(call, in_batch=False)),
        responses=problem_responses(409, 503),
        summary=f"Segment {call}",
        operation_id=f"segment_{call}",
        **_COMMON_OPTS,
    )(handler)


identify = _single_handler(
    "identify",
    "Segment `identify`: create or update the customer with `userId` (external id) and the traits "
    "(email, phone, name or firstName+lastName; other traits into attributes); `anonymousId` is linked "
    "to the customer (an anonymous prospect is merged in). Records an `identify` interaction.",
)
track = _single_handler(
    "track",
    "Segment `track`: one interaction. The event name is mapped to an interaction kind through the "
    "API's `event_kinds` (e.g. `Order Completed` -> `purchase` with amount from `properties.revenue`/"
    "`total` and `currency`), other names are kind `event` with `properties.event` = the name.",
)
page = _single_handler("page", "Segment `page`: a `page_view` interaction (`name`, `category` and properties kept).")
screen = _single_handler(
    "screen", "Segment `screen`: a `screen_view` interaction (`name`, `category` and properties kept)."
)
group = _single_handler(
    "group",
    "Segment `group`: sets `attributes.group` = {id, traits} on the customer and records an `event` "
    "interaction named `group`.",
)
alias = _single_handler(
    "alias",
    "Segment `alias`: the customer known by `previousId` (external id or anonymous id) is merged into "
    "the one with `userId` (created if new); an unknown `previousId` is linked to it as an alias.",
)


@post(
    "/v1/batch",
    operation_class=_operation(_batch_schema()),
    responses=problem_responses(503),
    summary="Segment batch",
    operation_id="segment_batch",
    **_COMMON_OPTS,
)
async def batch(request: Request[Any, Any, Any], sync: Sync = False) -> TrackingResponse:
    """Segment `batch` (what the server SDKs send): `{"batch": [messages], "sentAt", "context"}`.

    Valid messages are stored even when others are not (an SDK drops a
    whole batch on a 4xx); the 200 answer lists each rejected message with
    its index, messageId, field and problem.  A request malformed as a
    whole (not JSON, no `batch` list, too large) is a 4xx and stores nothing.
    Limits: 500 KB per request (after decompression), 2,500 messages
    (413 otherwise), 32 KB per message.  The answer lists the first 100
    rejected messages; `rejected_total` counts them all.
    The answer comes once the accepted messages are durably in the ingest
    inbox (`accepted` counts them; they are stored, deduplicated by
    `messageId`, shortly after): with `?sync=true`, once they are stored,
    with `duplicates` and `messageId` conflicts in the answer. 503 with
    `Retry-After` when the inbox is past its configured depth or lag, or
    the database cannot take the write now: nothing of the request was kept.
    """
    api, crm = workspace_crm(request)
    sync = sync or api.config.tracking_sync
    if not sync:
        check_inbox(api)
    with api.writer.slot() as slot:
        body = await _body(request, api, single=False)
        if not sync and len(body) <= PARSE_INLINE_BYTES:
            # The compiled checks (ecrm_api.fastpath): the same answers, sooner.
            tracker = _tracker(crm, api, gateway=True)
            fast = check_batch(body, tracker)
            if fast is not None:
                slot.release()
                return _answer(await _append(api, crm, tracker, fast.count, fast.rejected, None, fast.payload))
        doc, size = _decoded(body)
        _check_write_key(doc, request)
        return await store_batch(api, crm, slot, doc, size, sync=sync)


def batch_messages(doc: dict[str, Any]) -> list[Any]:
    """The ``batch`` list of a batch body; raises the 400 when it is missing
    and the 413 when it holds more than :data:`~ecrm_api.tracking.BATCH_MAX_MESSAGES`."""
    messages = doc.get("batch")
    if type(messages) is not list:
        raise _bad("body.batch", "missing or not a list", 'send {"batch": [message, ...]}')
    if len(messages) > BATCH_MAX_MESSAGES:
        what = f"{len(messages)} messages, more than {BATCH_MAX_MESSAGES} per request"
        fix = f"send at most {BATCH_MAX_MESSAGES} messages per batch (split it); nothing was stored"
        raise problem(
            413,
            "too-large",
            "Too many messages",
            f"body.batch: {what}",
            errors=[{"field": "body.batch", "problem": what, "fix": fix}],
        )
    return messages


async def store_batch(
    api: ApiState, crm: CRM, slot: Slot, doc: dict[str, Any], size: int, *, sync: bool | None = None
) -> TrackingResponse:
    """Validate a batch body and store its messages (inbox, or through the writer
    when ``sync``; shared with the browser routes)."""
    if sync is None:
        sync = api.config.tracking_sync
    if not sync:
        check_inbox(api)
    messages = batch_messages(doc)
    try:
        sent_at = parse_time(doc.get("sentAt"), "body.sentAt")
    except MessageError as exc:
        raise _bad(exc.field, exc.problem, exc.fix) from None
    tracker = _tracker(crm, api, gateway=not sync)
    parse = functools.partial(tracker.parse, messages, sent_at=sent_at, body_bytes=size)
    parsed = parse() if len(messages) <= PARSE_INLINE else await anyio.to_thread.run_sync(parse)
    if not sync:
        slot.release()
        if parsed.rejected:
            keep = sorted(m.index for m in (*parsed.fast, *parsed.slow))
            payload: dict[str, Any] = {"batch": [messages[i] for i in keep]}
        else:
            payload = {"batch": messages}
        if doc.get("sentAt") is not None:
            payload["sentAt"] = doc["sentAt"]
        return _answer(await _to_inbox(api, crm, tracker, parsed, None, payload))
    outcome = await slot.submit(tracker, parsed)
    return _answer(outcome)


HANDLERS: list[Any] = [identify, track, page, screen, group, alias, batch]
