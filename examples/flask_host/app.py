"""A Flask (WSGI) app serving its own pages and ecrm's REST API at /crm.

ecrm's API is an ASGI app; a WSGI host runs it through a2wsgi's
``ASGIMiddleware``, and werkzeug's ``DispatcherMiddleware`` sends every
request under ``/crm`` to it, the rest to Flask.  Both use the same
:class:`~ecrm_core.CRM`.

The one rule for mounting: build the ecrm app with the public prefix
(``create_app(crm, path="/crm")``) and give it the full request path.  a2wsgi
passes ``path="/crm/health"`` with ``root_path="/crm"``; Litestar would strip
``root_path`` again, so the adapter below clears it.  Then routes, the docs
page's link to the OpenAPI document and the document's own paths all say
``/crm/...``.

Needs: pip install flask a2wsgi
Run it:  python examples/flask_host/app.py [path/to/shop.db] [--port 8002]
then:    ecrm --db sqlite:///path/to/shop.db keys create me --scope read
         curl -H "Authorization: Bearer <token>" http://127.0.0.1:8002/crm/me
"""

from __future__ import annotations

import argparse
from typing import Any

import ecrm_api.plugin
from a2wsgi import ASGIMiddleware
from ecrm_api import create_app
from flask import Flask, jsonify
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from ecrm_core import CRM

MOUNT = "/crm"


def build(db_url: str) -> tuple[Flask, CRM]:
    """The Flask app (its ``wsgi_app`` also serves the API at /crm) and its CRM."""
    crm = CRM(db_url, plugins=[ecrm_api.plugin], load_entrypoints=False)
    crm.upgrade()
    ecrm_app = create_app(crm, path=MOUNT)

    async def ecrm_at_mount(scope: Any, receive: Any, send: Any) -> None:
        # a2wsgi: path="/crm/health", root_path="/crm"; the app wants the full path only.
        await ecrm_app({**scope, "root_path": ""}, receive, send)

    app = Flask(__name__)

    @app.get("/")
    def home() -> str:
        return (
            "<h1>My shop (Flask)</h1>"
            f'<p>The CRM API is at <a href="{MOUNT}/docs">{MOUNT}/docs</a>; '
            'the shop\'s own figures at <a href="/shop/stats">/shop/stats</a>.</p>'
        )

    @app.get("/shop/stats")
    def shop_stats() -> Any:
        """The host's own route, reading the same CRM directly (no HTTP)."""
        return jsonify(customers=crm.customers.count())

    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {MOUNT: ASGIMiddleware(ecrm_at_mount)})  # type: ignore[method-assign]
    return app, crm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", nargs="?", default="shop-crm.db", help="SQLite file (default shop-crm.db)")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    app, _crm = build(f"sqlite:///{args.db}")
    print(
        f"Flask app on http://127.0.0.1:{args.port}/  -  ecrm API docs: http://127.0.0.1:{args.port}{MOUNT}/docs",
        flush=True,
    )
    print(f"create a key: ecrm --db sqlite:///{args.db} keys create me --scope read --scope write", flush=True)
    app.run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
