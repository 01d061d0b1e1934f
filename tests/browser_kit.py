"""Browser tests: a real Chromium (Debian's ``chromium`` package) driven by
Playwright's sync API.  Shared by the test modules that drive pages
(``pytest_plugins = ["browser_kit"]`` there; ``tests/`` is on ``sys.path``).

Fixtures:

* ``browser`` (session) — a headless Chromium launched from the OS binary
  (``chromium`` on ``PATH``, else ``/usr/bin/chromium``; ``ECRM_CHROMIUM``
  names another).  Playwright's own browser downloads are never used.
* ``page`` — a fresh context and page for one test, JavaScript on;
* ``nojs_page`` — the same with JavaScript disabled (what a mail reader's
  page must survive).

* ``local_site`` — a small HTTP server on 127.0.0.1 that answers any path
  with a page and records ``(host, path)``; reach it as
  ``http://<name>.localhost:<port>/`` to play another site (Chromium maps
  ``*.localhost`` to the loopback address without asking DNS).

Nothing leaves the machine: every context aborts requests to hosts other
than 127.0.0.1 / ``localhost`` / ``*.localhost`` (``context.blocked_requests``
records them, so a page that needs an outside resource shows up), and
Chromium resolves no other host name (``--host-resolver-rules``) — which
also covers the redirects Playwright's routing does not see.

When Chromium or the ``playwright`` package is missing the tests are
**skipped** with the reason, unless ``ECRM_REQUIRE_BROWSER=1`` (CI sets
it): then they **fail**, like ``ECRM_REQUIRE_POSTGRES``.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

__all__ = ["ENV_REQUIRE", "LocalSite", "find_chromium", "is_local", "local_only", "unavailable"]

#: ``1``: fail instead of skipping when no browser is available.
ENV_REQUIRE = "ECRM_REQUIRE_BROWSER"
#: Chromium reaches 127.0.0.1, ``localhost`` and ``*.localhost``; every other host name fails.
RESOLVER_RULES = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost, EXCLUDE *.localhost"


def is_local(url: str) -> bool:
    """Whether ``url`` is on this machine (loopback address or ``*.localhost``)."""
    host = (urlsplit(url).hostname or "").lower()
    return host in ("127.0.0.1", "::1", "localhost") or host.endswith(".localhost")


def find_chromium() -> str | None:
    """The path of the OS Chromium, or ``None``."""
    named = os.environ.get("ECRM_CHROMIUM")
    if named:
        return named if Path(named).is_file() else None
    for candidate in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def unavailable(problem: str) -> None:
    """Skip the test with ``problem`` — or fail it when ``ECRM_REQUIRE_BROWSER=1``."""
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"{ENV_REQUIRE}=1 but the browser tests cannot run: {problem}", pytrace=False)
    pytest.skip(f"browser unavailable: {problem}")


def local_only(context: Any) -> list[str]:
    """Abort every request of ``context`` to a host off this machine; returns
    the list the aborted URLs are appended to."""
    blocked: list[str] = []

    def guard(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and not is_local(url):
            blocked.append(url)
            route.abort("blockedbyclient")
        else:
            route.fallback()

    context.route("**/*", guard)
    return blocked


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium (the OS package), for the whole session."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the 'playwright' package is not installed (pip install playwright; no 'playwright install')")
    executable = find_chromium()
    if executable is None:
        unavailable("no Chromium found: install the Debian package 'chromium' (or set ECRM_CHROMIUM)")
    playwright = sync_playwright().start()
    try:
        try:
            chromium = playwright.chromium.launch(
                executable_path=executable, headless=True, args=[f"--host-resolver-rules={RESOLVER_RULES}"]
            )
        except PlaywrightError as exc:
            unavailable(f"{executable} does not start: {str(exc).splitlines()[0]}")
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


def _context(browser: Any, **options: Any) -> Iterator[Any]:
    context = browser.new_context(**options)
    context.blocked_requests = local_only(context)
    context.set_default_timeout(15_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a fresh browser context (JavaScript on)."""
    yield from _context(browser)


@pytest.fixture
def nojs_page(browser: Any) -> Iterator[Any]:
    """A page in a fresh browser context with JavaScript disabled."""
    yield from _context(browser, java_script_enabled=False)


class LocalSite:
    """A tiny web site on 127.0.0.1: every GET answers a page titled with its
    path; :attr:`visits` lists ``(host, path)`` in order."""

    def __init__(self) -> None:
        visits: list[tuple[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                visits.append((self.headers.get("host", ""), self.path))
                body = f"<!DOCTYPE html><html lang=en><title>{self.path[:60]}</title><h1>landed</h1></html>"
                data = body.encode()
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.visits = visits
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-site", daemon=True)
        self._thread.start()

    def url(self, name: str, path: str = "/") -> str:
        """``http://<name>.localhost:<port><path>``."""
        return f"http://{name}.localhost:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def local_site() -> Iterator[LocalSite]:
    site = LocalSite()
    try:
        yield site
    finally:
        site.close()
