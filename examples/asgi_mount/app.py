"""A Litestar host app with ecrm's REST API mounted at /crm beside its own routes.

The host serves its own pages (``/``, ``/shop/stats``) and hands every request
under ``/crm`` to the ecrm app: ``/crm/health``, ``/crm/customers/...``, the
interactive docs at ``/crm/docs`` and the OpenAPI document at
``/crm/docs/openapi.json``.  Both use the same :class:`~ecrm_core.CRM`.

The one rule for mounting: build the ecrm app with the public prefix
(``create_app(crm, path="/crm")``) and give it the full request path.
Litestar's mount strips the prefix from ``scope["path"]``, so the mount
handler puts it back; then routes, the docs page's link to the OpenAPI
document and the document's own paths all say ``/crm/...``.

Run it:  python examples/asgi_mount/app.py [path/to/shop.db] [--port 8001]
then:    ecrm --db sqlite:///path/to/shop.db keys create me --scope read
         curl -H "Authorization: Bearer <token>" http://127.0.0.1:8001/crm/me
"""

from __future__ import annotations

import argparse
from typing import Any

import ecrm_api.plugin
from ecrm_api import create_app
from litestar import Litestar, MediaType, asgi, get
from litestar.types import Receive, Scope, Send

from ecrm_core import CRM

MOUNT = "/crm"


def build(db_url: str) -> tuple[Litestar, CRM]:
    """The host app and its CRM (schema brought up to date)."""
    crm = CRM(db_url, plugins=[ecrm_api.plugin], load_entrypoints=False)
    crm.upgrade()
    ecrm_app = create_app(crm, path=MOUNT)

    @asgi(MOUNT, is_mount=True, copy_scope=True)
    async def crm_api(scope: Scope, receive: Receive, send: Send) -> None:
        # Litestar passes the path below the mount ("/health"); the ecrm app
        # was built for "/crm/...", so it gets the full path back.
        await ecrm_app({**scope, "path": MOUNT + scope["path"], "root_path": ""}, receive, send)  # type: ignore[arg-type]

    @get("/", media_type=MediaType.HTML)
    async def home() -> str:
        return (
            "<h1>My shop</h1>"
            f'<p>The CRM API is at <a href="{MOUNT}/docs">{MOUNT}/docs</a>; '
            'the shop\'s own figures at <a href="/shop/stats">/shop/stats</a>.</p>'
        )

    @get("/shop/stats", sync_to_thread=True)
    def shop_stats() -> dict[str, Any]:
        """The host's own route, reading the same CRM directly (no HTTP)."""
        return {"customers": crm.customers.count()}

    return Litestar(route_handlers=[home, shop_stats, crm_api], on_shutdown=[crm.close]), crm


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", nargs="?", default="shop-crm.db", help="SQLite file (default shop-crm.db)")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    app, _crm = build(f"sqlite:///{args.db}")
    print(
        f"host app on http://127.0.0.1:{args.port}/  -  ecrm API docs: http://127.0.0.1:{args.port}{MOUNT}/docs",
        flush=True,
    )
    print(f"create a key: ecrm --db sqlite:///{args.db} keys create me --scope read --scope write", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
