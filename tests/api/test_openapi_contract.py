"""The OpenAPI document against the server's behaviour, route by route (issue 14, item 7).

Each test walks the whole served document, so a route added later is
covered without a line here: request bodies (an extra key is refused iff
the schema says ``additionalProperties: false``), numeric bounds (exact
integers, as declared), ``Allow`` on OPTIONS and 405 (exactly the
documented methods, HEAD wherever GET is), HEAD itself, enumerations of
registered values, and bodies decoded strictly (no coercion the schema
does not admit).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

METHODS = ("get", "put", "post", "delete", "patch")
CORPUS = json.loads((Path(__file__).parents[1] / "fixtures" / "hardening" / "openapi_strict_bodies.json").read_text())


@pytest.fixture
def served(api_crm, live_api_factory):
    c = api_crm.customers.create(email="c1@example.com", name="C 1")
    live = live_api_factory(api_crm, rate_limit=None)
    doc = httpx.get(f"{live.url}/docs/openapi.json", timeout=120).json()
    return live, live.client(["admin"]), doc, c.id


def _concrete(path: str, customer_id: int) -> str:
    values = {"customer_id": str(customer_id), "ref": "1", "kind": "email", "value": "x", "channel": "email"}
    return re.sub(r"\{([^}]+)\}", lambda m: values.get(m.group(1), "1"), path)


def _walk(node: Any, where: str = "#"):
    if isinstance(node, dict):
        yield where, node
        for k, v in node.items():
            yield from _walk(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{where}/{i}")


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_numeric_bounds_are_exact_integers(served):
    _, _, doc, _ = served
    checked = 0
    for where, node in _walk(doc):
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in node and node.get("type") == "integer":
                value = node[key]
                assert type(value) is int, f"{where}: {key} is {value!r} (a float rounds 2^63-1 up to 2^63)"
                assert -(2**63) <= value <= 2**63 - 1, f"{where}: {key} {value} outside 64 bits"
                checked += 1
    assert checked > 20
    for where, node in _walk(doc):  # and Litestar's oneOf form: bounds beside the branches
        if "oneOf" in node and any(b.get("type") == "integer" for b in node["oneOf"] if isinstance(b, dict)):
            for key in ("minimum", "maximum"):
                if key in node:
                    assert type(node[key]) is int, f"{where}: {key} is {node[key]!r}"


def test_an_extra_key_is_refused_iff_the_schema_says_so(served):
    """Every JSON request body: ``{"zz_extra": 1}`` is refused naming the key iff additionalProperties is false."""
    _, http, doc, cid = served
    seen = 0
    for path, item in doc["paths"].items():
        for method in METHODS:
            op = item.get(method)
            if not op or "requestBody" not in op:
                continue
            schema = _resolve(doc, op["requestBody"]["content"]["application/json"]["schema"])
            closed = schema.get("additionalProperties") is False
            r = http.request(method.upper(), _concrete(path, cid), json={"zz_extra": 1})
            named = any(e.get("field") == "body.zz_extra" for e in (r.json().get("errors") or []) if r.content)
            if closed:
                assert r.status_code == 400 and named, (method, path, r.status_code, r.text)
            else:
                assert not named, (method, path, r.text)
            seen += 1
    assert seen > 20


def test_allow_lists_exactly_the_documented_methods(served):
    _, http, doc, cid = served
    for path, item in doc["paths"].items():
        documented = {m.upper() for m in item if m in METHODS}
        expected = documented | {"OPTIONS"} | ({"HEAD"} if "GET" in documented else set())
        url = _concrete(path, cid)
        r = http.options(url)
        assert r.status_code == 204, (path, r.status_code)
        assert {m.strip() for m in r.headers["allow"].split(",")} == expected, (path, r.headers["allow"])
        missing = next(m for m in ("PUT", "PATCH", "DELETE", "POST", "GET") if m not in documented)
        r = http.request(missing, url)
        assert r.status_code == 405, (missing, path, r.status_code)
        assert {m.strip() for m in r.headers["allow"].split(",")} == expected, (missing, path, r.headers["allow"])


def test_head_is_answered_wherever_get_is(served):
    _, http, doc, cid = served
    for path, item in doc["paths"].items():
        if "get" not in item:
            continue
        url = _concrete(path, cid)
        got, head = http.get(url), http.head(url)
        assert head.status_code == got.status_code, (path, head.status_code, got.status_code)
        assert head.content == b"", path
        assert head.headers.get("content-type") == got.headers.get("content-type"), path


def test_registered_values_are_enumerated(served):
    live, _, doc, _ = served
    crm = live.crm
    schemas = doc["components"]["schemas"]
    kind = schemas["InteractionIn"]["properties"]["kind"]
    assert kind["enum"] == sorted(crm.registry.interaction_kinds)
    stage = schemas["CustomerIn"]["properties"]["lifecycle_stage"]["anyOf"][0]
    assert stage["enum"] == sorted(crm.registry.lifecycle_stages)


@pytest.mark.parametrize("case", CORPUS["cases"], ids=lambda c: c["name"])
def test_bodies_are_decoded_as_strictly_as_the_schema_says(served, case):
    """A value the schema refuses (a number for a date-time, 1 for a boolean, null for writeKey...) is refused."""
    _, http, _, cid = served
    path = case["path"].replace("{customer_id}", str(cid))
    r = http.request(case["method"], path, json=case["body"])
    assert r.status_code in case["status"], (case["name"], r.status_code, r.text)
    fields = [e["field"] for e in r.json().get("errors", [])]
    assert case["field"] in fields, (case["name"], fields)


def test_a_batch_item_that_is_not_an_interaction_is_judged_alone(served):
    """``POST /interactions/batch``: the document admits any item; ``skip`` lists the bad ones, ``raise`` refuses."""
    live, http, doc, cid = served
    body = doc["paths"]["/interactions/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    items = _resolve(doc, body)["properties"]["items"]
    assert items["maxItems"] == 10_000 and {} not in items["items"]["anyOf"]
    assert any(branch.get("$ref", "").endswith("/InteractionIn") for branch in items["items"]["anyOf"])
    bad = [1, "x", None, [], {"kind": 1, "customer_id": cid}, {"kind": "click", "customer_id": "1"}, {"zz": 1}]
    good = {"kind": "click", "customer_id": cid}
    before = live.crm.interactions.count()
    r = http.post("/interactions/batch", params={"on_error": "skip"}, json={"items": [*bad, good]})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["stored"] == 1 and answer["rejected_total"] == len(bad), answer
    assert [e["index"] for e in answer["rejected"]] == list(range(len(bad)))
    assert answer["rejected"][4]["field"] == "body.items[4].kind", answer["rejected"][4]
    r = http.post("/interactions/batch", json={"items": [*bad, good]})
    assert r.status_code == 400, r.text
    fields = [e["field"] for e in r.json()["errors"]]
    assert fields[0] == "body.items[0]" and "body.items[5].customer_id" in fields and len(fields) == len(bad), fields
    assert live.crm.interactions.count() == before + 1
