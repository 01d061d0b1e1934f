"""Login, logout and the workspace switch."""

from __future__ import annotations

import math
import secrets
from typing import TYPE_CHECKING, Any

from ..app import PRE_COOKIE, AdminRequest, Forbidden, Redirect, Route, _html_response, _redirect, _safe_next
from ..render import environment
from ..throttle import Refusal

if TYPE_CHECKING:  # pragma: no cover
    from litestar import Request

    from ..app import AdminApp, Pipeline


def _login_page(
    pipeline: Pipeline,
    pre: str,
    next_url: str,
    error: str | None,
    status: int = 200,
    headers: dict[str, str] | None = None,
    *,
    ended: bool = False,
) -> Any:
    admin = pipeline.admin
    body = (
        environment()
        .get_template("login.html")
        .render(
            base=admin.config.path,
            config=admin.config,
            token=admin.login_token(pre),
            next=next_url,
            error=error,
            ended=ended,
            user=None,
        )
    )
    response = _html_response(body, status, headers)
    response.cookies.append(pipeline.cookie(pre, pre=True))
    return response


def login(pipeline: Pipeline, request: Request[Any, Any, Any], form: dict[str, str]) -> Any:
    """GET: the login form (its CSRF token bound to a pre-login cookie); POST: log in.

    A successful login always starts a new session with a new random token
    and ends the one the browser brought (no session fixation)."""
    admin = pipeline.admin
    base = admin.config.path
    if not admin.config.password_login:
        if admin.config.login_url:
            return _redirect(admin.config.login_url)
        return _html_response("<p>Log in through the application.</p>", 404)
    if request.method == "GET":
        pre = request.cookies.get(PRE_COOKIE) or ""
        if not pre or len(pre) > 100:
            pre = secrets.token_urlsafe(24)
        ended = request.query_params.get("ended") == "1"
        return _login_page(pipeline, pre, _safe_next(base, request.query_params.get("next")), None, ended=ended)
    pre = request.cookies.get(PRE_COOKIE)
    next_url = _safe_next(base, form.get("next"))
    if not admin.check_login_token(pre, form.get("_csrf")):
        return _login_page(
            pipeline,
            secrets.token_urlsafe(24),
            next_url,
            "The form expired or was not sent by this page; log in again.",
            403,
        )
    username = form.get("username", "")
    address = admin.client_address(request)
    refusal = admin.throttle.check(username, address)
    if refusal is not None:
        return _login_page(
            pipeline,
            pre or secrets.token_urlsafe(24),
            next_url,
            _too_many(refusal),
            429,
            {"retry-after": str(refusal.retry_after)},
        )
    user = admin.users.authenticate(username, form.get("password", ""))
    if user is None:
        admin.throttle.failed(username, address)
        return _login_page(pipeline, pre or secrets.token_urlsafe(24), next_url, "Wrong user name or password.", 401)
    admin.throttle.succeeded(username)
    try:
        workspace = admin.default_workspace(user)
    except Forbidden as exc:
        return _login_page(pipeline, pre or secrets.token_urlsafe(24), next_url, str(exc), 403)
    token = admin.sessions.start(user, workspace, replaces=request.cookies.get("ecrm_admin"))
    return _redirect(next_url, [pipeline.cookie(token), pipeline.cookie(None, pre=True)])


def _too_many(refusal: Refusal) -> str:
    minutes = math.ceil(refusal.retry_after / 60)
    wait = f"{refusal.retry_after} seconds" if refusal.retry_after < 120 else f"{minutes} minutes"
    whose = "for this account" if refusal.scope == "account" else "from your network address"
    return f"Too many failed logins {whose}. Try again in {wait}."


def logout(request: AdminRequest) -> Any:
    """End this session (``everywhere=1``: every session of the user)."""
    if request.session is not None:
        if request.form.get("everywhere"):
            request.admin.sessions.end_all(request.user.username)
        request.admin.sessions.end_id(request.session.id_hash)
    if request.admin.config.authenticate is not None and request.admin.config.login_url:
        return Redirect(request.admin.config.login_url)
    return Redirect(f"{request.base}/login")


def switch_workspace(request: AdminRequest) -> Any:
    wanted = request.form.get("workspace", "")
    if wanted not in request.admin.workspaces_for(request.user):
        raise Forbidden(f"you may not see the workspace {wanted!r}")
    assert request.session is not None
    request.admin.sessions.switch(request.session, wanted)
    return Redirect(_safe_next(request.base, request.form.get("next")))


def routes(admin: AdminApp) -> list[Route]:
    return [
        Route(path="/login", methods=("GET", "POST"), view=login, role="public", name="Log in"),  # type: ignore[arg-type]
        Route(path="/logout", methods=("POST",), view=logout, role="agent", name="Log out"),
        Route(path="/workspace", methods=("POST",), view=switch_workspace, role="agent", name="Workspace"),
    ]
