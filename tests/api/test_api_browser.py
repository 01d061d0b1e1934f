"""ecrm-api's interactive docs in a real browser (headless Chromium, the OS
package, driven by Playwright; see tests/browser_kit.py).

With ``swagger-ui-py`` installed (as here) the app serves Swagger UI's files
itself, and ``/docs`` must render with nothing fetched from off this machine.
With ``docs_assets="cdn"`` the pages load Swagger UI / Scalar from jsDelivr;
tests reach nothing off this machine, so the browser is answered with the
same files from the package's local copy.  What is checked is ecrm's part:
the page's HTML, and that the app's OpenAPI document (embedded in the page)
renders with every operation in it listed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

pytest_plugins = ["browser_kit"]

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
# The pages carry a 1.5 MB script bundle and the whole OpenAPI document inline:
# on a loaded machine Chromium needs more than the kit's default 15 s to fire "load".
_PAGE_LOAD_MS = 60_000
_ASSET_TYPES = {".js": "application/javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture
def swagger_assets() -> Path:
    from browser_kit import unavailable  # registered as a plugin by then (no early import)

    try:
        import swagger_ui
    except ImportError:
        unavailable("the 'swagger-ui-py' package (a local copy of the Swagger UI bundle) is not installed")
    static = Path(swagger_ui.__file__).parent / "static"
    if not (static / "swagger-ui-bundle.js").is_file():
        unavailable(f"no swagger-ui-bundle.js in {static}")
    return static


def _operations(url: str) -> list[tuple[str, str]]:
    document = httpx.get(f"{url}/docs/openapi.json", timeout=60).json()  # built on first request: slow when loaded
    expected = sorted(
        (method.upper(), path) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS
    )
    assert len(expected) > 20
    return expected


def _lists_every_operation(page: Any, expected: list[tuple[str, str]]) -> None:
    page.locator(".opblock").first.wait_for()
    page.wait_for_function(f"document.querySelectorAll('.opblock').length >= {len(expected)}")
    shown = sorted(
        zip(
            page.locator(".opblock .opblock-summary-method").all_inner_texts(),
            page.locator(".opblock .opblock-summary-path").evaluate_all(
                "els => els.map(e => e.getAttribute('data-path'))"
            ),
            strict=True,
        )
    )
    assert shown == expected
    assert page.get_by_text("ecrm API", exact=False).first.is_visible()
    assert page.locator(".errors-wrapper").count() == 0  # Swagger UI found nothing wrong in the document


def test_docs_page_works_offline_with_bundled_swagger_ui(live_api, page, swagger_assets):
    """``/docs``: Swagger UI from the app itself; not one request leaves 127.0.0.1."""
    expected = _operations(live_api.url)
    hosts: list[str | None] = []
    page.on("request", lambda request: hosts.append(urlsplit(request.url).hostname))
    response = page.goto(f"{live_api.url}/docs", timeout=_PAGE_LOAD_MS)
    assert response.status == 200
    assert page.title()  # (Litestar's page has no lang attribute: not ours to fix)
    _lists_every_operation(page, expected)
    assert page.context.blocked_requests == []
    assert len(hosts) >= 5 and set(hosts) == {"127.0.0.1"}, hosts  # the page, its 3 files, the icon


def test_cdn_swagger_docs_page_lists_every_operation(api_crm, live_api_factory, page, swagger_assets):
    live = live_api_factory(api_crm, rate_limit=None, docs_assets="cdn")
    served: list[str] = []

    def cdn(route):
        name = urlsplit(route.request.url).path.rsplit("/", 1)[-1]
        asset = swagger_assets / name
        if re.fullmatch(r"swagger-ui[\w.-]*\.(js|css)", name) and asset.is_file():
            served.append(name)
            route.fulfill(status=200, body=asset.read_bytes(), content_type=_ASSET_TYPES[asset.suffix])
        else:
            route.abort("blockedbyclient")

    page.route(re.compile(r"^https://cdn\.jsdelivr\.net/npm/swagger-ui-dist@[^/]+/"), cdn)
    expected = _operations(live.url)
    response = page.goto(f"{live.url}/docs/swagger", timeout=_PAGE_LOAD_MS)
    assert response.status == 200
    assert sorted(served) == ["swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"]
    _lists_every_operation(page, expected)
    # only the CDN was asked for outside resources (the bundle, from the local copy; a favicon)
    assert all(urlsplit(u).hostname == "cdn.jsdelivr.net" for u in page.context.blocked_requests)


@pytest.mark.parametrize(("assets", "path"), [("auto", "/docs/scalar"), ("cdn", "/docs")])
def test_scalar_docs_page_loads_the_document(api_crm, live_api_factory, page, assets, path):
    """Scalar (always from its CDN): the page itself, the title and the document it points at."""
    live = live_api_factory(api_crm, rate_limit=None, docs_assets=assets)
    response = page.goto(f"{live.url}{path}", timeout=_PAGE_LOAD_MS)
    assert response.status == 200 and response.headers["content-type"].startswith("text/html")
    assert page.title() == "ecrm API"
    scripts = page.locator("script[src]").evaluate_all("els => els.map(e => e.src)")
    assert any(urlsplit(s).hostname == "cdn.jsdelivr.net" for s in scripts)  # the renderer comes from a CDN
    assert all(urlsplit(u).hostname == "cdn.jsdelivr.net" for u in page.context.blocked_requests)
