"""Errors name the field, everywhere (issue 14, item 8).

Every malformed body of ``tests/fixtures/hardening/malformed_bodies.json``
(truncated or invalid JSON, invalid UTF-8, lone surrogates, an empty body,
a document that is not an object, bad or unsupported content codings) is
sent to every write route: the REST routes that take a JSON body (from the
route table, so new routes are covered), the Segment routes and the
analytics.js routes.  Each answer must be a 4xx problem document with at
least one error naming the field (``body`` for a body that cannot be read,
``header.content-encoding`` for a coding the route does not take) and no
internal message; nothing is stored.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from ecrm_api.app import route_table
from ecrm_api.routes.browser import BROWSER_PATHS

CORPUS = json.loads((Path(__file__).parent.parent / "fixtures" / "hardening" / "malformed_bodies.json").read_text())[
    "cases"
]
TRACKING = [f"/v1/{c}" for c in ("identify", "track", "page", "screen", "group", "alias", "batch")]
BROWSER = [*BROWSER_PATHS, "/v1/b"]
FILL = {"customer_id": "C", "interaction_id": "I", "ref": "R", "kind": "email", "value": "x@example.com"}
FILL["channel"] = "email"
# What an internal message looks like: a bare KeyError, a Python type or traceback.
INTERNAL = re.compile(r"^'\w+'$|Traceback|KeyError|NoneType|object has no attribute|File \"")


def _body(case: dict[str, Any]) -> bytes:
    if "text" in case:
        return str(case["text"]).encode()
    if "hex" in case:
        return bytes.fromhex(case["hex"])
    if "repeat" in case:
        open_, n, close = case["repeat"]
        return (open_ * n + close * n).encode()
    if "gzip2" in case:
        return gzip.compress(case["gzip2"].encode()) * 2
    return gzip.compress(case["gzip"].encode()) + bytes.fromhex(case.get("append_hex", ""))


def _expected(case: dict[str, Any], tracking: bool) -> tuple[set[int], set[str]]:
    """Allowed statuses and fields of the first error."""
    kind = case.get("kind", "json")
    if kind == "encoding-unknown" or (kind.startswith("encoding") and not tracking):
        return {415}, {"header.content-encoding"}
    if kind == "encoding-framing":
        return {400}, {"header.content-encoding"}
    if kind == "encoding-invalid":
        return {400}, {"body", "header.content-encoding"}
    return {400, 413}, {"body"}  # 413: a body (deep nesting) over a single call's 32 KB


def _url(path: str, ids: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        value = FILL[m.group(1)]
        if value == "R":
            return "static-list" if path.startswith("/segments") else "promo"
        return ids.get(value, value)

    return re.sub(r"\{(\w+)(?::\w+)?\}", one, path)


def _rows(crm: Any) -> dict[str, int]:
    with crm.db.read() as conn:
        return {
            name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for name, table in sorted(crm.db.tables.items())
            if name != "api_keys"
        }


@pytest.fixture
def target(api_crm, live_api_factory):
    crm = api_crm
    c = crm.customers.create(email="ada@example.com", name="Ada")
    i = crm.interactions.track("purchase", customer_id=c.id, amount="1.00", currency="EUR")
    crm.segments.create("static-list", static=True, customer_ids=[c.id])
    crm.offers.create("promo", "Promo")
    live = live_api_factory(crm, rate_limit=None, max_body_bytes=2_000_000)
    return live, {"C": str(c.id), "I": str(i.id)}


def _routes(app: Any) -> list[tuple[str, str, bool]]:
    """(method, path, tracking?) of every write route that reads a body."""
    out = [
        (method, path, False)
        for path, method, handler in route_table(app)
        if method in ("POST", "PUT", "PATCH") and "data" in handler.parsed_fn_signature.parameters
    ]
    out += [("POST", p, True) for p in TRACKING + BROWSER]
    return out


def test_malformed_bodies_name_the_field_on_every_write_route(target):
    live, ids = target
    client = live.client(["admin"])
    before = _rows(live.crm)
    routes = _routes(live.app)
    assert len(routes) >= 25
    failures: list[str] = []
    for case in CORPUS:
        body = _body(case)
        headers = {"Content-Type": "application/json"}
        if case.get("encoding"):
            headers["Content-Encoding"] = case["encoding"]
        for method, path, tracking in routes:
            url = _url(path, ids)
            r = client.request(method, url, content=body, headers=headers)
            where = f"{case['name']}: {method} {url}"
            statuses, fields = _expected(case, tracking)
            if r.status_code not in statuses:
                failures.append(f"{where} -> {r.status_code}, want {sorted(statuses)}: {r.text[:200]}")
                continue
            if not r.headers.get("content-type", "").startswith("application/problem+json"):
                failures.append(f"{where}: not a problem document ({r.headers.get('content-type')})")
                continue
            problem = r.json()
            errors = problem.get("errors") or []
            if not errors:
                failures.append(f"{where}: no error entry: {r.text[:200]}")
                continue
            if errors[0].get("field") not in fields:
                failures.append(f"{where}: first error names {errors[0].get('field')!r}, want one of {sorted(fields)}")
            texts = [problem.get("detail", ""), problem.get("title", "")]
            texts += [str(e.get(k, "")) for e in errors for k in ("problem", "fix")]
            if any(INTERNAL.search(t) for t in texts):
                failures.append(f"{where}: internal message in {texts}")
    assert not failures, "\n".join(failures[:50]) + (f"\n... {len(failures)} in all" if len(failures) > 50 else "")
    assert _rows(live.crm) == before


def test_an_epoch_number_is_not_a_time(target):
    """``occurred_at`` (and a consent's ``at``) are ISO 8601 with an offset, as documented: a number is a 400."""
    live, ids = target
    client = live.client(["admin"])
    before = _rows(live.crm)
    for value in (1700000000, 1700000000.5, 0, -1, "1700000000", "2024-05-01T12:00:00", "2024-05-01"):
        r = client.post("/interactions", json={"kind": "page_view", "customer_id": int(ids["C"]), "occurred_at": value})
        assert r.status_code == 400, (value, r.text)
        assert r.json()["errors"][0]["field"] == "body.occurred_at", (value, r.text)
        r = client.post(
            "/interactions/batch", json={"items": [{"kind": "page_view", "customer_id": 1, "occurred_at": value}]}
        )
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "body.items[0].occurred_at", r.text
        r = client.patch(f"/customers/{ids['C']}", json={"consent": {"email": {"status": "granted", "at": value}}})
        # msgspec names a value of a mapping "[...]": body.consent[...].at
        assert r.status_code == 400 and r.json()["errors"][0]["field"].startswith("body.consent"), r.text
        assert r.json()["errors"][0]["field"].endswith(".at"), r.text
    assert _rows(live.crm) == before
    r = client.post(
        "/interactions", json={"kind": "page_view", "customer_id": int(ids["C"]), "occurred_at": "2024-05-01T12:00:00Z"}
    )
    assert r.status_code == 201 and r.json()["occurred_at"] == "2024-05-01T12:00:00Z"
