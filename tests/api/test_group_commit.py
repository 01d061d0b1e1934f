"""The tracking endpoints' group-commit writer (ecrm_api.writer), over real HTTP.

To put requests in one group deterministically, a test holds SQLite's write
lock: the writer takes a first request and waits for the lock, the next
requests queue up behind it (``writer.pending``), and once the lock is
released they are all taken into the next group.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa
from ecrm_api.app import create_app
from ecrm_api.testing import serve_in_thread

from ecrm_core.services.interactions import Interactions


def _iso(d: datetime) -> str:
    return d.isoformat().replace("+00:00", "Z")


NOW = datetime.now(UTC).replace(microsecond=0)


def track(message_id: str, user: str = "u1", *, at: datetime | None = None, **props):
    return {
        "type": "track",
        "userId": user,
        "event": "Product Viewed",
        "messageId": message_id,
        "timestamp": _iso(at or NOW - timedelta(hours=1)),
        "properties": props,
    }


def batch(*messages, sent_at: datetime | None = None):
    return {"batch": list(messages), "sentAt": _iso(sent_at or NOW)}


@pytest.fixture
def live(api_crm, live_api_factory):
    """The served API, with its group-commit writer at ``.writer``."""
    served = live_api_factory(api_crm, rate_limit=None, tracking_sync=True)
    served.writer = served.app.state["ecrm"].writer
    return served


@pytest.fixture
def post(live):
    """``post(body)`` -> response, with an ingest write key (Basic auth); safe from many threads."""
    token = live.token(["ingest"], name="write key")

    def send(body):
        with httpx.Client(base_url=live.url, auth=(token, ""), timeout=60) as client:
            return client.post("/v1/batch", json=body)

    return send


def db_path(crm) -> str:
    return crm.db.engine.url.database


@contextlib.contextmanager
def write_lock(crm):
    """Hold SQLite's write lock (the writer waits for it: busy timeout)."""
    conn = sqlite3.connect(db_path(crm), isolation_level=None, timeout=30)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def wait_for(condition, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Sent:
    """Requests sent from threads; ``.responses`` in the order given."""

    def __init__(self, post, bodies):
        self.responses: list[httpx.Response | BaseException] = [None] * len(bodies)  # type: ignore[list-item]

        def run(i, body):
            try:
                self.responses[i] = post(body)
            except BaseException as exc:  # reported by join()
                self.responses[i] = exc

        self.threads = [threading.Thread(target=run, args=(i, b)) for i, b in enumerate(bodies)]
        for t in self.threads:
            t.start()

    def join(self) -> list[httpx.Response]:
        for t in self.threads:
            t.join(60)
        for r in self.responses:
            assert isinstance(r, httpx.Response), r
        return self.responses  # type: ignore[return-value]


def grouped(live, post, first, *rest):
    """Send ``first`` alone, then ``rest`` concurrently so that they form ONE group; return all responses."""
    writer = live.writer
    with write_lock(live.crm):
        groups = writer.stats.groups
        head = Sent(post, [first])
        wait_for(lambda: writer.stats.groups == groups + 1, "the writer to take the first request")
        tail = Sent(post, list(rest))
        wait_for(lambda: writer.pending == len(rest), "the other requests to queue up")
    responses = head.join() + tail.join()
    assert writer.stats.groups == groups + 2, "the queued requests were not stored as one group"
    return responses


def stored_keys(crm) -> list[str]:
    i = crm.db.tables["interactions"]
    with crm.db.read() as conn:
        return [k for (k,) in conn.execute(sa.select(i.c.idempotency_key).where(i.c.idempotency_key.is_not(None)))]


# ---------------------------------------------------------------------------


def test_concurrent_requests_are_stored_in_one_group_with_their_own_answers(live, post):
    bodies = [batch(*(track(f"r{r}-m{m}", f"user-{r}-{m % 3}") for m in range(5 + r))) for r in range(6)]
    bodies[3]["batch"].insert(2, {"type": "track", "userId": "x", "messageId": "r3-bad"})  # no event: rejected
    responses = grouped(live, post, batch(track("first")), *bodies)
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    answers = [r.json() for r in responses[1:]]
    for r, answer in enumerate(answers):
        assert answer["accepted"] == 5 + r and answer["duplicates"] == 0
    assert answers[3]["rejected"] == [
        {
            "index": 2,
            "messageId": "r3-bad",
            "field": "body.batch[2].event",
            "problem": "missing",
            "fix": 'send the event\'s name, e.g. "Order Completed"',
        }
    ]
    assert all(a["rejected"] == [] for i, a in enumerate(answers) if i != 3)
    keys = stored_keys(live.crm)
    assert len(keys) == len(set(keys)) == 1 + sum(5 + r for r in range(6))
    assert live.writer.stats.largest >= sum(5 + r for r in range(6))
    # the events are on the right customers
    c = live.crm.customers.find(external_id="user-5-1")
    assert {i.idempotency_key for i in live.crm.interactions.timeline(c.id)} == {
        f"segment:r5-m{m}" for m in range(10) if m % 3 == 1
    }


def test_the_same_message_id_in_two_requests_of_a_group_is_stored_once(live, post):
    a = batch(track("a1"), track("shared", user="ann"), track("a2"))
    b = batch(track("b1"), track("shared", user="ann"))
    responses = grouped(live, post, batch(track("first")), a, b)
    ra, rb = (r.json() for r in responses[1:])
    assert (ra["accepted"] + rb["accepted"], ra["duplicates"] + rb["duplicates"]) == (4, 1)
    # whichever was queued first stored it, the other counts a duplicate
    assert (ra["accepted"], ra["duplicates"], rb["accepted"], rb["duplicates"]) in ((3, 0, 1, 1), (2, 1, 2, 0))
    keys = stored_keys(live.crm)
    assert keys.count("segment:shared") == 1 and len(keys) == 5


def test_the_same_message_id_with_another_payload_is_a_conflict_for_one_of_them(live, post):
    a = batch(track("same", price=1))
    b = batch(track("other"), track("same", price=2))
    responses = grouped(live, post, batch(track("first")), a, b)
    ra, rb = (r.json() for r in responses[1:])
    conflicts = ra["rejected"] + rb["rejected"]
    assert len(conflicts) == 1 and conflicts[0]["problem"] == "messageId reused with a different payload"
    assert ra["accepted"] + rb["accepted"] == 2
    # the stored one is the payload of the request that did not get the conflict
    same = live.crm.interactions.by_key("segment:same")
    assert same.properties["price"] == (2 if ra["rejected"] else 1)


def test_a_retry_with_a_new_sent_at_is_a_duplicate_also_inside_a_group(live, post):
    """SDKs re-send with a new sentAt: the corrected time moves a little; still the same message."""
    event_at = NOW - timedelta(minutes=10)
    first = batch(track("retry", at=event_at), sent_at=NOW)
    again = batch(track("retry", at=event_at), sent_at=NOW - timedelta(seconds=3))  # corrected 3 s later
    responses = grouped(live, post, batch(track("first")), first, again)
    ra, rb = (r.json() for r in responses[1:])
    assert (ra["accepted"] + rb["accepted"], ra["duplicates"] + rb["duplicates"]) == (1, 1), (ra, rb)
    assert ra["rejected"] == rb["rejected"] == []
    # and against the stored one, in a later group
    later = post(batch(track("retry", at=event_at), sent_at=NOW + timedelta(seconds=5)))
    assert later.json()["duplicates"] == 1 and later.json()["rejected"] == []


def test_a_poisoned_request_fails_alone_and_the_others_of_its_group_are_stored(live, post, monkeypatch):
    real = Interactions.track_many

    def track_many(self, rows, **kw):
        rows = list(rows)
        if any((r.get("properties") or {}).get("poison") for r in rows):
            raise RuntimeError("poisoned row")
        return real(self, rows, **kw)

    monkeypatch.setattr(Interactions, "track_many", track_many)
    good1 = batch(track("g1"), track("g2"))
    poisoned = batch(track("p1"), track("p2", poison=True))
    good2 = batch(track("g3"))
    retried = live.writer.stats.retried
    responses = grouped(live, post, batch(track("first")), good1, poisoned, good2)
    r1, rp, r2 = responses[1:]
    assert r1.status_code == 200 and r1.json()["accepted"] == 2
    assert r2.status_code == 200 and r2.json()["accepted"] == 1
    assert rp.status_code == 500 and rp.headers["content-type"].startswith("application/problem+json")
    assert "poisoned" not in rp.text  # no internals to the client
    assert live.writer.stats.retried == retried + 1
    keys = set(stored_keys(live.crm))
    assert keys == {"segment:first", "segment:g1", "segment:g2", "segment:g3"}  # nothing of the poisoned one
    # the writer goes on
    assert post(batch(track("after"))).json()["accepted"] == 1


def test_many_clients_nothing_lost_nothing_twice(live, post):
    """Many concurrent clients, with retries of each other's messages: every id stored once, counts add up."""
    ids = [str(uuid.uuid4()) for _ in range(300)]
    message = {i: track(i, f"user-{n % 7}", n=n) for n, i in enumerate(ids)}
    bodies = []
    for r in range(12):
        own = ids[r * 25 : (r + 1) * 25]
        replayed = ids[((r + 5) % 12) * 25 : ((r + 5) % 12) * 25 + 5]  # another client's messages again
        bodies.append(batch(*(message[i] for i in own + replayed)))
    sent = Sent(post, bodies)
    responses = sent.join()
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    answers = [r.json() for r in responses]
    assert sum(a["accepted"] for a in answers) == 300
    assert sum(a["duplicates"] for a in answers) == 12 * 5
    assert all(a["rejected"] == [] for a in answers)
    keys = stored_keys(live.crm)
    assert sorted(keys) == sorted(f"segment:{i}" for i in ids)


def test_shutdown_stores_what_was_handed_over(api_crm):
    app = create_app(api_crm, rate_limit=None, tracking_sync=True)
    writer = app.state["ecrm"].writer
    url, stop = serve_in_thread(app)
    token = live_token(api_crm)

    def post(body):
        with httpx.Client(base_url=url, auth=(token, ""), timeout=60) as client:
            return client.post("/v1/batch", json=body)

    with write_lock(api_crm):
        sent = Sent(post, [batch(*(track(f"s{r}-{m}") for m in range(20))) for r in range(5)])
        wait_for(lambda: writer.stats.requests + writer.pending == 5, "the requests to reach the writer")
        stopping = threading.Thread(target=stop)
        stopping.start()  # the server stops taking requests and waits for these
    responses = sent.join()
    stopping.join(30)
    assert all(r.status_code == 200 and r.json()["accepted"] == 20 for r in responses), [r.text for r in responses]
    assert len(stored_keys(api_crm)) == 100
    wait_for(lambda: writer._thread is None, "the writer thread to stop")


def live_token(crm) -> str:
    from ecrm_api import Keys

    return Keys(crm).create("write key", scopes=["ingest"]).token


def test_close_drains_the_queue_and_a_later_request_starts_the_writer_again(live, post):
    writer = live.writer
    with write_lock(live.crm):
        sent = Sent(post, [batch(track(f"d{r}")) for r in range(4)])
        wait_for(lambda: writer.stats.requests + writer.pending == 4, "the requests to reach the writer")
        closing = threading.Thread(target=writer.close)
        closing.start()
    closing.join(30)
    assert not closing.is_alive() and writer._thread is None
    assert [r.json()["accepted"] for r in sent.join()] == [1, 1, 1, 1]
    assert post(batch(track("later"))).json()["accepted"] == 1
    assert len(stored_keys(live.crm)) == 5


def test_single_calls_go_through_the_writer_too(live):
    token = live.token(["ingest"])
    with httpx.Client(base_url=live.url, auth=(token, ""), timeout=30) as client:
        body = {"userId": "solo", "event": "Signed In", "messageId": "one"}
        before = live.writer.stats.requests
        assert client.post("/v1/track", json=body).json()["accepted"] == 1
        assert client.post("/v1/track", json=body).json()["duplicates"] == 1
        r = client.post("/v1/track", json={**body, "event": "Signed Out"})
        assert r.status_code == 409 and r.json()["errors"][0]["field"] == "body.messageId"
        assert live.writer.stats.requests == before + 3


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "10"])
def test_ingest_max_group_is_checked(api_crm, value):
    from ecrm_core.errors import ValidationError

    with pytest.raises(ValidationError, match="ingest_max_group"):
        create_app(api_crm, ingest_max_group=value)


@pytest.mark.parametrize("value", [-0.1, 2, "0.1", None])
def test_ingest_max_wait_is_checked(api_crm, value):
    from ecrm_core.errors import ValidationError

    with pytest.raises(ValidationError, match="ingest_max_wait"):
        create_app(api_crm, ingest_max_wait=value)
