"""Inbound events and what a third-party channel author hit (issue 14, item 9).

* ``crm.messages.apply`` takes nothing on trust: the corpus
  ``tests/fixtures/hardening/forged_events.json`` holds events a careless or
  compromised channel could hand over (another workspace's message, an address
  that is not the recipient, a bounce without a message, unknown ids…): each
  forged one changes nothing anywhere and is reported as ignored with a
  reason; each genuine one changes exactly its customer, in its workspace.
  Run on SQLite and PostgreSQL.
* A STOP from a number ecrm never texted reaches the customer through stored
  identities; headers are found whatever their case; a channel object is not
  bound to the workspace that happened to use it first.
"""

from __future__ import annotations

import email.message
import json
from pathlib import Path
from typing import Any

import pytest

from ecrm_core.channels import InboundRejected, InboundRequest, InboundResponse, InboundRoute, MessageEvent
from ecrm_core.hookspecs import hookimpl
from ecrm_core.registry import ChannelSpec
from ecrm_core.testing.channels import FakeClock, MemoryChannel, sign_body

CORPUS = json.loads((Path(__file__).parent / "fixtures" / "hardening" / "forged_events.json").read_text())
EVENTS = CORPUS["events"]
A1, A2, B1, B2 = "+14155550101", "+14155550102", "+14155550201", "+14155550202"
SECRET = "sms-provider-secret-0123"


class SmsChannel(MemoryChannel):
    """An SMS channel as the author wrote it from the docs: signed status
    callbacks and replies (STOP/START) from any number."""

    def __init__(self, identities: Any = None) -> None:
        super().__init__(name="sms", address_field="phone")
        self.identities = identities

    def inbound_routes(self) -> Any:
        return (*super().inbound_routes(), InboundRoute(name="reply", methods=("POST",)))

    def handle_inbound(self, request: InboundRequest) -> InboundResponse:
        if request.route != "reply":
            return super().handle_inbound(request)
        if request.header("x-signature") != sign_body(SECRET, request.body):
            raise InboundRejected("bad signature", status=401)
        data = json.loads(request.body)
        kind = {"STOP": "unsubscribed", "START": "resubscribed"}.get(data["text"].strip().upper(), "replied")
        event = MessageEvent(type=kind, channel="sms", address=data["from"], key=f"reply:{data['id']}")
        return InboundResponse(status=204, events=(event,))

    def plugin(self) -> Any:
        channel = self

        class P:
            @hookimpl
            def ecrm_register_channels(self) -> list[ChannelSpec]:
                return [
                    ChannelSpec(
                        name="sms",
                        factory=channel._bind,
                        capabilities={"receipts", "inbound", "replies"},
                        identities=channel.identities,
                    )
                ]

        return P()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, crm_factory: Any) -> Any:
    """Workspaces ``default`` and ``b``; A1, A2 in default, B1, B2 in b; one
    sms to A1 and one to B1, one mail to A1 (A2 and B2 were never messaged)."""
    sms = SmsChannel()
    mail = MemoryChannel(name="mail", address_field="email")
    options = {
        "plugins": [sms.plugin(), mail.plugin()],
        "clock": FakeClock(),
        "channels": {"sms": {"webhook_secret": SECRET}, "mail": {}},
    }
    factory = request.getfixturevalue("pg_crm_factory") if request.param == "postgres" else crm_factory
    crm = factory(**options)
    b = crm.in_workspace("b")
    consent = {"sms": "granted", "mail": "granted"}
    ids = {
        "$c_a1": crm.customers.create(name="A1", phone=A1, email="ada@example.com", consent=consent).id,
        "$c_a2": crm.customers.create(name="A2", phone=A2, consent=consent).id,
        "$c_b1": b.customers.create(name="B1", phone=B1, email="bob@example.com", consent=consent).id,
        "$c_b2": b.customers.create(name="B2", phone=B2, consent=consent).id,
    }
    # the channel is first used from workspace b
    ids["$m_b1"] = b.messages.send("sms", ids["$c_b1"], {"body": "hi"}).id
    ids["$m_a1"] = crm.messages.send("sms", ids["$c_a1"], {"body": "hi"}).id
    ids["$m_a1_mail"] = crm.messages.send("mail", ids["$c_a1"], {"body": "hi"}).id
    ids["$unknown"] = "f" * 32
    crm.messages.dispatch()
    b.messages.dispatch()
    return crm, ids, sms


def _resolve(value: Any, ids: dict[str, Any]) -> Any:
    return ids.get(value, value) if isinstance(value, str) else value


def _state(crm: Any, ids: dict[str, Any]) -> dict[str, Any]:
    views = {"default": crm, "b": crm.in_workspace("b")}
    where = {"$c_a1": "default", "$c_a2": "default", "$c_b1": "b", "$c_b2": "b"}
    out: dict[str, Any] = {}
    for ws, view in views.items():
        out[f"suppressed:{ws}"] = sorted((s.channel, s.address, s.scope) for s in view.messages.suppressions())
    for name, ws in where.items():
        view = views[ws]
        c = view.customers.get(ids[name])
        out[f"consent:{name}"] = {k: v.status for k, v in c.consent.items()}
        out[f"timeline:{name}"] = len(view.interactions.timeline(ids[name]))
    return out


@pytest.mark.parametrize("case", EVENTS, ids=[e["id"] for e in EVENTS])
def test_forged_events_change_nothing_and_genuine_ones_only_their_customer(world, case):
    crm, ids, _sms = world
    fields = {k: _resolve(v, ids) for k, v in case["event"].items()}
    fields.setdefault("channel", "sms")
    fields.setdefault("key", case["id"])
    event = MessageEvent(**fields)
    view = crm if case["via"] == "default" else crm.in_workspace(case["via"])
    before = _state(crm, ids)
    report = view.messages.apply([event])  # never raises for a bad event
    after = _state(crm, ids)
    if case["expect"] == "ignored":
        assert report.applied == () and report.duplicates == ()
        [ignored] = report.ignored
        assert ignored.event == event and ignored.reason
        assert after == before
        assert view.messages.apply_events([event]) == []
        return
    assert report.ignored == ()
    [applied] = report.applied
    customer = ids[case["customer"]]
    assert (applied.customer_id, applied.workspace) == (customer, case["workspace"])
    changed = {k for k in after if after[k] != before[k]}
    expected = {f"timeline:{case['customer']}"}
    if case.get("consent"):
        expected.add(f"consent:{case['customer']}")
        for target, status in case["consent"].items():
            assert after[f"consent:{case['customer']}"][target] == status
    if case.get("suppressed"):
        expected.add(f"suppressed:{case['workspace']}")
        assert any(s[1] == case["suppressed"] for s in after[f"suppressed:{case['workspace']}"])
    assert changed == expected
    again = view.messages.apply([event])
    assert again.applied == () and len(again.duplicates) == 1  # a replay changes nothing


def test_stop_from_a_number_never_texted_through_the_inbound_route(world):
    crm, ids, _sms = world
    body = json.dumps({"id": "r-1", "from": "+1 415 555 0102", "text": " stop "}).encode()
    # the host passes its framework's headers as they are: any case
    request = InboundRequest(route="reply", method="post", headers={"X-Signature": sign_body(SECRET, body)}, body=body)
    result = crm.channels.receive("sms", request)
    assert result.response.status == 204 and len(result.events.applied) == 1
    assert crm.customers.get(ids["$c_a2"]).consent["sms"].status == "denied"
    assert crm.messages.send("sms", ids["$c_a2"], {"body": "promo"}).reason == "no_consent"


def test_identity_kinds_declared_by_the_channel(crm_factory):
    sms = SmsChannel(identities=("push_token",))
    crm = crm_factory(plugins=[sms.plugin()], channels={"sms": {"webhook_secret": SECRET}})
    cid = crm.customers.create(name="P", phone=A1, consent={"sms": "granted"}).id
    crm.customers.add_alias(cid, "push_token", "tok-123")
    assert crm.messages.identity_kinds("sms", "tok-123") == ("push_token",)
    stop = MessageEvent(type="unsubscribed", channel="sms", address="tok-123", key="s1")
    assert [e.customer_id for e in crm.messages.apply_events([stop])] == [cid]
    # the phone is not one of this channel's identities
    by_phone = crm.messages.apply([MessageEvent(type="unsubscribed", channel="sms", address=A1, key="s2")])
    assert by_phone.applied == () and "has this address" in by_phone.ignored[0].reason


def test_channel_is_not_bound_to_the_first_workspace_that_used_it(world):
    crm, ids, _sms = world
    # workspace b used the channel first; it still lives in the CRM's own workspace
    assert crm.channels.get("sms").crm.workspace == "default"
    assert crm.in_workspace("b").channels.get("sms") is crm.channels.get("sms")
    # a signed receipt for b's message, through the root CRM (as ecrm-api does)
    body = json.dumps({"type": "delivered", "message_id": ids["$m_b1"], "id": "rcpt-b"}).encode()
    receipt = InboundRequest(
        route="receipt", method="POST", headers=[("X-SIGNATURE", sign_body(SECRET, body))], body=body
    )
    result = crm.channels.receive("sms", receipt)
    assert [(e.workspace, e.customer_id) for e in result.events.applied] == [("b", ids["$c_b1"])]
    assert "message_delivered" in [i.kind for i in crm.in_workspace("b").interactions.timeline(ids["$c_b1"])]
    # an event for b's customer, with only the customer id, from a view of the default workspace
    event = MessageEvent(type="unsubscribed", channel="sms", customer_id=ids["$c_b1"], key="pref-1")
    assert [e.workspace for e in crm.messages.apply_events([event])] == ["b"]


def _werkzeug(pairs: list[tuple[str, str]]) -> Any:
    from werkzeug.datastructures import Headers

    return Headers(pairs)


def _multidict(pairs: list[tuple[str, str]]) -> Any:
    from multidict import CIMultiDict

    return CIMultiDict(pairs)


def _litestar(pairs: list[tuple[str, str]]) -> Any:
    from litestar.datastructures import Headers

    return Headers([(k.encode(), v.encode()) for k, v in pairs])  # as ASGI hands them over


def _mime(pairs: list[tuple[str, str]]) -> Any:
    msg = email.message.Message()
    for k, v in pairs:
        msg[k] = v
    return msg


HEADER_MAPPINGS = {
    "dict": lambda pairs: dict(pairs),
    "pairs": lambda pairs: list(pairs),
    "bytes-pairs": lambda pairs: [(k.encode(), v.encode()) for k, v in pairs],
    "werkzeug": _werkzeug,
    "multidict": _multidict,
    "litestar": _litestar,
    "email.message": _mime,
}
HEADER_NAMES = ["X-Signature", "x-signature", "X-SIGNATURE", "x-SiGnAtUrE", " X-Signature"]


@pytest.mark.parametrize("kind", sorted(HEADER_MAPPINGS))
@pytest.mark.parametrize("name", HEADER_NAMES)
def test_headers_are_found_whatever_the_case_and_mapping(kind, name):
    if kind in ("werkzeug", "multidict"):
        pytest.importorskip(kind)
    given = HEADER_MAPPINGS[kind]([(name.strip(), "abc"), ("Content-Type", "application/json")])
    request = InboundRequest(route="receipt", method="POST", headers=given)
    for asked in ("x-signature", "X-Signature", "X-SIGNATURE"):
        assert request.header(asked) == "abc"
    assert request.header("content-type") == "application/json"
    assert request.header("missing", "d") == "d"


def test_a_repeated_header_is_never_read_as_the_genuine_one():
    request = InboundRequest(route="r", method="POST", headers=[("X-Signature", "forged"), ("x-signature", "real")])
    assert request.header("x-signature") == "forged, real"


def test_memory_receipt_with_a_capitalised_header_is_accepted(world):
    crm, ids, _sms = world
    body = json.dumps({"type": "delivered", "message_id": ids["$m_a1"], "id": "r9"}).encode()
    request = InboundRequest(
        route="receipt", method="POST", headers={"X-Signature": sign_body(SECRET, body)}, body=body
    )
    assert crm.channels.handle_inbound("sms", request).status == 204
