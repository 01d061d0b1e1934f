"""Fixtures for the admin: a CRM with the admin, e-mail and campaigns plugins,
users of each role, an in-process client and a live server on 127.0.0.1."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ecrm_core import CRM

pytest.importorskip("ecrm_admin", reason="install plugins/admin: pip install -e plugins/admin")
from ecrm_admin import plugin as admin_plugin

PASSWORD = "correct horse battery"
ROLES = ("agent", "marketer", "admin")


def plugins() -> list[Any]:
    out: list[Any] = [admin_plugin]
    try:
        from ecrm_email import plugin as email_plugin

        out.append(email_plugin)
    except ImportError:  # pragma: no cover
        pass
    try:
        from ecrm_campaigns import plugin as campaigns_plugin

        out.append(campaigns_plugin)
    except ImportError:  # pragma: no cover
        pass
    return out


@pytest.fixture
def admin_crm(crm_factory: Callable[..., CRM]) -> CRM:
    crm = crm_factory(
        plugins=plugins(),
        secret="test-secret",
        channels={"email": {"from": "shop@example.com", "base_url": "https://shop.example/crm"}},
    )
    from ecrm_admin import Users

    users = Users(crm)
    for role in ROLES:
        users.create(role, PASSWORD, role=role)
    return crm


def build(crm: CRM, **options: Any) -> Any:
    from ecrm_admin import create_admin

    options.setdefault("secret", "test-secret")
    app = create_admin(crm, **options)
    app.debug = True  # a 500 in a test shows its traceback
    return app


@pytest.fixture
def admin_build() -> Callable[..., Any]:
    """``build(crm, **options)``: the admin app of a CRM, for tests."""
    return build


class Browser:
    """An httpx-like client of the admin (Litestar's TestClient) that can log in and keeps the CSRF token."""

    def __init__(self, client: Any, base: str = "/admin") -> None:
        self.client = client
        self.base = base

    def login(self, username: str, password: str = PASSWORD) -> Any:
        page = self.client.get(f"{self.base}/login")
        token = re.search(r'name="_csrf" value="([^"]+)"', page.text).group(1)
        return self.client.post(
            f"{self.base}/login",
            data={"_csrf": token, "username": username, "password": password, "next": f"{self.base}/"},
            follow_redirects=False,
        )

    def csrf(self, path: str = "/") -> str:
        page = self.client.get(f"{self.base}{path}")
        return re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text).group(1)

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(f"{self.base}{path}", **kw)

    def post(self, path: str, data: dict[str, Any] | None = None, *, csrf: str | None = "auto", **kw: Any) -> Any:
        data = dict(data or {})
        if csrf == "auto":
            csrf = self.csrf()
        if csrf is not None:
            data["_csrf"] = csrf
        kw.setdefault("follow_redirects", False)
        return self.client.post(f"{self.base}{path}", data=data, **kw)


@pytest.fixture
def admin_client(admin_crm: CRM) -> Iterator[Callable[..., Browser]]:
    from litestar.testing import TestClient

    clients = []

    def make(role: str | None = "admin", **options: Any) -> Browser:
        app = build(admin_crm, **options)
        client = TestClient(app, base_url="https://testserver.local")
        client.__enter__()
        clients.append(client)
        b = Browser(client, options.get("path", "/admin"))
        if role:
            r = b.login(role)
            assert r.status_code == 303, r.text
        return b

    yield make
    for c in clients:
        c.__exit__(None, None, None)


class LiveServer:
    """The admin served by uvicorn in a thread on 127.0.0.1 (a real socket)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.sock = sock
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the admin server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def live_admin(admin_crm: CRM) -> Iterator[Callable[..., LiveServer]]:
    servers = []

    def start(**options: Any) -> LiveServer:
        s = LiveServer(build(admin_crm, **options))
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()
