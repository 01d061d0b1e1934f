"""The app factory :func:`create_admin` and the request pipeline every page goes through.

Each request: the session cookie (or the host's ``authenticate``) names the
user; the page's role is checked (403 below it); a POST must carry the
session's CSRF token (form field ``_csrf`` or header ``X-CSRF-Token``, 403
otherwise); then the view runs in a worker thread with an
:class:`AdminRequest`.  Every answer carries a strict Content-Security-Policy
(scripts only from the admin's own files, no inline script or style).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import anyio.to_thread
from attrs import define, field
from ecrm_core.errors import EcrmError, NotFound, ValidationError
from ecrm_core.registry import AdminPage
from markupsafe import Markup

from .config import AdminConfig
from .render import HTMX, environment, error_box, to_html
from .throttle import LoginThrottle
from .users import AdminUser, Session, Sessions, Users

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM
    from litestar import Litestar, Request

__all__ = ["create_admin", "AdminRequest", "AdminApp", "Html", "Redirect", "Forbidden", "CSP"]

log = logging.getLogger("ecrm.admin")

STATIC_DIR = Path(__file__).resolve().parent / "static"
COOKIE = "ecrm_admin"
PRE_COOKIE = "ecrm_admin_pre"
#: At most this many cached figures (dashboards, reports) per app.
_MAX_CACHED = 512

#: The pages' Content-Security-Policy: nothing inline, nothing from elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-src 'self'; frame-ancestors 'self'; base-uri 'none'"
)
#: The e-mail preview frame's policy: the message's own inline styles, no script, a sandbox.
PREVIEW_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox; frame-ancestors 'self'"

_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


class Forbidden(Exception):
    """Raised by a view: the user may not do this (answered 403)."""


@define
class Html:
    """A view's answer: an HTML page or fragment."""

    body: str
    status: int = 200
    headers: dict[str, str] = field(factory=dict)


@define
class Redirect:
    """A view's answer: see another page (303)."""

    url: str


@define
class AdminRequest:
    """What a page handler (built-in or a plugin's ``AdminPage``) is given.

    * ``crm``: the CRM of the user's current workspace;
    * ``user``: the :class:`~ecrm_admin.users.AdminUser`;
    * ``method``, ``path_params`` (``{program}`` of the page's path),
      ``query`` and ``form`` (dicts of strings; the form's CSRF token was
      checked already);
    * ``base``: the admin's mount path: link with ``request.url("/loyalty")``;
    * ``csrf``: the token to put in a form's hidden ``_csrf`` field
      (``request.csrf_field()`` gives the whole field);
    * ``htmx``: the request came from htmx (answer a fragment).
    """

    crm: Any
    user: AdminUser
    method: str
    path_params: dict[str, Any]
    query: dict[str, str]
    form: dict[str, str]
    base: str
    csrf: str
    htmx: bool
    workspace: str
    admin: AdminApp
    session: Session | None = None
    #: the request's path and query, as the browser sent them
    path: str = ""

    def url(self, path: str, **query: Any) -> str:
        """The URL of an admin path (``"/customers/7"``) with query parameters."""
        q = "&".join(f"{quote(str(k))}={quote(str(v))}" for k, v in query.items() if v is not None and v != "")
        return f"{self.base}{path}" + (f"?{q}" if q else "")

    def csrf_field(self) -> Markup:
        return Markup('<input type="hidden" name="_csrf" value="{}">').format(self.csrf)

    def require(self, role: str) -> None:
        """Raise :class:`Forbidden` unless the user has ``role`` or above."""
        if not self.user.at_least(role):
            raise Forbidden(f"this needs the {role} role; you are {self.user.role}")


View = Callable[[AdminRequest], Any]


@define
class Route:
    path: str
    methods: tuple[str, ...]
    view: View
    role: str
    plugin: str | None = None
    name: str = ""


class AdminApp:
    """Everything the admin's handlers share (at ``app.state.ecrm_admin``)."""

    def __init__(self, crm: CRM, config: AdminConfig) -> None:
        self.crm = crm
        self.config = config
        self.users = Users(crm)
        self.sessions = Sessions(
            crm, lifetime=timedelta(hours=config.session_hours), idle=timedelta(minutes=config.session_idle_minutes)
        )
        self.throttle = LoginThrottle(
            per_account=config.login_failures_per_account,
            per_address=config.login_failures_per_address,
            window=config.login_window_minutes * 60,
            max_keys=config.login_throttle_keys,
        )
        self._views: dict[str, Any] = {}
        self._lock = threading.Lock()
        key = config.secret
        if key is None:
            from ecrm_core.signing import secret_from_env

            env = secret_from_env()
            key = env[0] if env else None
        if key is None:
            log.warning(
                "ecrm admin: no secret (AdminConfig(secret=...) or ECRM_SECRET); login forms are signed "
                "with a random key of this process"
            )
            key = secrets.token_bytes(32)
        self._key = key.encode() if isinstance(key, str) else key
        self.cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self.refreshing: set[tuple[str, str]] = set()

    # -- workspaces --------------------------------------------------------
    def crm_for(self, workspace: str) -> Any:
        view = self._views.get(workspace)
        if view is None:
            with self._lock:
                view = self._views.get(workspace)
                if view is None:
                    view = self.crm if workspace == self.crm.workspace else self.crm.in_workspace(workspace)
                    self._views[workspace] = view
        return view

    def workspaces_for(self, user: AdminUser) -> list[str]:
        """The workspaces the user may switch to (the ``workspaces`` table, the default, their own list)."""
        import sqlalchemy as sa

        w = self.crm.db.tables["workspaces"]
        key = ("*", "workspaces")
        hit = self.cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            known = hit[1]
        else:
            with self.crm.db.read() as conn:
                known = {str(r) for r in conn.execute(sa.select(w.c.id).limit(1000)).scalars()}
            known.add(self.crm.workspace)
            self.cache[key] = (time.monotonic() + 30, known)
        names = set(known) | {s for s in user.workspaces if s != "*"}
        return sorted(n for n in names if user.may_see(n))

    # -- cached figures (dashboard) ----------------------------------------
    def cached(self, workspace: str, name: str, compute: Callable[[], Any], *, ttl: float | None = None) -> Any:
        """``compute()`` at most every ``ttl`` (default ``dashboard_ttl``) seconds per
        workspace; a stale value is served while a background thread computes the next one."""
        ttl = self.config.dashboard_ttl if ttl is None else ttl
        key = (workspace, name)
        hit = self.cache.get(key)
        now = time.monotonic()
        if hit is not None:
            if hit[0] <= now and key not in self.refreshing:
                self.refreshing.add(key)

                def refresh() -> None:
                    try:
                        self.cache[key] = (time.monotonic() + ttl, compute())
                    except Exception:  # pragma: no cover - logged, the old value stays
                        log.exception("ecrm admin: refreshing %s failed", name)
                    finally:
                        self.refreshing.discard(key)

                threading.Thread(target=refresh, name=f"admin-{name}", daemon=True).start()
            return hit[1]
        value = compute()
        if len(self.cache) >= _MAX_CACHED:  # bounded: report parameters are chosen by users
            for stale in sorted(self.cache, key=lambda k: self.cache[k][0])[: _MAX_CACHED // 4]:
                self.cache.pop(stale, None)
        self.cache[key] = (now + ttl, value)
        return value

    # -- login form CSRF ------------------------------------------------------
    def login_token(self, pre: str) -> str:
        return hmac.new(self._key, b"admin-login:" + pre.encode(), hashlib.sha256).hexdigest()

    def check_login_token(self, pre: str | None, token: str | None) -> bool:
        if not pre or not token or len(pre) > 100:
            return False
        return hmac.compare_digest(self.login_token(pre), token)

    # -- identity ---------------------------------------------------------------
    def client_address(self, request: Request[Any, Any, Any]) -> str | None:
        """The address failed logins are counted against (``AdminConfig.client_address``, else the peer)."""
        if self.config.client_address is not None:
            return self.config.client_address(request)
        client = request.client
        return client.host if client is not None else None

    def identify(self, request: Request[Any, Any, Any]) -> tuple[Session | None, str | None, AdminUser | None]:
        """``(session, token, host_user)`` of a request (any may be ``None``)."""
        token = request.cookies.get(COOKIE)
        session = self.sessions.get(token) if token else None
        host_user = None
        if self.config.authenticate is not None:
            host_user = self.config.authenticate(request)
            if host_user is not None and not isinstance(host_user, AdminUser):
                raise TypeError("AdminConfig.authenticate must return an ecrm_admin.AdminUser or None")
            if host_user is not None and (
                session is None or session.source != "host" or session.user.username != host_user.username
            ):
                session = None  # a new host session is started by the pipeline
            if host_user is None and session is not None and session.source == "host":
                session = None  # the host logged them out
            if host_user is not None and session is not None:
                session = Session(
                    id_hash=session.id_hash,
                    user=host_user,
                    workspace=session.workspace,
                    csrf=session.csrf,
                    source="host",
                    expires_at=session.expires_at,
                )
        return session, token, host_user

    def default_workspace(self, user: AdminUser) -> str:
        if user.may_see(self.crm.workspace):
            return self.crm.workspace
        spaces = self.workspaces_for(user)
        if not spaces:
            raise Forbidden("your account may see no workspace")
        return spaces[0]

    # -- pages -------------------------------------------------------------------
    def nav(self, user: AdminUser) -> list[tuple[str, list[tuple[str, str]]]]:
        """Navigation sections with ``(title, path)`` entries the user may open."""
        from .views import BUILTIN_NAV

        sections: dict[str, list[tuple[int, str, str]]] = {}
        for section, order, title, path, role in BUILTIN_NAV:
            if user.at_least(role):
                sections.setdefault(section, []).append((order, title, path))
        for page in self.crm.registry.admin_pages.values():
            if page.nav and "{" not in page.path and user.at_least(page.role):
                sections.setdefault(page.nav_section or "Plugins", []).append((page.order, page.title, page.path))
        order = ["Work", "Marketing", "Messages"]
        names = sorted(sections, key=lambda s: (order.index(s) if s in order else len(order), s))
        return [(s, [(t, p) for _o, t, p in sorted(sections[s])]) for s in names]

    def page(self, request: AdminRequest, template: str, **context: Any) -> Html:
        """Render a full page (or, for htmx, ``template`` is rendered the same)."""
        env = environment()
        body = env.get_template(template).render(
            r=request,
            base=request.base,
            user=request.user,
            csrf=request.csrf,
            nav=self.nav(request.user),
            workspace=request.workspace,
            workspaces=self.workspaces_for(request.user),
            config=self.config,
            htmx_js=HTMX,
            **context,
        )
        return Html(body)

    def fragment(self, template: str, **context: Any) -> Html:
        return Html(environment().get_template(template).render(**context))


def _html_response(body: str, status: int = 200, headers: Mapping[str, str] | None = None) -> Any:
    from litestar import Response

    h = {
        "content-security-policy": CSP,
        "x-content-type-options": "nosniff",
        "referrer-policy": "same-origin",
        "x-frame-options": "SAMEORIGIN",
        "cache-control": "no-store",
    }
    h.update(headers or {})
    return Response(body, status_code=status, media_type="text/html; charset=utf-8", headers=h)


def _redirect(url: str, cookies: Sequence[Any] = ()) -> Any:
    from litestar import Response

    return Response(
        "",
        status_code=303,
        headers={"location": url, "cache-control": "no-store", "content-security-policy": CSP},
        cookies=list(cookies),
    )


def _safe_next(base: str, target: str | None) -> str:
    """Only a path under the admin (no scheme, no host, no ``//``): no open redirect."""
    if not target or not target.startswith((base + "/") if base else "/") or target.startswith("//"):
        return base + "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target:
        return base + "/"
    return target


class Pipeline:
    """Runs one admin request through login, role, CSRF and the view."""

    def __init__(self, admin: AdminApp) -> None:
        self.admin = admin

    def cookie(self, token: str | None, *, pre: bool = False) -> Any:
        from litestar.datastructures import Cookie

        cfg = self.admin.config
        return Cookie(
            key=PRE_COOKIE if pre else COOKIE,
            value=token or "",
            path=cfg.path or "/",
            secure=cfg.secure_cookies,
            httponly=True,
            samesite="lax",
            max_age=None if token else 0,
        )

    def serve(self, request: Request[Any, Any, Any], form: dict[str, str], route: Route) -> Any:
        if route.role == "public":  # the login pages: they do their own checks
            return route.view(self, request, form)  # type: ignore[call-arg]
        try:
            return self._serve(request, form, route)
        except Forbidden as exc:  # e.g. an account that may see no workspace at all
            return self._forbidden(None, str(exc), ())

    def _serve(self, request: Request[Any, Any, Any], form: dict[str, str], route: Route) -> Any:
        admin = self.admin
        base = admin.config.path
        is_htmx = request.headers.get("hx-request") == "true"
        session, token, host_user = admin.identify(request)
        cookies = []
        if session is None and host_user is not None:
            workspace = admin.default_workspace(host_user)
            token = admin.sessions.start(host_user, workspace, source="host", replaces=token)
            cookies.append(self.cookie(token))
            session = admin.sessions.get(token)
            assert session is not None
            session = Session(
                id_hash=session.id_hash,
                user=host_user,
                workspace=session.workspace,
                csrf=session.csrf,
                source="host",
                expires_at=session.expires_at,
            )
            if request.method == "POST":
                # a brand-new session has no token the page could have sent
                return self._forbidden(None, "your session was renewed; reload the page and try again", cookies)
        if session is None:
            if request.method == "POST" or is_htmx:
                return _html_response(str(error_box("Signed out.", "Log in again.")), 401)
            if admin.config.authenticate is not None and not admin.config.password_login and admin.config.login_url:
                return _redirect(admin.config.login_url)
            ended = "&ended=1" if token else ""  # the cookie named a session that ended
            return _redirect(f"{base}/login?next={quote(request.url.path)}{ended}")
        user = session.user
        if not user.may_see(session.workspace):
            session = Session(
                id_hash=session.id_hash,
                user=user,
                workspace=admin.default_workspace(user),
                csrf=session.csrf,
                source=session.source,
                expires_at=session.expires_at,
            )
        if not user.at_least(route.role):
            return self._forbidden(session, f"this page needs the {route.role} role; you are {user.role}", cookies)
        if request.method == "POST":
            sent = form.get("_csrf") or request.headers.get("x-csrf-token") or ""
            if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                return self._forbidden(
                    session, "the form's security token is missing or wrong; reload the page", cookies
                )
        areq = AdminRequest(
            crm=admin.crm_for(session.workspace),
            user=user,
            method=request.method,
            path_params=dict(request.path_params),
            query={k: v for k, v in request.query_params.items() if isinstance(v, str)},
            form={k: v for k, v in form.items() if k != "_csrf"},
            base=base,
            csrf=session.csrf,
            htmx=is_htmx,
            workspace=session.workspace,
            admin=admin,
            session=session,
            path=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        )
        try:
            result = route.view(areq)
        except Forbidden as exc:
            return self._forbidden(session, str(exc), cookies)
        except NotFound as exc:
            return self._error(areq, 404, "Not found.", str(exc), cookies)
        except ValidationError as exc:
            return self._error(areq, 400, "Not valid.", str(exc), cookies)
        except EcrmError as exc:  # Conflict, a channel's configuration…: the message is for people
            if route.plugin is not None:
                admin.crm.plugins.record_failure(route.plugin, f"admin page {route.path}", exc)
            return self._error(areq, 409, "Not possible.", str(exc), cookies)
        except Exception as exc:
            if route.plugin is None:
                raise
            admin.crm.plugins.record_failure(route.plugin, f"admin page {route.path}", exc)
            return self._error(
                areq,
                500,
                "This page failed.",
                f"The plugin {route.plugin!r} raised {type(exc).__name__}; the failure is recorded on the plugins page.",
                cookies,
            )
        if isinstance(result, Redirect):
            return _redirect(result.url, cookies)
        if isinstance(result, Html):
            return self._with_cookies(_html_response(result.body, result.status, result.headers), cookies)
        # a plugin's value: wrap it in the layout
        if areq.htmx:
            return self._with_cookies(_html_response(str(to_html(result))), cookies)
        page = admin.page(areq, "plugin_page.html", title=route.name, content=to_html(result), plugin=route.plugin)
        return self._with_cookies(_html_response(page.body), cookies)

    @staticmethod
    def _with_cookies(response: Any, cookies: Sequence[Any]) -> Any:
        for c in cookies:
            response.cookies.append(c)
        return response

    def _error(self, areq: AdminRequest, status: int, title: str, message: str, cookies: Sequence[Any]) -> Any:
        if areq.htmx:
            return self._with_cookies(_html_response(str(error_box(title, message)), status), cookies)
        page = self.admin.page(areq, "error.html", title=title, message=message, status=status)
        return self._with_cookies(_html_response(page.body, status), cookies)

    def _forbidden(self, session: Session | None, message: str, cookies: Sequence[Any]) -> Any:
        body = (
            environment()
            .get_template("forbidden.html")
            .render(
                base=self.admin.config.path,
                message=message,
                config=self.admin.config,
                htmx_js=HTMX,
                user=session.user if session else None,
            )
        )
        return self._with_cookies(_html_response(body, 403), cookies)


def _read_form(request: Request[Any, Any, Any], raw: bytes) -> dict[str, str]:
    from urllib.parse import parse_qsl

    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        return {}
    out: dict[str, str] = {}
    for k, v in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=200):
        out[k] = v.replace("\r\n", "\n")
    return out


def _route_handler(pipeline: Pipeline, route: Route) -> Any:
    from litestar import Request
    from litestar import route as litestar_route

    max_body = pipeline.admin.config.max_body

    async def endpoint(request: Request[Any, Any, Any]) -> Any:
        form: dict[str, str] = {}
        if request.method == "POST":
            raw = await request.body()
            if len(raw) > max_body:
                return _html_response(str(error_box("Too large.", f"send at most {max_body} bytes")), 413)
            form = _read_form(request, raw)
        return await anyio.to_thread.run_sync(partial(pipeline.serve, request, form, route))

    endpoint.__name__ = f"admin_{abs(hash((route.path, route.methods)))}"
    return litestar_route(
        route.path or "/",
        http_method=list(route.methods),
        name=route.name or None,
        signature_namespace={"Request": Request},
        request_max_body_size=max_body + 1,
    )(endpoint)


def _static_handler() -> Any:
    from litestar import Request, Response, get

    files = {
        p.relative_to(STATIC_DIR).as_posix(): p for p in STATIC_DIR.rglob("*") if p.is_file() and p.suffix in _TYPES
    }

    @get(
        "/static/{file:path}",
        sync_to_thread=False,
        name="admin_static",
        signature_namespace={"Response": Response, "Request": Request},
    )
    def static(request: Request[Any, Any, Any]) -> Response[bytes]:
        found = files.get(str(request.path_params.get("file", "")).lstrip("/"))
        if found is None:
            return Response(b"not found", status_code=404, media_type="text/plain")
        return Response(
            found.read_bytes(),
            media_type=_TYPES[found.suffix],
            headers={"cache-control": "public, max-age=3600", "x-content-type-options": "nosniff"},
        )

    return static


def plugin_routes(admin: AdminApp) -> list[Route]:
    """A :class:`Route` per ``AdminPage`` a plugin registered."""
    out = []
    for page in admin.crm.registry.admin_pages.values():
        out.append(_plugin_route(page))
    return out


def _plugin_route(page: AdminPage) -> Route:
    return Route(
        path=page.path, methods=page.methods, view=page.handler, role=page.role, plugin=page.plugin, name=page.title
    )


def create_admin(crm: CRM, config: AdminConfig | None = None, **options: Any) -> Litestar:
    """A Litestar (ASGI) app serving the admin of ``crm``.

    ::

        from ecrm_admin import create_admin
        app = create_admin(crm, path="/admin")       # mount it at /admin in the host

    :param config: an :class:`~ecrm_admin.config.AdminConfig`, or its fields
        as keyword ``options``.

    The CRM must have the admin plugin (``ecrm_admin.plugin``: its tables)
    loaded and be upgraded (``crm.upgrade()`` / ``ecrm db upgrade``).
    """
    from litestar import Litestar, Router

    from .views import builtin_routes

    if config is None:
        config = AdminConfig(**options)
    elif options:
        raise TypeError("pass either config= or keyword options, not both")
    if "admin_users" not in crm.db.tables:
        raise EcrmError(
            "the admin plugin is not loaded in this CRM: install ecrm-admin (entry point 'admin') or pass "
            "CRM(plugins=[ecrm_admin.plugin]), then run `ecrm db upgrade`"
        )
    admin = AdminApp(crm, config)
    pipeline = Pipeline(admin)
    routes = builtin_routes(admin)
    taken = {(r.path, m) for r in routes for m in r.methods}
    for route in plugin_routes(admin):
        clash = [m for m in route.methods if (route.path, m) in taken]
        if clash:
            crm.plugins.record_failure(
                route.plugin or "?",
                f"admin page {route.path}",
                ValueError(f"the path {route.path!r} is the admin's own; choose another path"),
            )
            continue
        routes.append(route)
    handlers = [_route_handler(pipeline, r) for r in routes]
    handlers.append(_static_handler())
    app = Litestar(
        route_handlers=[Router(path=config.path or "/", route_handlers=handlers)],
        debug=False,
        openapi_config=None,
        request_max_body_size=config.max_body + 1,
    )
    app.state["ecrm_admin"] = admin
    return app
