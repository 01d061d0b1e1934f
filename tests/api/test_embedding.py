"""The API embedded in host apps (examples/asgi_mount, examples/flask_host), over real HTTP on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from ecrm_api import ApiConfig, Keys, create_app
from ecrm_api import app as app_module
from ecrm_api.app import bundled_swagger_ui
from ecrm_api.testing import serve_in_thread
from litestar.testing import TestClient

from ecrm_core.errors import ValidationError

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


def load(name: str) -> ModuleType:
    path = EXAMPLES / name / "app.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Litestar resolves the handlers' annotations through it
    spec.loader.exec_module(module)
    return module


def serve_wsgi(app: Any) -> tuple[str, Any]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join(timeout=10)

    return f"http://127.0.0.1:{server.server_port}", stop


@pytest.fixture(params=["asgi_mount", "flask_host"])
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """(base URL, CRM) of an example host app served on a free loopback port."""
    if request.param == "flask_host":
        pytest.importorskip("flask")
        pytest.importorskip("a2wsgi")
    module = load(request.param)
    app, crm = module.build(f"sqlite:///{tmp_path / 'host.db'}")
    if request.param == "flask_host":
        url, stop = serve_wsgi(app)
    else:
        url, stop = serve_in_thread(app)
    try:
        yield url, crm
    finally:
        stop()
        crm.close()


def test_host_routes_and_ecrm_routes_both_answer(host: tuple[str, Any]) -> None:
    url, crm = host
    token = Keys(crm).create("host-test", scopes=["read"]).token
    with httpx.Client(base_url=url, timeout=30) as http:
        home = http.get("/")
        assert home.status_code == 200 and "My shop" in home.text and "/crm/docs" in home.text
        assert http.get("/shop/stats").json() == {"customers": 0}

        assert http.get("/crm/health").json() == {"status": "ok"}
        me = http.get("/crm/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["name"] == "host-test"

        anon = http.get("/crm/me")
        assert anon.status_code == 401
        assert anon.headers["content-type"].startswith("application/problem+json")

        missing = http.get("/crm/no-such-route", headers={"Authorization": f"Bearer {token}"})
        assert missing.status_code == 404  # ecrm's 404 under the mount, not a 500
        assert http.get("/health").status_code == 404  # the API is only under /crm


def test_docs_and_openapi_work_under_the_mount(host: tuple[str, Any]) -> None:
    url, _crm = host
    with httpx.Client(base_url=url, timeout=30) as http:
        doc = http.get("/crm/docs/openapi.json")
        assert doc.status_code == 200
        spec = doc.json()
        assert spec["openapi"].startswith("3.1")
        assert "/crm/health" in spec["paths"] and "/crm/me" in spec["paths"]
        assert all(p.startswith("/crm/") for p in spec["paths"])
        scalar = http.get("/crm/docs/scalar")
        assert scalar.status_code == 200
        # the page loads the document from where it really is
        links = re.findall(r'(?:data-url|url)\s*[=:]\s*["\']([^"\']*openapi\.json)', scalar.text)
        assert links and all(link == "/crm/docs/openapi.json" for link in links), links
        # /docs is Swagger UI (swagger-ui-py is installed in the test environment):
        # it embeds the document, and its files come from the app, under the mount
        assert bundled_swagger_ui() is not None, "install swagger-ui-py (ecrm-api[docs]) for this test"
        for path in ("/crm/docs", "/crm/docs/swagger"):
            page = http.get(path)
            assert page.status_code == 200 and '"/crm/health"' in page.text
            assets = re.findall(r'(?:src|href)=["\']([^"\']+)["\']', page.text)
            assert sorted(assets) == [
                f"/crm/docs/assets/{name}"
                for name in (
                    "favicon-32x32.png",
                    "swagger-ui-bundle.js",
                    "swagger-ui-standalone-preset.js",
                    "swagger-ui.css",
                )
            ], assets
        for url in assets:  # public, cacheable, and the right type
            got = http.get(url)
            assert got.status_code == 200 and got.content, url
            assert "max-age=86400" in got.headers["cache-control"]
            kind = {"js": "javascript", "css": "text/css", "png": "image/png"}[url.rsplit(".", 1)[1]]
            assert kind in got.headers["content-type"], (url, got.headers["content-type"])
        assert http.get("/crm/docs/assets/no-such.js").status_code == 404
        assert http.get("/crm/docs/assets/%2e%2e/%2e%2e/__init__.py").status_code == 404  # nothing outside the folder


@pytest.mark.parametrize("name", ["asgi_mount", "flask_host"])
def test_example_script_runs(name: str, tmp_path: Path) -> None:
    """``python examples/<name>/app.py DB --port N`` serves until stopped."""
    if name == "flask_host":
        pytest.importorskip("flask")
        pytest.importorskip("a2wsgi")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-u", str(EXAMPLES / name / "app.py"), str(tmp_path / "shop.db"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/crm/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the example did not start"
                time.sleep(0.1)
        assert r.json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/shop/stats", timeout=5).json() == {"customers": 0}
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    assert "/crm/docs" in out, out + err
    assert "Traceback" not in err, err


def test_docs_assets_choices(api_crm, monkeypatch) -> None:
    """``docs_assets``: checked; ``"cdn"`` pages name jsDelivr; ``"bundled"`` needs swagger-ui-py."""
    with pytest.raises(ValidationError, match=r"docs_assets.*one of 'auto', 'bundled', 'cdn'"):
        ApiConfig(docs_assets="local")
    with TestClient(create_app(api_crm, docs_assets="cdn")) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "cdn.jsdelivr.net/npm/@scalar" in page.text
        swagger = client.get("/docs/swagger").text
        assert "cdn.jsdelivr.net/npm/swagger-ui-dist@" in swagger and "/docs/assets/" not in swagger
        assert client.get("/docs/assets/swagger-ui.css").status_code == 404
    with TestClient(create_app(api_crm, docs_assets="bundled")) as client:
        page = client.get("/docs").text
        assert '"/docs/assets/swagger-ui-bundle.js"' in page and "jsdelivr" not in page
    monkeypatch.setattr(app_module, "bundled_swagger_ui", lambda: None)
    with pytest.raises(ValidationError, match=r"swagger-ui-py.*ecrm-api\[docs\]"):
        create_app(api_crm, docs_assets="bundled")
    with TestClient(create_app(api_crm)) as client:  # "auto" without the package: the CDN pages
        assert "cdn.jsdelivr.net/npm/@scalar" in client.get("/docs").text
