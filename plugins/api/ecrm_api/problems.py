"""Errors as RFC 9457 ``application/problem+json`` documents.

Every problem has ``type`` (``urn:ecrm:problem:<slug>``), ``title``,
``status`` and ``detail``; validation problems add ``errors``: one
``{"field", "problem", "fix"}`` per rejected value, ``field`` a dotted path
into the request (``body.email``, ``query.limit``, ``body.batch[3].timestamp``).
No stack trace or internal detail ever reaches the client: unexpected
errors are logged with an id that the 500 problem repeats.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from ecrm_core.errors import BatchError, Conflict, EcrmError, HookFailed, IdempotencyConflict, NotFound, ValidationError
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    SerializationException,
    TooManyRequestsException,
)
from litestar.exceptions import ValidationException as LitestarValidationException
from litestar.plugins.problem_details import ProblemDetailsException

__all__ = ["problem", "exception_handlers", "render_problem", "problem_responses", "ProblemDetailsException"]

log = logging.getLogger("ecrm_api")
#: Field errors listed in one problem document; ``error_total`` counts them all.
MAX_LISTED = 100
MEDIA_TYPE = "application/problem+json"


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ProblemDetailsException:
    """Build a problem exception (raise it from a handler)."""
    body: dict[str, Any] = dict(extra)
    if errors is not None:
        body["errors"] = errors
    return ProblemDetailsException(
        status_code=status,
        type_=f"urn:ecrm:problem:{slug}",
        title=title,
        detail=detail,
        headers=headers,
        extra=body or None,
    )


def _field_error(exc: ValidationError, prefix: str = "body") -> dict[str, Any]:
    field = exc.field if not prefix else f"{prefix}.{exc.field}" if exc.field else prefix
    return {"field": field, "problem": exc.problem, "fix": exc.fix}


def render_problem(request: Request[Any, Any, Any], p: ProblemDetailsException) -> Response[Any]:
    """A problem exception as a response, with ``instance`` set to the request path."""
    if p.instance is None:
        p.instance = request.url.path
    return p.to_response(request)


_render = render_problem


def _on_ecrm(request: Request[Any, Any, Any], exc: EcrmError) -> Response[Any]:
    if isinstance(exc, ValidationError):
        p = problem(422, "validation", "Invalid value", str(exc), errors=[_field_error(exc, _prefix(exc))])
    elif isinstance(exc, BatchError):
        errs = []
        for e in exc.errors[:MAX_LISTED]:  # the answer's size is bounded: the first ones, and the count
            inner = e.error
            if isinstance(inner, ValidationError):
                errs.append(_field_error(inner, f"body[{e.index}]"))
            else:
                errs.append({"field": f"body[{e.index}]", "problem": str(inner), "fix": "fix or remove this item"})
        p = problem(
            422,
            "validation",
            "Invalid items",
            str(exc),
            errors=errs,
            error_total=len(exc.errors),
            committed=exc.committed,
        )
    elif isinstance(exc, NotFound):
        p = problem(404, "not-found", "Not found", str(exc))
    elif isinstance(exc, IdempotencyConflict):
        p = problem(409, "idempotency-conflict", "Idempotency key reused", str(exc), key=exc.key)
    elif isinstance(exc, Conflict):
        p = problem(409, "conflict", "Conflict", str(exc))
    elif isinstance(exc, HookFailed):
        # The server's fault, not the request's; the plugin's own message may hold internals: logged, not sent.
        p = problem(500, "plugin-failed", "A plugin failed", exc.public, plugin=exc.plugin)
    else:
        p = problem(400, "bad-request", "Request rejected", str(exc))
    return _render(request, p)


def _prefix(exc: ValidationError) -> str:
    # Fields that name a query parameter or a path part already say so.
    return "" if exc.field.startswith(("query.", "path.", "header.", "body")) else "body"


_KEY = re.compile(r"^\$\.?")
_UNKNOWN = re.compile(r"unknown field `([^`]{1,200})`")
_KEY_ERROR = re.compile(r"'[A-Za-z_][A-Za-z0-9_]*'")


def _on_litestar_validation(request: Request[Any, Any, Any], exc: LitestarValidationException) -> Response[Any]:
    errs = []
    extra = exc.extra if isinstance(exc.extra, list) else []
    for item in extra:
        if not isinstance(item, dict):
            continue
        source = item.get("source") or "body"
        source = str(getattr(source, "value", source))  # Litestar's ParamType enum: "query", "path", ...
        key = str(item.get("key") or "")
        key = _KEY.sub("", key)
        if key == "data" and source == "body":  # Litestar names the whole body by its kwarg
            key = ""
        field = f"{source}.{key}" if key else str(source)
        message = str(item.get("message", "invalid"))
        unknown = _UNKNOWN.search(message)
        if unknown:  # name the unknown field itself, not the object holding it
            field = f"{field}.{unknown.group(1)}"
        if _KEY_ERROR.fullmatch(message):
            # Litestar's KeyError for a parameter it did not get: for the body,
            # an empty request body.  Never show the internal message.
            missing = "the body is empty" if field == "body" else "missing"
            errs.append(
                {
                    "field": field,
                    "problem": missing,
                    "fix": "send a JSON object as the body" if field == "body" else "add this field",
                }
            )
            continue
        errs.append({"field": field, "problem": message, "fix": _fix(item)})
    detail = str(exc.detail or "the request does not match the API's schema")
    if _KEY_ERROR.fullmatch(detail):
        detail = "the request does not match the API's schema"
    if not errs:
        errs.append(
            {"field": "body", "problem": detail, "fix": "send a JSON document as described in the OpenAPI spec"}
        )
    if "Content-Type" in detail or "content type" in detail.lower():
        p = problem(415, "unsupported-media-type", "Unsupported media type", detail, errors=errs)
    else:
        p = problem(400, "invalid-request", "Invalid request", _summary(errs, detail), errors=errs)
    return _render(request, p)


def _summary(errs: list[dict[str, Any]], fallback: str) -> str:
    first = errs[0]
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{first['field']}: {first['problem']}{more}" if first else fallback


def _fix(item: dict[str, Any]) -> str:
    msg = str(item.get("message", "")).lower()
    if "missing required" in msg:
        return "add this field"
    if "unknown field" in msg or "object contains unknown field" in msg:
        return "remove this field (see the OpenAPI spec for the fields this endpoint takes)"
    if "expected" in msg:
        return "send a value of the type the OpenAPI spec names"
    return "see the OpenAPI spec for what this field takes"


def _on_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    headers = dict(exc.headers or {})
    if isinstance(exc, ProblemDetailsException):
        return _render(request, exc)
    if isinstance(exc, NotAuthorizedException):
        headers.setdefault("WWW-Authenticate", 'Bearer realm="ecrm", Basic realm="ecrm"')
        p = problem(401, "unauthorized", "Not authenticated", str(exc.detail), headers=headers)
    elif isinstance(exc, PermissionDeniedException):
        p = problem(403, "forbidden", "Forbidden", str(exc.detail), headers=headers)
    elif isinstance(exc, TooManyRequestsException):
        reset = headers.get("RateLimit-Reset")
        headers["Retry-After"] = str(max(1, int(reset))) if reset and reset.lstrip("-").isdigit() else "1"
        p = problem(
            429,
            "rate-limited",
            "Too many requests",
            f"this API key's rate limit is used up; retry after {headers['Retry-After']} s",
            headers=headers,
        )
    elif status == 413:
        p = problem(
            413,
            "too-large",
            "Request body too large",
            f"{exc.detail}; send smaller requests (split batches)",
            errors=[{"field": "body", "problem": str(exc.detail), "fix": "send smaller requests (split batches)"}],
            headers=headers,
        )
    elif status == 404:
        p = problem(404, "not-found", "Not found", f"no route {request.method} {request.url.path}", headers=headers)
    elif status == 405:
        p = problem(405, "method-not-allowed", "Method not allowed", str(exc.detail), headers=headers)
    elif status == 400 and isinstance(exc.__cause__, SerializationException):
        # The body could not be decoded (malformed JSON, invalid UTF-8, a lone
        # surrogate, nothing at all): name the body, like every other 400.
        what = str(exc.detail) or "not valid JSON"
        p = problem(
            400,
            "invalid-request",
            "Invalid request",
            f"body: not valid JSON ({what})",
            errors=[
                {
                    "field": "body",
                    "problem": f"not valid JSON ({what})",
                    "fix": "send one JSON document, UTF-8 encoded",
                }
            ],
            headers=headers,
        )
    elif status == 400:
        p = problem(
            400,
            "invalid-request",
            "Invalid request",
            str(exc.detail),
            errors=[{"field": "request", "problem": str(exc.detail), "fix": "send a well-formed HTTP request"}],
            headers=headers,
        )
    else:
        title = str(exc.detail) if status < 500 else "Server error"
        p = problem(
            status, "http-error", title, str(exc.detail) if status < 500 else "the server failed", headers=headers
        )
    return _render(request, p)


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    error_id = uuid.uuid4().hex[:12]
    log.exception("unexpected error %s on %s %s", error_id, request.method, request.url.path)
    p = problem(
        500,
        "internal",
        "Internal server error",
        f"the server failed to handle this request (error id {error_id}, logged on the server)",
        error_id=error_id,
    )
    return _render(request, p)


#: Modules that decode a request body: a RecursionError raised in one of them (the innermost
#: frame; msgspec's C decoder raises it in its caller's frame) is a body nested too deeply, and
#: so is msgspec's own ("... while deserializing an object", e.g. the tracking routes' decoder).
_BODY_DECODERS = ("ecrm_api.bodies", "litestar.serialization", "litestar.connection", "litestar._kwargs")
_MSGSPEC_TOO_DEEP = "while deserializing"


def _raised_in(exc: BaseException) -> str:
    """The module of the innermost frame of ``exc``'s traceback ("" when unknown)."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", ""))


def _on_too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    # msgspec refuses absurdly nested JSON with RecursionError while decoding the body; a
    # RecursionError anywhere else is a server bug, answered (and logged) as one.
    module = _raised_in(exc)
    decoding = _MSGSPEC_TOO_DEEP in str(exc) or any(module == m or module.startswith(m + ".") for m in _BODY_DECODERS)
    if not decoding:
        return _on_unexpected(request, exc)
    p = problem(
        400,
        "invalid-request",
        "Invalid request",
        "body: the JSON document is nested too deeply",
        errors=[{"field": "body", "problem": "nested too deeply", "fix": "send flatter JSON"}],
    )
    return _render(request, p)


def exception_handlers() -> dict[type[Exception] | int, Any]:
    """The handlers :func:`ecrm_api.create_app` installs."""
    return {
        RecursionError: _on_too_deep,
        EcrmError: _on_ecrm,
        LitestarValidationException: _on_litestar_validation,
        HTTPException: _on_http,
        Exception: _on_unexpected,
    }


# ----------------------------------------------------------------------
# OpenAPI: the problem documents a route can answer with
# ----------------------------------------------------------------------
import msgspec  # noqa: E402
from litestar.openapi.datastructures import ResponseSpec  # noqa: E402


class FieldError(msgspec.Struct):
    """One rejected value: where (a dotted path into the request), what was wrong, how to fix it."""

    field: str
    problem: str
    fix: str


class Problem(msgspec.Struct, omit_defaults=True):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None


_DESCRIPTIONS = {
    400: "The request is malformed or does not match the schema",
    401: "No valid API key",
    403: "The key lacks the scope this route needs",
    404: "Not found in the key's workspace",
    409: "Conflicts with what is stored",
    413: "The body is larger than the limit",
    415: "Unsupported content type",
    422: "A value was rejected",
    429: "Rate limit used up (see Retry-After)",
}


def problem_responses(*codes: int, public: bool = False) -> dict[int, ResponseSpec]:
    """OpenAPI responses for a handler: the problems every route can give, plus ``codes``."""
    base = {400, 413, 415, 422} if public else {400, 401, 403, 413, 415, 422, 429}
    return {
        code: ResponseSpec(
            data_container=Problem,
            description=_DESCRIPTIONS.get(code, "A problem"),
            media_type=MEDIA_TYPE,
            generate_examples=False,
        )
        for code in sorted(base | set(codes))
    }
