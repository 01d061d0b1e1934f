"""``ecrm_api.testing``: test the API over real HTTP on 127.0.0.1.

Installed as a pytest plugin (entry point ``pytest11``); with ecrm-api
installed these fixtures are available in any test suite:

* ``api_crm`` — a CRM (from ``crm_factory``) with the API plugin registered
  and its table migrated;
* ``live_api`` — a :class:`LiveApi`: ``create_app(api_crm)`` served by uvicorn
  on a free loopback port for the test;
* ``live_api_factory`` — serve other CRMs or configurations:
  ``live_api_factory(crm, rate_limit=("second", 5))``.

``LiveApi.client(scopes=..., workspace=...)`` makes a key and returns an
:class:`httpx.Client` that sends it; ``LiveApi.token(...)`` returns just the token.
The tracking routes answer once messages are in the ingest inbox:
``LiveApi.wait_ingested()`` waits until the server's processor stored them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover
    import httpx
    from ecrm_core.crm import CRM
    from litestar import Litestar

__all__ = ["LiveApi", "serve_in_thread"]


class _Server:
    def __init__(self, app: Any, port: int = 0) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="ecrm-api-test-server", daemon=True)

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test API server did not start")
            time.sleep(0.01)
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve_in_thread(app: Any, port: int = 0) -> tuple[str, Callable[[], None]]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 (``port``, default a free one); return ``(url, stop)``."""
    server = _Server(app, port)
    return server.start(), server.stop


class LiveApi:
    """A served API: :attr:`url`, :attr:`app`, :attr:`crm` and helpers for keys and clients."""

    def __init__(self, crm: CRM, app: Litestar, url: str) -> None:
        self.crm = crm
        self.app = app
        self.url = url
        self._clients: list[httpx.Client] = []

    @property
    def keys(self) -> Any:
        """The app's :class:`~ecrm_api.keys.Keys` (revoking through it takes effect at once)."""
        return self.app.state["ecrm"].keys

    def token(self, scopes: Any = ("admin",), *, workspace: str | None = None, name: str = "test") -> str:
        return str(self.keys.create(name, scopes=scopes, workspace=workspace).token)

    def client(
        self, scopes: Any = ("admin",), *, workspace: str | None = None, token: str | None = None, **kwargs: Any
    ) -> httpx.Client:
        """An httpx client on :attr:`url` that sends a (new) key with ``scopes``; closed after the test."""
        import httpx

        headers = dict(kwargs.pop("headers", {}))
        if token is None and scopes is not None:
            token = self.token(scopes, workspace=workspace)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)
        self._clients.append(client)
        return client

    def wait_ingested(self, timeout: float = 30.0) -> None:
        """Wait until the ingest inbox is empty: every tracking message answered
        200 so far is stored (or rejected), by the server's processor thread or
        a worker.  Raises :class:`TimeoutError`."""
        from .inbox import inbox_stats

        deadline = time.monotonic() + timeout
        while inbox_stats(self.crm).rows:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the ingest inbox was not drained within {timeout} s")
            time.sleep(0.02)

    def close(self) -> None:
        for c in self._clients:
            c.close()


@pytest.fixture
def api_crm(crm_factory: Callable[..., CRM]) -> CRM:
    """A CRM on a fresh SQLite file with the API plugin (and its table)."""
    from . import plugin

    return crm_factory(plugins=[plugin])


@pytest.fixture
def live_api_factory() -> Iterator[Callable[..., LiveApi]]:
    """Serve ``create_app(crm, **options)`` on 127.0.0.1; stopped after the test."""
    from .app import create_app

    running: list[tuple[LiveApi, Callable[[], None]]] = []

    def factory(crm: CRM, **options: Any) -> LiveApi:
        # gc.freeze() is for a server process; tests serve many apps in one process
        options.setdefault("gc_freeze", False)
        app = create_app(crm, **options)
        url, stop = serve_in_thread(app)
        live = LiveApi(crm, app, url)
        running.append((live, stop))
        return live

    yield factory
    for live, stop in running:
        live.close()
        stop()


@pytest.fixture
def live_api(api_crm: CRM, live_api_factory: Callable[..., LiveApi]) -> LiveApi:
    """The API of ``api_crm`` served on a free loopback port (no rate limit)."""
    return live_api_factory(api_crm, rate_limit=None)
