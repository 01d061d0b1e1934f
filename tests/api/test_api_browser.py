"""ecrm-api's interactive docs in a real browser (headless Chromium, the OS
package, driven by Playwright; see tests/browser_kit.py).

The docs pages load Swagger UI / Scalar from a CDN; tests reach nothing off
this machine, so the browser is answered with the Swagger UI bundle that the
``swagger-ui-py`` package ships (the same files, from a local copy).  What is
checked is ecrm's part: the page's HTML, and that the app's OpenAPI document
(embedded in the page) renders with every operation in it listed.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

pytest_plugins = ["browser_kit"]

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
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


def test_swagger_docs_page_lists_every_operation(live_api, page, swagger_assets):
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
    document = httpx.get(f"{live_api.url}/docs/openapi.json").json()
    expected = sorted(
        (method.upper(), path) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS
    )
    assert len(expected) > 20

    response = page.goto(f"{live_api.url}/docs/swagger")
    assert response.status == 200
    assert page.title()  # (Litestar's page has no lang attribute: not ours to fix)
    assert sorted(served) == ["swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"]

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
    # only the CDN was asked for outside resources (the bundle, from the local copy; a favicon)
    assert all(urlsplit(u).hostname == "cdn.jsdelivr.net" for u in page.context.blocked_requests)


def test_scalar_docs_page_loads_the_document(live_api, page):
    """``/docs`` (Scalar): the page itself, the title and the document it points at."""
    response = page.goto(f"{live_api.url}/docs")
    assert response.status == 200 and response.headers["content-type"].startswith("text/html")
    assert page.title() == "ecrm API"
    scripts = page.locator("script[src]").evaluate_all("els => els.map(e => e.src)")
    assert any(urlsplit(s).hostname == "cdn.jsdelivr.net" for s in scripts)  # the renderer comes from a CDN
    assert all(urlsplit(u).hostname == "cdn.jsdelivr.net" for u in page.context.blocked_requests)
