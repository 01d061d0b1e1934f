"""One validation for every way data enters (issue 14, item 4).

Each hostile JSON value of ``tests/fixtures/hardening/hostile_json.json``
(NUL and other control characters in values and keys, lone surrogates,
integers beyond 64 bits, non-finite floats, nesting, key count and length,
size) is pushed through every entry path: the Python API (customers
create/upsert/update, interactions track/track_many), the customer file
importer, the REST routes (customers, upsert, patch, interactions, batch),
the Segment routes (identify, track, page, group, batch, RudderStack's
``context.traits``) and the analytics.js routes (``/v1/i``, ``/v1/b``).
Every path must refuse it naming the same field path (under its own
prefix: ``body.traits``, ``body.batch[1].properties``, ``attributes``...)
and store nothing, on SQLite and on PostgreSQL.

A value the HTTP JSON parser itself refuses (a lone surrogate escape, a
number beyond a double such as ``1e400``) is a 400 naming ``body`` there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from ecrm_api import plugin as api_plugin

from ecrm_core.errors import ValidationError
from ecrm_core.importer import CustomerFileReader
from ecrm_core.validation import check_json

CORPUS = json.loads((Path(__file__).parent.parent / "fixtures" / "hardening" / "hostile_json.json").read_text())[
    "cases"
]


def _object_text(case: dict[str, Any]) -> str:
    """The raw JSON text of the object that carries the hostile value or key."""
    return f'{{"plan": {case["json"]}}}' if case["as"] == "value" else f"{{{case['json']}: 1}}"


def _expected(case: dict[str, Any]) -> tuple[str, str]:
    """The path (under the object) and problem the core gives for the case."""
    value = json.loads(_object_text(case))  # Python's parser keeps surrogates, 1e400 is inf
    with pytest.raises(ValidationError) as info:
        check_json(value, "")
        _size_check(value)
    assert case["problem"] in info.value.problem, (case["name"], info.value)
    return info.value.field, info.value.problem


def _size_check(value: Any) -> None:
    from ecrm_core.validation import properties_json

    properties_json(value, "")


def _http_decodes(text: str) -> bool:
    try:
        msgspec.json.decode(text.encode("utf-8", "surrogatepass"))
    except msgspec.DecodeError:
        return False
    return True


def _counts(crm: Any) -> tuple[int, int]:
    with crm.db.read() as conn:
        t = crm.db.tables
        return (
            conn.execute(sa.select(sa.func.count()).select_from(t["customers"])).scalar_one(),
            conn.execute(sa.select(sa.func.count()).select_from(t["interactions"])).scalar_one(),
        )


def _post(client: Any, path: str, text: str, method: str = "POST") -> Any:
    return client.request(
        method, path, content=text.encode("utf-8", "surrogatepass"), headers={"Content-Type": "application/json"}
    )


def _run_corpus(crm: Any, live: Any, tmp_path: Path) -> None:
    base = crm.customers.create(external_id="base", attributes={"plan": "free"})
    env = {
        "crm": crm,
        "live": live,
        "client": live.client(["admin"]),
        "write_key": live.token(["ingest"], name="website"),
        "base": base,
        "tmp_path": tmp_path,
    }
    failures: list[str] = []
    for case in CORPUS:
        before = _counts(crm)
        _one_case(case, env, failures)
        after = _counts(crm)
        if after != before:
            failures.append(f"{case['name']}: stored something (customers, interactions) {before} -> {after}")
    assert crm.customers.get(base.id).attributes == {"plan": "free"}
    assert not failures, "\n".join(failures[:60]) + (f"\n... {len(failures)} in all" if len(failures) > 60 else "")


def _one_case(case: dict[str, Any], env: dict[str, Any], failures: list[str]) -> None:
    crm, live, client, write_key, base, tmp_path = (
        env[k] for k in ("crm", "live", "client", "write_key", "base", "tmp_path")
    )
    name = case["name"]
    suffix, problem = _expected(case)
    obj_text = _object_text(case)
    obj = json.loads(obj_text)

    def check(where: str, field: str | None, prob: str | None, expected_field: str) -> None:
        if field != expected_field or prob is None or case["problem"] not in prob:
            failures.append(f"{name} via {where}: got {field!r} / {prob!r}, want {expected_field!r} / {problem!r}")

    # -- the Python API ------------------------------------------------------------
    for where, call in (
        ("customers.create", lambda: crm.customers.create(external_id="x1", attributes=obj)),
        ("customers.upsert", lambda: crm.customers.upsert(external_id="x1", attributes=obj)),
        ("customers.update", lambda: crm.customers.update(base.id, attributes=obj)),
        ("interactions.track", lambda: crm.interactions.track("page_view", customer_id=base.id, properties=obj)),
    ):
        try:
            call()
        except ValidationError as exc:
            check(where, exc.field, exc.problem, ("attributes" if "customers" in where else "properties") + suffix)
        else:
            failures.append(f"{name} via {where}: accepted")
    result = crm.interactions.track_many(
        [{"kind": "page_view", "customer_id": base.id, "properties": obj}], on_error="skip"
    )
    err = result.errors[0].error if result.errors else None
    check(
        "interactions.track_many",
        getattr(err, "field", None),
        getattr(err, "problem", None),
        "properties" + suffix,
    )
    # -- the importer (JSON Lines) -----------------------------------------------------
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(f'{{"external_id": "imp", "attributes": {obj_text}}}\n'.encode("utf-8", "surrogatepass"))
    with CustomerFileReader(path) as reader:
        imported = crm.customers.upsert_many(reader, on_error="skip")
        errors = [*reader.errors, *reader.locate(imported.errors)]
    err = errors[0].error if errors else None
    check("importer", getattr(err, "field", None), getattr(err, "problem", None), "attributes" + suffix)

    # -- HTTP ----------------------------------------------------------------------
    decodes = _http_decodes(obj_text)

    def http(where: str, r: Any, prefix: str, status: int = 422, entry: str = "errors") -> None:
        if not decodes:  # the JSON parser refuses the body as a whole
            status, prefix, suffix_ = 400, "body", ""
        else:
            suffix_ = suffix
        ok_status = r.status_code == status
        body = r.json() if r.headers.get("content-type", "").endswith("json") else {}
        items = body.get(entry) or []
        first = items[0] if items else {}
        if not ok_status:
            failures.append(f"{name} via {where}: status {r.status_code} {r.text[:200]}")
            return
        field, prob = first.get("field"), first.get("problem")
        if decodes:
            check(where, field, prob, prefix + suffix_)
        elif field != "body":
            failures.append(f"{name} via {where}: undecodable body not named 'body': {first}")

    http(
        "POST /customers",
        _post(client, "/customers", f'{{"external_id": "x2", "attributes": {obj_text}}}'),
        "body.attributes",
    )
    http(
        "POST /customers/upsert",
        _post(client, "/customers/upsert", f'{{"external_id": "x2", "attributes": {obj_text}}}'),
        "body.attributes",
    )
    http(
        "PATCH /customers/{id}",
        _post(client, f"/customers/{base.id}", f'{{"attributes": {obj_text}}}', "PATCH"),
        "body.attributes",
    )
    item = f'{{"kind": "page_view", "customer_id": {base.id}, "properties": {obj_text}}}'
    http("POST /interactions", _post(client, "/interactions", item), "body.properties")
    http(
        "POST /interactions/batch",
        _post(client, "/interactions/batch", f'{{"items": [{item}]}}'),
        "body.items[0].properties",
    )
    http("/v1/identify", _post(client, "/v1/identify", f'{{"userId": "seg", "traits": {obj_text}}}'), "body.traits")
    http(
        "/v1/identify context.traits",
        _post(client, "/v1/identify", f'{{"userId": "seg", "context": {{"traits": {obj_text}}}}}'),
        "body.context.traits",
    )
    http(
        "/v1/track",
        _post(client, "/v1/track", f'{{"userId": "seg", "event": "E", "properties": {obj_text}}}'),
        "body.properties",
    )
    http("/v1/page", _post(client, "/v1/page", f'{{"userId": "seg", "properties": {obj_text}}}'), "body.properties")
    http(
        "/v1/group",
        _post(client, "/v1/group", f'{{"userId": "seg", "groupId": "g", "traits": {obj_text}}}'),
        "body.traits",
    )
    batch = (
        f'{{"type": "identify", "userId": "seg", "traits": {obj_text}}}, '
        f'{{"type": "track", "userId": "seg", "event": "E", "properties": {obj_text}}}'
    )
    for where, path_, extra in (("/v1/batch", "/v1/batch", ""), ("/v1/b", "/v1/b", f'"writeKey": "{write_key}", ')):
        r = _post(client if path_ == "/v1/batch" else live.client(None), path_, f'{{{extra}"batch": [{batch}]}}')
        if not decodes:
            http(where, r, "body", 400)
            continue
        body = r.json()
        if r.status_code != 200 or body.get("accepted") != 0 or body.get("rejected_total") != 2:
            failures.append(f"{name} via {where}: {r.status_code} {r.text[:300]}")
            continue
        got = [(e["field"], e["problem"]) for e in body["rejected"]]
        for (field, prob), want in zip(got, ("body.batch[0].traits", "body.batch[1].properties"), strict=True):
            check(where, field, prob, want + suffix)
    r = _post(live.client(None), "/v1/i", f'{{"writeKey": "{write_key}", "userId": "seg", "traits": {obj_text}}}')
    http("/v1/i", r, "body.traits")


def test_hostile_values_are_refused_everywhere_on_sqlite(api_crm, live_api_factory, tmp_path):
    _run_corpus(api_crm, live_api_factory(api_crm, rate_limit=None), tmp_path)


@pytest.mark.postgres
def test_hostile_values_are_refused_everywhere_on_postgresql(pg_crm_factory, live_api_factory, tmp_path):
    crm = pg_crm_factory(plugins=[api_plugin])
    _run_corpus(crm, live_api_factory(crm, rate_limit=None), tmp_path)


def test_the_corpus_is_what_it_says():
    names = [c["name"] for c in CORPUS]
    assert len(names) == len(set(names)) and len(names) >= 30
    for case in CORPUS:
        _expected(case)  # the core refuses each with the problem the file names
