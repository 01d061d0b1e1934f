"""Responses are bounded by requests (issue 14, item 6).

Each request of ``tests/fixtures/hardening/amplifying_requests.json`` could
make an answer grow with what a small body holds: 255,000 messages in a
548-byte gzip body, thousands of rejected messages or items, long values
echoed in problems, deep field paths.  Every answer must stay under
:data:`BOUND` bytes, say how many entries it left out, and ``/health`` must
keep answering while they are handled.
"""

from __future__ import annotations

import copy
import gzip
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

CORPUS = json.loads((Path(__file__).parent.parent / "fixtures" / "hardening" / "amplifying_requests.json").read_text())[
    "cases"
]
#: No answer may be larger than this, whatever the request.
BOUND = 200_000
#: /health must answer within this while the requests run (a shared 2-core machine: generous).
HEALTH_SECONDS = 3.0


def _expand(value: Any) -> Any:
    """``{"deep": d, "key": k}`` -> d levels of ``{k: ...}``."""
    if isinstance(value, dict) and set(value) == {"deep", "key"}:
        node: Any = 1
        for _ in range(value["deep"]):
            node = {value["key"]: node}
        return node
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def _body(case: dict[str, Any], write_key: str) -> bytes:
    if "bomb" in case:
        raw = b" " * case["bomb"]
    elif "batch_of" in case:
        doc: dict[str, Any] = {"batch": [_expand(copy.deepcopy(case["batch_of"]))] * case["n"]}
        if case.get("browser"):
            doc["writeKey"] = write_key
        raw = json.dumps(doc).encode()
    else:
        raw = json.dumps({"items": [_expand(copy.deepcopy(case["items_of"]))] * case["n"]}).encode()
    return gzip.compress(raw, 9) if case.get("gzip") else raw


@pytest.fixture
def live(api_crm, live_api_factory):
    api_crm.customers.create(external_id="u")
    return live_api_factory(api_crm, rate_limit=None)


def test_answers_stay_bounded_and_health_answers(live):
    admin = live.client(["admin"])
    anonymous = live.client(None)
    write_key = live.token(["ingest"], name="website")
    health = live.client(None)
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            r = health.get("/health")
            latencies.append(time.perf_counter() - t0)
            assert r.status_code == 200
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    failures: list[str] = []
    try:
        for case in CORPUS:
            body = _body(case, write_key)
            headers = {"Content-Type": "application/json"}
            if case.get("gzip"):
                headers["Content-Encoding"] = "gzip"
            client = anonymous if case.get("browser") else admin
            r = client.post(case["path"], content=body, headers=headers)
            name = f"{case['name']} ({len(body)} bytes in)"
            if r.status_code != case["status"]:
                failures.append(f"{name}: {r.status_code}, want {case['status']}: {r.text[:200]}")
            if len(r.content) > BOUND:
                failures.append(f"{name}: {len(r.content)} bytes out, over {BOUND}")
            answer = r.json()
            for key, listed in (("rejected_total", "rejected"), ("error_total", "errors")):
                if key in case:
                    if answer.get(key) != case[key]:
                        failures.append(f"{name}: {key} {answer.get(key)}, want {case[key]}")
                    if len(answer.get(listed) or []) > 100:
                        failures.append(f"{name}: {len(answer[listed])} entries listed")
            if r.status_code >= 400 and not answer.get("errors"):
                failures.append(f"{name}: a problem without errors: {r.text[:200]}")
    finally:
        stop.set()
        poller.join(10)
    assert not failures, "\n".join(failures)
    assert latencies and max(latencies) < HEALTH_SECONDS, f"/health took up to {max(latencies):.2f} s"
