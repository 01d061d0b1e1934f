"""schemathesis against the live OpenAPI document of a served app.

For every operation, hypothesis generates valid and invalid requests from
the schema; each answer must: not be a 5xx, have a documented status code
and content type, match the documented schema, and reject invalid input
with a 4xx.  The app runs under uvicorn on 127.0.0.1 (real HTTP), with data
seeded so that ids in generated paths sometimes exist.

(schemathesis' own ``from_fixture`` lazy loader does not work with pytest 9,
so each test loads the live schema itself and drives hypothesis directly.)
"""

from __future__ import annotations

import os
import tempfile

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Segment's batch semantics: a batch whose messages are invalid is answered
# 200 with every rejected message listed (an SDK drops a whole batch on a 4xx,
# which would lose the valid messages); tests/api/test_tracking.py checks
# that the rejected ones are listed and not stored.
PER_MESSAGE_ERRORS = {("POST", "/v1/batch")}
EXAMPLES = int(os.environ.get("ECRM_SCHEMATHESIS_EXAMPLES", "20"))


def _operations() -> list[tuple[str, str, GenerationMode]]:
    """(METHOD, path, mode) of every documented operation, from an app built at collection time.

    Negative cases only for operations that take parameters or a body: the
    key is fixed in the strategy, so ``GET /me`` has nothing to make invalid
    (missing and bad keys are tested in test_foundation and test_workspaces)."""
    from ecrm_api import plugin
    from ecrm_api.app import create_app

    from ecrm_core import CRM

    with tempfile.TemporaryDirectory() as d:
        crm = CRM(f"sqlite:///{d}/schema.db", plugins=[plugin], load_entrypoints=False)
        spec = create_app(crm, rate_limit=None).openapi_schema.to_schema()
        crm.close()
    out = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            out.append((method.upper(), path, GenerationMode.POSITIVE))
            if op.get("parameters") or op.get("requestBody"):
                out.append((method.upper(), path, GenerationMode.NEGATIVE))
    return sorted(out)


@pytest.fixture
def served(api_crm, live_api_factory):
    crm = api_crm
    for i in range(1, 6):
        c = crm.customers.create(email=f"c{i}@example.com", name=f"C {i}", external_id=f"ext-{i}")
        crm.interactions.track("purchase", customer_id=c.id, amount="10.00", currency="EUR")
    live = live_api_factory(crm, rate_limit=None)
    return live, live.token(["admin"])


@pytest.mark.parametrize(
    ("method", "path", "mode"), _operations(), ids=lambda v: v.value if isinstance(v, GenerationMode) else v
)
def test_api_conforms(served, method, path, mode):
    live, token = served
    schema = schemathesis.openapi.from_url(f"{live.url}/docs/openapi.json")
    operation = schema[path][method]
    # The key goes into the strategy, so that negative cases that drop or
    # mangle it are known to schemathesis (and expected to get a 401).
    headers = {"Authorization": f"Bearer {token}"}
    checks = CHECKS
    if (method, path) in PER_MESSAGE_ERRORS:
        checks = [c for c in CHECKS if c is not negative_data_rejection]

    @given(case=operation.as_strategy(generation_mode=mode, headers=headers))
    @settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=EXAMPLES, database=None)
    def run(case):
        case.call_and_validate(base_url=live.url, checks=checks)

    run()
