"""The app factory: :func:`create_app` returns a Litestar app for a CRM."""

from __future__ import annotations

import copy
import gc
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from ecrm_core.errors import ValidationError
from litestar import Litestar, Request, Router
from litestar.datastructures import CacheControlHeader, State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.middleware.rate_limit import RateLimitConfig, get_remote_address
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import OpenAPIRenderPlugin, ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsPlugin
from litestar.static_files import create_static_files_router

from . import __version__
from .auth import KeyAuthMiddleware, route_policy
from .bodies import check_body
from .config import ApiConfig
from .gzip import refuse_encoding
from .inbox import InboxWriter
from .keys import ApiKey, Keys
from .openapi import body_type, install
from .problems import exception_handlers, problem, render_problem
from .processor import ProcessorThread
from .reads import CustomerReader
from .writer import GroupWriter

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["create_app", "ApiState", "route_table", "workspace_crm"]


class ApiState:
    """What the handlers share, at ``app.state.ecrm``: the CRM, config and keys."""

    def __init__(self, crm: CRM, config: ApiConfig, keys: Keys) -> None:
        self.crm = crm
        self.config = config
        self.keys = keys
        self.reader = CustomerReader(crm)
        self.writer = GroupWriter(max_group_events=config.ingest_max_group, max_wait=config.ingest_max_wait)
        self.inbox = InboxWriter(
            crm,
            max_depth=config.ingest_max_depth,
            max_lag=config.ingest_max_lag,
            lock_timeout=config.ingest_lock_timeout,
            retry_after=config.ingest_retry_after,
        )
        self.processor: ProcessorThread | None = None
        if config.ingest_processor == "thread":
            self.processor = ProcessorThread(
                crm, event_kinds=config.event_kinds, future_tolerance=config.future_tolerance
            )
        self._views: dict[str, CRM] = {}
        self._lock = threading.Lock()

    def crm_for(self, workspace: str) -> CRM:
        """The CRM view of one workspace (built once, then reused)."""
        view = self._views.get(workspace)
        if view is None:
            with self._lock:
                view = self._views.get(workspace)
                if view is None:
                    view = self.crm if workspace == self.crm.workspace else self.crm.in_workspace(workspace)
                    self._views[workspace] = view
        return view


def _state(request: Request[Any, Any, Any]) -> ApiState:
    return request.app.state["ecrm"]  # type: ignore[no-any-return]


def provide_crm(request: Request[Any, Any, Any]) -> CRM:
    """Dependency ``crm``: the CRM of the calling key's workspace."""
    return workspace_crm(request)[1]


def workspace_crm(request: Request[Any, Any, Any]) -> tuple[ApiState, CRM]:
    """The :class:`ApiState` and the CRM of the calling key's workspace.

    What the ``api`` and ``crm`` dependencies give, for the hot handlers:
    Litestar resolves two dependencies of one handler concurrently, in an
    anyio task group, which costs more than the whole read of a customer.
    """
    key = request.scope.get("auth")
    if not isinstance(key, ApiKey):  # public routes have no key: they get no workspace
        raise RuntimeError("`crm` was asked for by a public route; public routes must not touch workspace data")
    state = _state(request)
    return state, state.crm_for(key.workspace)


def provide_key(request: Request[Any, Any, Any]) -> ApiKey:
    """Dependency ``key``: the calling :class:`~ecrm_api.keys.ApiKey`."""
    key = request.scope.get("auth")
    if not isinstance(key, ApiKey):
        raise RuntimeError("`key` was asked for by a public route")
    return key


def provide_api(request: Request[Any, Any, Any]) -> ApiState:
    """Dependency ``api``: the :class:`ApiState`."""
    return _state(request)


def freeze_gc() -> None:
    """Collect, then freeze what exists (see :attr:`ApiConfig.gc_freeze`): full collections then
    walk only what requests created, not the modules, the app and its caches (no stalls of tens of ms).

    Once per process: when something is frozen already (an earlier app of this process, or the
    host's own ``gc.freeze()``), nothing is done -- objects frozen are never collected, so freezing
    again and again (a test session serving many apps) would keep each app's garbage forever."""
    if gc.get_freeze_count():
        return
    gc.collect()
    gc.freeze()


def _rate_identifier(request: Request[Any, Any, Any]) -> str:
    key = request.scope.get("auth")
    return f"key:{key.key_id}" if isinstance(key, ApiKey) else f"ip:{get_remote_address(request)}"


def _signature_namespace() -> dict[str, Any]:
    # Handlers annotate with these under TYPE_CHECKING; Litestar resolves them here.
    from ecrm_core.crm import CRM

    return {"CRM": CRM, "ApiKey": ApiKey, "ApiState": ApiState}


def _core_handlers() -> list[Any]:
    from .routes import customers, ingest, interactions, offers, segments, system, tracking

    out: list[Any] = []
    for module in (system, customers, interactions, offers, segments, tracking, ingest):
        out.extend(module.HANDLERS)
    return out


def create_app(
    crm: CRM,
    config: ApiConfig | None = None,
    *,
    route_handlers: Sequence[Any] = (),
    **options: Any,
) -> Litestar:
    """A Litestar app serving ``crm`` over HTTP.

    ::

        from ecrm_core import CRM
        from ecrm_api import create_app

        crm = CRM("sqlite:///shop-crm.db")
        app = create_app(crm)              # uvicorn module:app, or mount it

    :param config: an :class:`~ecrm_api.config.ApiConfig`; or pass its fields
        as keyword ``options`` (``create_app(crm, rate_limit=None)``).
    :param route_handlers: more handlers of the host's (they need an access
        policy too, see :mod:`ecrm_api.auth`).

    Plugins add routes through ``ecrm_register_routes``; they are mounted
    under ``/plugins``-free paths of their own choosing, beside the core's, and
    are guarded the same way.  Raises :class:`ValueError` when a handler
    declares no access policy (nothing is served unguarded).
    """
    if config is None:
        config = ApiConfig(**options)
    elif options:
        raise TypeError("pass either config= or keyword options, not both")
    keys = Keys(crm, cache_seconds=config.key_cache_seconds)
    state = ApiState(crm, config, keys)
    from .routes.browser import browser_handlers
    from .routes.channels import channel_handlers

    handlers = [
        *_core_handlers(),
        *browser_handlers(config),
        *crm.registry.routes,
        *channel_handlers(crm),
        *route_handlers,
    ]
    # Two routers so that the OpenAPI document says which routes need a key.
    public = [h for h in handlers if _is_public(h)]
    guarded = [h for h in handlers if not _is_public(h)]
    routers = [
        Router(path=config.path or "/", route_handlers=guarded, security=[{"apiKey": []}]),
        Router(path=config.path or "/", route_handlers=public),
    ]

    middleware: list[Any] = [DefineMiddleware(KeyAuthMiddleware, keys=keys)]
    if config.rate_limit is not None:
        middleware.append(
            RateLimitConfig(
                rate_limit=config.rate_limit, identifier_for_request=_rate_identifier, exclude_opt_key="public"
            ).middleware
        )

    openapi = None
    if config.docs:
        render_plugins, assets = _docs_pages(config)
        if assets is not None:
            routers.append(assets)
        docs_router = Router(
            path=f"{config.path}/docs", route_handlers=[], opt={"public": "API documentation"}, include_in_schema=False
        )
        openapi = OpenAPIConfig(
            title="ecrm API",
            version=__version__,
            description=(
                "The open REST API of ecrm: customers, interactions, offers, segments, and the Segment "
                "tracking spec. Authenticate with `Authorization: Bearer <api key>`."
            ),
            path=f"{config.path}/docs",
            openapi_router=docs_router,
            render_plugins=render_plugins,
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(type="http", scheme="bearer", description="an ecrm API key"),
                    "writeKey": SecurityScheme(
                        type="http", scheme="basic", description="a write key as user name (Segment SDKs)"
                    ),
                }
            ),
        )

    allowed_query: dict[int, frozenset[str]] = {}

    #: handler id -> the struct its JSON body decodes into (None: a body read otherwise)
    json_bodies: dict[int, Any] = {}

    async def check_request(request: Request[Any, Any, Any]) -> None:
        """Before every handler: a JSON body must say so (415), and no unknown query parameter (400).

        The body is then decoded strictly (:mod:`ecrm_api.bodies`).  A coroutine:
        Litestar would run a synchronous hook in a worker thread."""
        handler = id(request.route_handler)
        if handler not in json_bodies and not request.scope["query_string"]:
            return
        if handler in json_bodies:
            refuse_encoding(request.headers.get("content-encoding"))  # 415: only /v1/* take gzip
            media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
                raise problem(
                    415,
                    "unsupported-media-type",
                    "Unsupported media type",
                    f"send the body as application/json (got {media or 'no content type'!r})",
                    errors=[
                        {
                            "field": "header.content-type",
                            "problem": "not JSON",
                            "fix": "send Content-Type: application/json",
                        }
                    ],
                )
            struct = json_bodies[handler]
            if struct is not None:
                await check_body(request, struct)
        allowed = allowed_query.get(handler)
        if allowed is None:
            return
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            known = ", ".join(sorted(allowed)) or "none"
            raise problem(
                400,
                "invalid-request",
                "Invalid request",
                f"query.{unknown[0]}: unknown query parameter",
                errors=[
                    {
                        "field": f"query.{name}",
                        "problem": "unknown query parameter",
                        "fix": f"this route takes: {known}",
                    }
                    for name in unknown
                ],
            )

    async def stop_writer() -> None:
        # After the server stopped taking requests: store what was handed over.
        await anyio.to_thread.run_sync(state.writer.close)
        await anyio.to_thread.run_sync(state.inbox.close)
        if state.processor is not None:
            await anyio.to_thread.run_sync(state.processor.close)
        state.reader.close()

    app = Litestar(
        route_handlers=routers,
        on_startup=[freeze_gc] if config.gc_freeze else [],
        on_shutdown=[stop_writer],
        before_request=check_request,
        middleware=middleware,
        dependencies={
            "crm": Provide(provide_crm, sync_to_thread=False),
            "key": Provide(provide_key, sync_to_thread=False),
            "api": Provide(provide_api, sync_to_thread=False),
        },
        exception_handlers=exception_handlers(),
        plugins=[ProblemDetailsPlugin(ProblemDetailsConfig(exception_handler=render_problem))],
        openapi_config=openapi,
        request_max_body_size=config.max_body_bytes,
        state=State({"ecrm": state}),
        signature_namespace=_signature_namespace(),
        logging_config=None,  # an embedded app must not reconfigure the host's logging
        debug=False,
    )
    for _path, _method, handler in route_table(app):
        route_policy(handler)  # raises for a handler without an access policy
    for route in app.routes:
        for handler, kwargs_model in getattr(route, "route_handler_map", {}).values():
            if "data" in handler.parsed_fn_signature.parameters:
                json_bodies[id(handler)] = body_type(handler)
            if not (handler.opt or {}).get("allow_unknown_query"):
                allowed_query[id(handler)] = frozenset(p.field_alias for p in kwargs_model.expected_query_params)
    app.asgi_handler = _head_and_allow(app, app.asgi_handler)
    if openapi is not None:
        install(app)
    return app


def _allowed(methods: Iterable[str]) -> str:
    """The ``Allow`` value for a path serving ``methods`` (HEAD wherever GET is)."""
    found = {m.upper() for m in methods}
    if "GET" in found:
        found.add("HEAD")
    return ", ".join(sorted(found))


def _head_and_allow(app: Litestar, inner: Any) -> Any:
    """Wrap the app's ASGI handler: HEAD is answered wherever GET is, and ``Allow`` lists exactly the methods.

    A HEAD request goes to the path's own HEAD handler where it declares one;
    where the router refuses HEAD but allows GET, it is routed as GET and the
    body is dropped (the headers, Content-Length included, are GET's).  ``Allow`` on a 405 gains HEAD where
    GET is allowed; on the automatic OPTIONS answer it is rebuilt from the
    route (Litestar's answer lists only the methods of the handlers
    registered first for a path).
    """
    options_allow: dict[int, bytes] = {}
    for route in app.routes:
        handlers = getattr(route, "route_handler_map", {})
        if "OPTIONS" in handlers:
            options_allow[id(handlers["OPTIONS"][0])] = _allowed(route.methods).encode()

    async def handle(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        if scope["method"] == "HEAD":
            # A handler that declares HEAD answers it itself (e.g. the e-mail
            # link routes, which must not record a click for a HEAD); only
            # where the router refuses HEAD but allows GET is it answered as GET.
            refused = await _run(scope, receive, send, probe_head=True)
            if refused:

                async def no_body() -> dict[str, Any]:
                    return {"type": "http.request", "body": b"", "more_body": False}

                await _run({**scope, "method": "GET"}, no_body, send, drop_body=True)
            return
        await _run(scope, receive, send)

    async def _run(scope: Any, receive: Any, send: Any, *, probe_head: bool = False, drop_body: bool = False) -> bool:
        refused = False

        async def send_wrapper(message: Any) -> None:
            nonlocal refused
            if refused:
                return  # the refused HEAD's own 405 body
            if message["type"] == "http.response.start":
                status = message["status"]
                allow = None
                if status == 405:
                    listed = b",".join(v for k, v in message.get("headers", ()) if k.lower() == b"allow")
                    methods = [m.strip() for m in listed.decode("latin-1").split(",") if m.strip()]
                    if probe_head and "GET" in {m.upper() for m in methods}:
                        refused = True
                        return
                    allow = _allowed(methods).encode()
                elif scope.get("method") == "OPTIONS":
                    allow = options_allow.get(id(scope.get("route_handler")))
                if allow is not None:
                    headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"allow"]
                    message = {**message, "headers": [*headers, (b"allow", allow)]}
            elif drop_body and message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": b""}
            await send(message)

        await inner(scope, receive, send_wrapper)
        return refused

    return handle


def _is_public(handler: Any) -> bool:
    opt = getattr(handler, "opt", None) or {}
    return bool(opt.get("public") or opt.get("write_key")) and not isinstance(handler, Router)


def route_table(app: Litestar) -> Iterable[tuple[str, str, Any]]:
    """Every ``(path, method, handler)`` the app serves (for audits and tests)."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            methods = sorted(getattr(handler, "http_methods", None) or ["WS"])
            for method in methods:
                yield route.path, method, handler


#: The route name of the bundled Swagger UI files (``{path}/docs/assets/…``).
DOCS_ASSETS = "ecrm-docs-assets"


def bundled_swagger_ui() -> Path | None:
    """The folder of Swagger UI's files that the ``swagger-ui-py`` package ships, if it is installed."""
    try:
        import swagger_ui
    except ImportError:
        return None
    static = Path(swagger_ui.__file__).parent / "static"
    return static if (static / "swagger-ui-bundle.js").is_file() else None


class BundledSwaggerUI(SwaggerRenderPlugin):
    """Swagger UI whose script, style sheet and icon this app serves itself (no CDN).

    The URLs are reversed per request, so they stay right when the app is
    mounted under a host's path."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        def url(name: str) -> str:
            return request.app.route_reverse(DOCS_ASSETS, file_path=f"/{name}")

        page = copy.copy(self)
        page.js_url = url("swagger-ui-bundle.js")
        page.css_url = url("swagger-ui.css")
        page.standalone_preset_js_url = url("swagger-ui-standalone-preset.js")
        page.favicon = f"<link rel='icon' type='image/png' href='{url('favicon-32x32.png')}'>"
        return SwaggerRenderPlugin.render(page, request, openapi_schema)


def _docs_pages(config: ApiConfig) -> tuple[list[OpenAPIRenderPlugin], Router | None]:
    """The docs pages and, with bundled assets, the router that serves their files."""
    folder = None if config.docs_assets == "cdn" else bundled_swagger_ui()
    if folder is None:
        if config.docs_assets == "bundled":
            raise ValidationError(
                "docs_assets",
                "bundled",
                "the swagger-ui-py package (Swagger UI's files) is not installed",
                "pip install 'ecrm-api[docs]', or give docs_assets=\"cdn\"",
            )
        return [ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")], None
    assets = create_static_files_router(
        path=f"{config.path}/docs/assets",
        directories=[folder],
        name=DOCS_ASSETS,
        opt={"public": "the files of the API documentation page"},
        cache_control=CacheControlHeader(public=True, max_age=86_400),
        include_in_schema=False,
    )
    # Swagger UI first: it is the page at /docs.  Scalar has no Python
    # package with its files; it stays on its CDN at /docs/scalar.
    return [BundledSwaggerUI(path="/swagger"), ScalarRenderPlugin(path="/scalar")], assets
