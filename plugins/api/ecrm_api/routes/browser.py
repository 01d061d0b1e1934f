"""Routes: what Segment's browser SDK, analytics.js (``@segment/analytics-next``), sends.

analytics.js runs in the visitor's browser, on the host's site (another
origin than the API).  It first fetches its settings,
``GET {cdnURL}/v1/projects/<writeKey>/settings``, then posts each call to
``{apiHost}/<letter>`` -- ``/v1/t`` (track), ``/v1/p`` (page), ``/v1/i``
(identify), ``/v1/g`` (group), ``/v1/a`` (alias), ``/v1/s`` (screen) -- or,
in batching mode, ``{"writeKey", "batch", "sentAt"}`` to ``/v1/b``.  Its
bodies are JSON sent as ``Content-Type: text/plain`` and carry the write key
as ``writeKey``; older versions send no ``Authorization`` header, newer ones
repeat the key there (Basic).

So these routes are public as far as the auth middleware goes, and check the
write key themselves: the body's ``writeKey`` (or the ``Authorization``
key; both must then be the same key) is authenticated with the app's key
store (hashed, constant-time compared), and must be a key with the
``ingest`` scope **only**: a write key is public (anyone can read it in the
page), so a key that could also read or change data is refused (403)
rather than used.  The messages go through the same parser and group-commit
writer as ``/v1/track`` & co. (:mod:`ecrm_api.routes.tracking`).

CORS: answered on these routes only, for the origins of
``ApiConfig.tracking_origins`` (Litestar's CORS middleware, per route);
without origins no CORS header is sent and browsers refuse to send.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import msgspec
from litestar import Request, Response, get, route
from litestar.config.cors import CORSConfig
from litestar.middleware import DefineMiddleware

# Litestar's CORS middleware: public since 2.9 only as the app-wide
# ``cors_config``; used per route here so that CORS covers these routes only.
from litestar.middleware._internal.cors import CORSMiddleware
from litestar.openapi.spec import OpenAPIType, Operation, Schema
from litestar.params import Parameter

from ..auth import credential
from ..keys import ApiKey
from ..problems import problem, problem_responses
from ..tracking import CALL_TYPES
from .tracking import (
    TrackingResponse,
    _batch_schema,
    _document_sized,
    _message_schema,
    _operation,
    store_batch,
    store_single,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..app import ApiState
    from ..config import ApiConfig

__all__ = ["BROWSER_PATHS", "SdkSettings", "browser_handlers"]

#: The short paths of analytics.js: the first letter of the call's type.
BROWSER_PATHS: dict[str, str] = {f"/v1/{call[0]}": call for call in CALL_TYPES}
#: What the browser sends besides the CORS-safelisted headers.
_ALLOWED_HEADERS = ["content-type", "authorization", "x-retry-count"]
_POLICY = "ingest-only write key in the body (analytics.js), checked by the handler"
_REALM = {"WWW-Authenticate": 'Basic realm="ecrm"'}


# ----------------------------------------------------------------------
# the write key
# ----------------------------------------------------------------------
def _unauthorized(detail: str) -> Exception:
    return problem(401, "unauthorized", "Not authenticated", detail, headers=_REALM)


async def write_key(api: ApiState, token: str | None) -> ApiKey:
    """The active ingest-only key for ``token``; raises the 401/403 problem."""
    if not token:
        raise _unauthorized(
            'no write key: send it as "writeKey" in the body (analytics.js does); '
            "create one with `ecrm keys create <name> --scope ingest`"
        )
    known, key = api.keys.cached(token)
    if not known:
        key = await anyio.to_thread.run_sync(api.keys.authenticate, token)
    if key is None:
        raise _unauthorized("the write key is not valid (unknown, revoked or expired)")
    if key.scopes != frozenset({"ingest"}):
        has = ", ".join(sorted(key.scopes))
        if "ingest" not in key.scopes and "admin" not in key.scopes:
            detail = f"this write key lacks the 'ingest' scope (it has: {has})"
        else:
            detail = (
                f"this key has more scopes than 'ingest' (it has: {has}); a browser write key is public "
                "(anyone can read it in the page), so it must only be able to send events: "
                "create one with `ecrm keys create <name> --scope ingest`"
            )
        raise problem(403, "forbidden", "Forbidden", detail)
    return key


def _token(request: Request[Any, Any, Any], doc: dict[str, Any]) -> str | None:
    """The write key of the request: the body's ``writeKey``, else the ``Authorization`` key."""
    body_key = doc.get("writeKey")
    if body_key is not None and (type(body_key) is not str or not body_key.isascii()):
        raise _unauthorized("the writeKey in the body is not a key (a string)")
    header_key = credential(request.headers.get("authorization"))
    if body_key and header_key and not hmac.compare_digest(body_key.encode(), header_key.encode("utf-8")):
        raise _unauthorized("the writeKey in the body is not the key in the Authorization header; send one key")
    return body_key or header_key


async def _authenticated(request: Request[Any, Any, Any], *, single: bool) -> tuple[ApiState, Any, dict[str, Any], int]:
    api: ApiState = request.app.state["ecrm"]
    doc, size = await _document_sized(request, api, single=single)
    key = await write_key(api, _token(request, doc))
    request.scope["auth"] = request.scope["user"] = key
    return api, api.crm_for(key.workspace), doc, size


# ----------------------------------------------------------------------
# the settings document analytics.js loads first
# ----------------------------------------------------------------------
class SegmentIoSettings(msgspec.Struct):
    """Where the "Segment.io" destination of analytics.js sends: ``{protocol}://{apiHost}/<letter>``."""

    apiKey: str
    apiHost: str
    protocol: str


class MetricsSettings(msgspec.Struct):
    """analytics.js' own telemetry: off (``sampleRate`` 0), nothing goes to Segment."""

    sampleRate: int
    host: str


class SdkSettings(msgspec.Struct):
    """The minimal settings document of analytics.js: only the "Segment.io" destination, pointed at ecrm."""

    integrations: dict[str, SegmentIoSettings]
    metrics: MetricsSettings


def _api_host(request: Request[Any, Any, Any], config: ApiConfig) -> tuple[str, str]:
    base = config.tracking_public_url or str(request.base_url).rstrip("/")
    protocol, _, rest = base.partition("://")
    return protocol, f"{rest}{config.path}/v1"


# ----------------------------------------------------------------------
# handlers
# ----------------------------------------------------------------------
def _cors(config: ApiConfig) -> list[Any]:
    if not config.tracking_origins:
        return []
    cors = CORSConfig(
        allow_origins=list(config.tracking_origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=_ALLOWED_HEADERS,
        allow_credentials=False,
        max_age=600,
    )
    return [DefineMiddleware(CORSMiddleware, config=cors)]


def _with_write_key(schema: Schema) -> Schema:
    """The message schema of the Basic-auth route, with ``writeKey`` required (it is the credential here)."""
    properties = dict(schema.properties or {})
    properties["writeKey"] = Schema(
        type=OpenAPIType.STRING,
        description="the write key (an ecrm key with the ingest scope only); newer analytics.js versions "
        "repeat it as Basic auth, which must then be the same key",
        min_length=1,
        max_length=200,
    )
    return Schema(
        type=schema.type,
        properties=properties,
        required=sorted({*(schema.required or []), "writeKey"}),
        additional_properties=True,
        any_of=schema.any_of,
        description=schema.description,
    )


def _browser_operation(schema: Schema) -> type[Operation]:
    base = _operation(_with_write_key(schema))

    @dataclass
    class _BrowserOperation(base):  # type: ignore[valid-type,misc]
        def __post_init__(self) -> None:
            super().__post_init__()
            self.security = list[dict[str, list[str]]]()  # no Authorization header needed: the key is in the body

    return _BrowserOperation


def browser_handlers(config: ApiConfig) -> list[Any]:
    """The analytics.js routes of an app, with CORS for ``config.tracking_origins``."""
    middleware = _cors(config)
    common: dict[str, Any] = {
        "opt": {"write_key": _POLICY},
        "tags": ["tracking (analytics.js)"],
        "request_max_body_size": None,  # read and bounded by the handler (ApiConfig.tracking_max_body_bytes)
        "status_code": 200,
        "middleware": middleware,
    }
    handlers: list[Any] = []

    def single(path: str, call: str) -> Any:
        async def handler(request: Request[Any, Any, Any]) -> TrackingResponse:
            api, crm, doc, _size = await _authenticated(request, single=True)
            with api.writer.slot() as slot:
                return await store_single(api, crm, slot, doc, call)

        handler.__doc__ = (
            f"analytics.js `{call}` (what `analytics.{call}()` in a page sends): the same message and "
            f"the same storing as `POST /v1/{call}`, with the write key in the body (`writeKey`) instead "
            "of Basic auth; `text/plain` bodies are JSON. The key must have the `ingest` scope only (403 "
            "otherwise: a write key in a page is public)."
        )
        handler.__name__ = handler.__qualname__ = f"analytics_js_{call}"
        return route(
            path,
            http_method=["POST"],
            operation_class=_browser_operation(_message_schema(call, in_batch=False)),
            responses=problem_responses(409),
            summary=f"analytics.js {call}",
            operation_id=f"analytics_js_{call}",
            **common,
        )(handler)

    for path, call in BROWSER_PATHS.items():
        handlers.append(single(path, call))

    async def batch(request: Request[Any, Any, Any]) -> TrackingResponse:
        """analytics.js in batching mode (`deliveryStrategy: {strategy: "batching"}`):
        `{"writeKey", "batch": [messages], "sentAt"}`, stored as `POST /v1/batch` stores a batch
        (each valid message stored, the rejected ones listed in the 200 answer)."""
        api, crm, doc, size = await _authenticated(request, single=False)
        with api.writer.slot() as slot:
            return await store_batch(api, crm, slot, doc, size)

    batch.__name__ = batch.__qualname__ = "analytics_js_batch"
    handlers.append(
        route(
            "/v1/b",
            http_method=["POST"],
            operation_class=_browser_operation(_batch_schema()),
            responses=problem_responses(),
            summary="analytics.js batch",
            operation_id="analytics_js_batch",
            **common,
        )(batch)
    )

    @get(
        "/v1/projects/{project_key:str}/settings",
        opt={"write_key": _POLICY},
        tags=["tracking (analytics.js)"],
        summary="analytics.js settings",
        operation_id="analytics_js_settings",
        responses=problem_responses(),
        middleware=middleware,
        security=[],
        name="analytics_js_settings",
    )
    async def analytics_js_settings(
        request: Request[Any, Any, Any],
        project_key: str = Parameter(description="the write key", min_length=1, max_length=200),
    ) -> Response[SdkSettings]:
        """The settings document analytics.js fetches from its `cdnURL` before it sends anything: only
        Segment's own destination ("Segment.io"), pointed at this server (`apiHost`, `protocol`), and
        analytics.js' telemetry off. The key must be an ingest-only key (401/403 otherwise)."""
        api: ApiState = request.app.state["ecrm"]
        await write_key(api, project_key)
        protocol, host = _api_host(request, api.config)
        doc = SdkSettings(
            integrations={"Segment.io": SegmentIoSettings(apiKey=project_key, apiHost=host, protocol=protocol)},
            metrics=MetricsSettings(sampleRate=0, host=host),
        )
        return Response(doc, headers={"Cache-Control": "private, max-age=60"})

    handlers.append(analytics_js_settings)

    if middleware:
        # Explicit OPTIONS handlers carry the CORS middleware: it answers the
        # preflight (allowed origin: 204 with the CORS headers; other origin: 400).
        async def preflight() -> Response[None]:
            return Response(None, status_code=204, headers={"Allow": "OPTIONS, POST"})

        # First in the list: registered after the POST handlers, it would
        # lose to the OPTIONS handler Litestar adds to every route.
        paths = [*BROWSER_PATHS, "/v1/b"]
        handlers.insert(
            0,
            route(
                paths,
                http_method=["OPTIONS"],
                opt={"public": "CORS preflight of the analytics.js routes: no data"},
                include_in_schema=False,
                middleware=middleware,
                name="analytics_js_preflight",
            )(preflight),
        )
    return handlers
