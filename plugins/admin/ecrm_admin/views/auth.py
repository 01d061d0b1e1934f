"""Login, logout and the workspace switch."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from ..app import PRE_COOKIE, AdminRequest, Forbidden, Redirect, Route, _html_response, _redirect, _safe_next
from ..render import environment

if TYPE_CHECKING:  # pragma: no cover
    from litestar import Request

    from ..app import AdminApp, Pipeline


def _login_page(pipeline: Pipeline, pre: str, next_url: str, error: str | None, status: int = 200) -> Any:
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
            user=None,
        )
    )
    response = _html_response(body, status)
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
        return _login_page(pipeline, pre, _safe_next(base, request.query_params.get("next")), None)
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
    user = admin.users.authenticate(form.get("username", ""), form.get("password", ""))
    if user is None:
        return _login_page(pipeline, pre or secrets.token_urlsafe(24), next_url, "Wrong user name or password.", 401)
    try:
        workspace = admin.default_workspace(user)
    except Forbidden as exc:
        return _login_page(pipeline, pre or secrets.token_urlsafe(24), next_url, str(exc), 403)
    token = admin.sessions.start(user, workspace, replaces=request.cookies.get("ecrm_admin"))
    return _redirect(next_url, [pipeline.cookie(token), pipeline.cookie(None, pre=True)])


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
