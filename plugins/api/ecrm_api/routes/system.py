"""Routes: health, readiness, the calling key, the plugin list."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE

from ..app import ApiState
from ..keys import ApiKey
from ..problems import problem_responses

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    #: the ingest inbox at its last reading (none yet: null): messages waiting, seconds the oldest waits
    inbox_depth: int | None = None
    inbox_lag: float | None = None


class Readiness(msgspec.Struct, omit_defaults=True):
    status: str
    database: str
    schema_up_to_date: bool
    pending_migrations: list[str]
    inbox_depth: int | None = None
    inbox_lag: float | None = None


class KeyInfo(msgspec.Struct):
    key_id: str
    name: str
    workspace: str
    scopes: list[str]


class PluginOut(msgspec.Struct):
    name: str
    source: str
    status: str
    version: str | None
    hook_api: str | None
    hooks: list[str]
    error: str | None = None


class PluginList(msgspec.Struct):
    hook_api_version: str
    plugins: list[PluginOut]


@get("/health", opt={"public": "liveness probe: says only that the process answers"}, tags=["system"])
async def health(api: NamedDependency[ApiState]) -> Health:
    """Liveness: the process answers (no database access); the ingest inbox's depth and lag as last read."""
    last = api.inbox.last
    if last is None:
        return Health(status="ok")
    return Health(status="ok", inbox_depth=last.depth, inbox_lag=round(last.lag, 3))


@get(
    "/ready",
    opt={"public": "readiness probe for load balancers: no data, only whether the schema is usable"},
    tags=["system"],
    sync_to_thread=True,
    responses={503: ResponseSpec(data_container=Readiness, description="Not ready", generate_examples=False)},
)
def ready(api: NamedDependency[ApiState]) -> Response[Readiness]:
    """Readiness: the database answers and ecrm's schema is up to date (503 otherwise)."""
    try:
        status = api.crm.schema_status()
    except Exception as exc:  # the database is down or unreachable
        body = Readiness(
            status="unavailable", database=type(exc).__name__, schema_up_to_date=False, pending_migrations=[]
        )
        return Response(body, status_code=HTTP_503_SERVICE_UNAVAILABLE)
    ok = bool(status["up_to_date"])
    depth = lag = None
    if ok:
        from ..inbox import inbox_stats

        st = inbox_stats(api.crm)
        depth, lag = st.depth, round(st.lag, 3)
    body = Readiness(
        status="ready" if ok else "migrations pending",
        database="ok",
        schema_up_to_date=ok,
        pending_migrations=sorted(status["pending"]),
        inbox_depth=depth,
        inbox_lag=lag,
    )
    return Response(body, status_code=200 if ok else HTTP_503_SERVICE_UNAVAILABLE)


@get("/me", opt={"scope": "read"}, tags=["system"], responses=problem_responses())
async def me(key: NamedDependency[ApiKey]) -> KeyInfo:
    """The calling API key: its id, name, workspace and scopes."""
    return KeyInfo(key_id=key.key_id, name=key.name, workspace=key.workspace, scopes=sorted(key.scopes))


@get("/plugins", opt={"scope": "read"}, tags=["system"], responses=problem_responses())
async def plugins(crm: NamedDependency[CRM]) -> PluginList:
    """The plugins of this ecrm: name, where it came from, status, version, hooks."""
    from ecrm_core.hookspecs import HOOK_API_VERSION

    out = [
        PluginOut(
            name=i.name,
            source=str(i.source),
            status=str(i.status),
            version=i.version,
            hook_api=i.hook_api,
            hooks=sorted(i.hooks),
            error=i.error,
        )
        for i in sorted(crm.plugins.info.values(), key=lambda i: i.name)
    ]
    return PluginList(hook_api_version=HOOK_API_VERSION, plugins=out)


HANDLERS: list[Any] = [health, ready, me, plugins]
