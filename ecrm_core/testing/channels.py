"""The channel test kit: a reference in-memory channel and the conformance suite.

Every channel plugin proves it plugs into the delivery pipeline correctly by
subclassing :class:`ChannelConformance` in its own tests (the way SQLAlchemy
dialects subclass its dialect suite)::

    from ecrm_core.testing.channels import ChannelConformance

    class TestSmsConformance(ChannelConformance):
        channel = "sms"

        def plugins(self):                  # what registers the channel
            return [my_sms_plugin]

        def channel_config(self):           # CRM(channels={"sms": ...})
            return {"api_url": self.provider.url}

        def customer_fields(self, n):       # a reachable customer
            return {"phone": f"+1415555{n:04d}"}

        def delivered_ids(self):            # Message.id values the provider got
            return [m["client_ref"] for m in self.provider.received]

        def fail_next(self, kind):          # "temporary" | "permanent" | "address"
            self.provider.fail_next(kind)

        def inbound_request(self, crm, message_id, *, genuine):
            ...                             # a signed (or forged) receipt, or None

The suite checks that consent and suppression are honoured, that outcomes
are classified (accepted / deferred / rejected, and bad addresses
suppressed), that retries reuse the message id and never resend one
attempt, that a worker crash between claim and record loses nothing, that
``render_many`` answers one result per context (a failure in its place,
never raised) and one customer who cannot be rendered does not stop the
others, and that inbound routes refuse forged requests and accept genuine
ones whatever the case of their header names.  :class:`MemoryChannel` passes
it (``tests/test_channels.py``) and is a small, complete example of a
channel.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from ..channels import (
    CAPABILITIES,
    Channel,
    Content,
    DeliveryResult,
    InboundRejected,
    InboundRequest,
    InboundResponse,
    InboundRoute,
    Message,
    MessageEvent,
    TemplateError,
)
from ..crm import CRM
from ..errors import NotFound
from ..hookspecs import hookimpl
from ..registry import ChannelSpec
from ._pytest_optional import pytest

__all__ = ["FakeClock", "MemoryChannel", "ChannelConformance", "sign_body"]


class FakeClock:
    """A settable clock for ``CRM(clock=...)``: ``clock.advance(seconds=60)``."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, **delta: float) -> datetime:
        with self._lock:
            self.now = self.now + timedelta(**delta)
            return self.now


def sign_body(secret: str, body: bytes) -> str:
    """The ``X-Signature`` a :class:`MemoryChannel` receipt must carry (hex HMAC-SHA256)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class MemoryChannel(Channel):
    """A complete channel that delivers into memory (tests, examples).

    * ``address`` reads ``address_field`` of the customer (``email`` by default);
    * ``send`` records the message in ``sent`` and accepts it, unless
      ``fail_next`` queued a failure: ``"temporary"`` (deferred),
      ``"permanent"`` (rejected), ``"address"`` (rejected, address
      suppressed) or ``"raise"`` (the provider call raises);
    * one inbound route, ``receipt`` (POST JSON
      ``{"type": "delivered", "message_id": ...}``), authenticated by an
      ``X-Signature`` header (:func:`sign_body` with ``webhook_secret``).
    """

    def __init__(
        self,
        crm: Any = None,
        config: Mapping[str, Any] | None = None,
        *,
        name: str = "memory",
        address_field: str = "email",
        capabilities: Sequence[str] = ("receipts", "inbound"),
    ) -> None:
        self.name = name  # type: ignore[misc]  # per instance: one class, many names
        self.address_field = address_field
        self.capabilities = frozenset(capabilities)
        super().__init__(crm, config)
        self.sent: list[Message] = []
        self._script: list[str] = []
        self._lock = threading.Lock()
        self.fail_with: BaseException | None = None

    # -- test controls ------------------------------------------------------
    def fail_next(self, kind: str, times: int = 1) -> None:
        if kind not in ("temporary", "permanent", "address", "raise"):
            raise ValueError("kind must be 'temporary', 'permanent', 'address' or 'raise'")
        with self._lock:
            self._script.extend([kind] * times)

    @property
    def delivered_ids(self) -> list[str]:
        return [m.id for m in self.sent]

    def plugin(self) -> Any:
        """A plugin object registering this channel."""
        channel = self

        class _Plugin:
            @hookimpl
            def ecrm_register_channels(self) -> list[ChannelSpec]:
                return [
                    ChannelSpec(
                        name=channel.name,
                        factory=channel._bind,
                        capabilities=channel.capabilities,
                        description="delivers into memory (tests and examples)",
                    )
                ]

        return _Plugin()

    def _bind(self, crm: Any) -> MemoryChannel:
        self.crm = crm
        if not self.config:
            self.config = crm.channels.config(self.name)
        return self

    # -- the channel API ----------------------------------------------------
    def address(self, customer: Mapping[str, Any]) -> str | None:
        value = customer.get(self.address_field)
        return str(value) if value else None

    def send(self, message: Message) -> DeliveryResult:
        if self.fail_with is not None:
            raise self.fail_with
        with self._lock:
            kind = self._script.pop(0) if self._script else None
        if kind == "raise":
            raise ConnectionError("provider unreachable")
        if kind == "temporary":
            return DeliveryResult.deferred("provider busy", code="421")
        if kind == "permanent":
            return DeliveryResult.rejected("content refused", code="554")
        if kind == "address":
            return DeliveryResult.rejected("no such recipient", code="550", suppress=True)
        with self._lock:
            self.sent.append(message)
        return DeliveryResult.accepted(f"mem-{message.id}-{message.attempt}")

    def inbound_routes(self) -> Sequence[InboundRoute]:
        return (InboundRoute(name="receipt", methods=("POST",), description="delivery receipts (signed)"),)

    def handle_inbound(self, request: InboundRequest) -> InboundResponse:
        if request.route != "receipt":
            return super().handle_inbound(request)
        secret = self.config.get("webhook_secret")
        if not secret:
            raise InboundRejected("receipts are not configured (set webhook_secret)", status=404)
        given = request.header("x-signature") or ""
        if not hmac.compare_digest(given, sign_body(secret, request.body)):
            raise InboundRejected("bad or missing X-Signature", status=401)
        try:
            data = json.loads(request.body)
            event = MessageEvent(
                type=data["type"], channel=self.name, message_id=data["message_id"], key=f"receipt:{data['id']}"
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InboundRejected(f"malformed receipt: {exc}", status=400) from None
        return InboundResponse(status=204, events=(event,))


# ---------------------------------------------------------------------------
# The conformance suite
# ---------------------------------------------------------------------------


class ChannelConformance:
    """Subclass in a channel plugin's tests; override the hooks below.

    Required: :attr:`channel`, :meth:`plugins` (unless the plugin is an
    installed entry point and :attr:`load_entrypoints` is true),
    :meth:`customer_fields`, :meth:`delivered_ids`, :meth:`fail_next`.
    Optional: :meth:`channel_config`, :meth:`template`,
    :meth:`inbound_request` (return ``None`` when the channel has no
    inbound route), :attr:`secret`.

    Each test gets a fresh CRM on SQLite in ``tmp_path`` with a
    :class:`FakeClock` (``self.clock``) and retries without waiting
    (``backoff=0``).  Fixtures of the subclass (servers…) may set attributes
    on ``self``; they run before the suite's ``crm`` fixture if the
    subclass's fixture is autouse.
    """

    channel: ClassVar[str] = ""
    load_entrypoints: ClassVar[bool] = False
    secret: ClassVar[str] = "conformance-secret-0123456789abcdef"

    # -- what the subclass provides -----------------------------------------
    def plugins(self) -> Sequence[Any]:
        return ()

    def channel_config(self) -> dict[str, Any]:
        return {}

    def customer_fields(self, n: int) -> dict[str, Any]:
        """Fields that make customer ``n`` reachable on the channel."""
        raise NotImplementedError("return e.g. {'email': f'c{n}@example.com'}")

    def template(self) -> Any:
        """What ``crm.messages.send`` gets as ``template``."""
        return Content(subject="Hello", body="Hello {{ customer.first_name }}", html=None)

    def delivered_ids(self) -> list[str]:
        """``Message.id`` of every message the provider received, in order (repeats included)."""
        raise NotImplementedError

    def fail_next(self, kind: str) -> None:
        """Make the provider fail the next send: ``temporary``, ``permanent`` or ``address``."""
        raise NotImplementedError

    def inbound_request(self, crm: CRM, message_id: str, *, genuine: bool) -> InboundRequest | None:
        """A provider callback reporting ``delivered`` for ``message_id``: correctly
        signed when ``genuine``, else forged (wrong signature).  ``None`` if the
        channel has no signed inbound route."""
        return None

    # -- fixtures ----------------------------------------------------------------
    @pytest.fixture
    def crm(self, tmp_path: Path) -> Iterator[CRM]:
        from . import make_crm

        self.clock = FakeClock()
        config = dict(self.channel_config())
        policy = {"backoff": 0, "max_backoff": 0, "max_attempts": 3, **config.pop("policy", {})}
        crm = make_crm(
            tmp_path / "conformance.db",
            plugins=list(self.plugins()),
            load_entrypoints=self.load_entrypoints,
            clock=self.clock,
            secret=self.secret,
            channels={self.channel: {**config, "policy": policy}},
        )
        try:
            yield crm
        finally:
            crm.close()

    def _customer(self, crm: CRM, n: int, *, consent: bool | None = True, **extra: Any) -> int:
        fields = {"name": f"Customer {n}", **self.customer_fields(n), **extra}
        if consent is not None:
            fields["consent"] = {self.channel: "granted" if consent else "denied"}
        cid = crm.customers.create(**fields).id
        assert cid is not None
        return cid

    def _send(self, crm: CRM, cid: int, **kw: Any) -> Any:
        return crm.messages.send(self.channel, cid, self.template(), **kw)

    # -- the suite ---------------------------------------------------------------
    def test_channel_is_registered_with_known_capabilities(self, crm: CRM) -> None:
        spec = crm.channels.spec(self.channel)
        assert spec.capabilities <= CAPABILITIES, f"unknown capabilities: {set(spec.capabilities) - CAPABILITIES}"
        assert isinstance(crm.channels.get(self.channel), Channel)

    def test_address_comes_from_plain_customer_data(self, crm: CRM) -> None:
        cid = self._customer(crm, 1)
        from ..services.messages import plain_customer

        address = crm.channels.get(self.channel).address(plain_customer(crm.customers.get(cid)))
        assert isinstance(address, str) and address

    def test_customer_without_address_is_blocked(self, crm: CRM) -> None:
        cid = crm.customers.create(name="Nobody", consent={self.channel: "granted"}).id
        assert cid is not None
        record = self._send(crm, cid)
        assert (record.status, record.reason) == ("blocked", "no_address")

    def test_consent_is_honoured(self, crm: CRM) -> None:
        granted = self._customer(crm, 1, consent=True)
        denied = self._customer(crm, 2, consent=False)
        never = self._customer(crm, 3, consent=None)
        sent = self._send(crm, granted)
        blocked = [self._send(crm, cid) for cid in (denied, never)]
        assert [b.reason for b in blocked] == ["no_consent", "no_consent"]
        crm.messages.dispatch()
        assert self.delivered_ids() == [sent.id]
        assert crm.messages.get(sent.id).status == "sent"

    def test_opt_out_of_a_purpose_is_honoured_and_transactional_is_not_marketing(self, crm: CRM) -> None:
        cid = self._customer(crm, 1, consent=None)
        crm.customers.set_consent(cid, self.channel, True)
        crm.customers.set_consent(cid, f"{self.channel}:marketing", False)
        assert self._send(crm, cid, purpose="marketing").reason == "opted_out"
        other = self._customer(crm, 2, consent=False)
        receipt = self._send(crm, other, purpose="transactional")
        assert receipt.status == "queued"
        crm.messages.dispatch()
        assert self.delivered_ids() == [receipt.id]

    def test_consent_withdrawn_after_the_decision_blocks_the_send(self, crm: CRM) -> None:
        cid = self._customer(crm, 1)
        record = self._send(crm, cid)
        crm.customers.set_consent(cid, self.channel, False)
        report = crm.messages.dispatch()
        assert report.blocked == 1 and self.delivered_ids() == []
        assert crm.messages.get(record.id).reason == "no_consent"

    def test_suppressed_address_is_not_sent(self, crm: CRM) -> None:
        cid = self._customer(crm, 1)
        transactional_only = self._customer(crm, 2)
        address = crm.messages.send(self.channel, cid, self.template()).address
        other = crm.messages.get(self._send(crm, transactional_only).id).address
        assert address and other
        crm.messages.dispatch()
        self_delivered = len(self.delivered_ids())
        crm.messages.suppress(self.channel, address, reason="manual")
        crm.messages.suppress(self.channel, other, reason="complaint", scope="marketing")
        assert self._send(crm, cid).reason == "suppressed"
        assert self._send(crm, cid, purpose="transactional").reason == "suppressed"
        assert self._send(crm, transactional_only).reason == "suppressed"
        receipt = self._send(crm, transactional_only, purpose="transactional")
        crm.messages.dispatch()
        assert self.delivered_ids()[self_delivered:] == [receipt.id]

    def test_accepted_send_is_logged_and_on_the_timeline(self, crm: CRM) -> None:
        cid = self._customer(crm, 1)
        record = self._send(crm, cid)
        report = crm.messages.dispatch()
        assert (report.sent, report.retrying, report.dead) == (1, 0, 0)
        after = crm.messages.get(record.id)
        assert after.status == "sent" and after.sent_at is not None and after.provider_id
        [attempt] = crm.messages.attempts(record.id)
        assert attempt.status == "accepted" and attempt.finished_at is not None
        kinds = [(i.kind, i.channel, i.properties["message"]) for i in crm.interactions.timeline(cid)]
        assert ("message_sent", self.channel, record.id) in kinds

    def test_temporary_failure_is_retried_with_the_same_message_id(self, crm: CRM) -> None:
        cid = self._customer(crm, 1)
        record = self._send(crm, cid)
        self.fail_next("temporary")
        first = crm.messages.dispatch(limit=1)
        assert (first.sent, first.retrying) == (0, 1)
        assert crm.messages.get(record.id).status == "queued"
        self.clock.advance(seconds=1)
        second = crm.messages.dispatch()
        assert second.sent == 1
        attempts = crm.messages.attempts(record.id)
        assert [a.status for a in attempts] == ["deferred", "accepted"]
        assert len({a.attempt_id for a in attempts}) == 2
        assert self.delivered_ids().count(record.id) == 1
        timeline = [i.kind for i in crm.interactions.timeline(cid) if i.properties.get("message") == record.id]
        assert sorted(timeline) == ["message_deferred", "message_sent"]

    def test_out_of_attempts_goes_to_the_dead_letter_and_can_be_replayed(self, crm: CRM) -> None:
        cid = self._customer(crm, 1)
        record = self._send(crm, cid)
        for _ in range(3):  # max_attempts=3 in this suite
            self.fail_next("temporary")
            crm.messages.dispatch(limit=1)
            self.clock.advance(seconds=1)
        dead = crm.messages.get(record.id)
        assert dead.status == "dead" and "3 attempt" in (dead.reason or "")
        assert [m.id for m in crm.messages.dead_letters()] == [record.id]
        assert crm.messages.replay(record.id).status == "queued"
        assert crm.messages.dispatch().sent == 1
        assert self.delivered_ids() == [record.id]

    def test_permanent_failure_is_not_retried(self, crm: CRM) -> None:
        cid = self._customer(crm, 1)
        record = self._send(crm, cid)
        self.fail_next("permanent")
        report = crm.messages.dispatch()
        assert (report.dead, report.retrying) == (1, 0)
        self.clock.advance(hours=1)
        assert crm.messages.dispatch().attempted == 0
        assert [a.status for a in crm.messages.attempts(record.id)] == ["rejected"]
        assert crm.messages.suppressions() == []  # content refusal: the address is fine

    def test_bad_address_is_suppressed(self, crm: CRM) -> None:
        cid = self._customer(crm, 1)
        record = self._send(crm, cid)
        self.fail_next("address")
        crm.messages.dispatch()
        assert crm.messages.get(record.id).status == "dead"
        [entry] = crm.messages.suppressions()
        assert entry.address == record.address and entry.scope == "all"
        assert self._send(crm, cid).reason == "suppressed"

    def test_crash_between_claim_and_record_loses_nothing(self, crm: CRM) -> None:
        cid = self._customer(crm, 1)
        record = self._send(crm, cid)
        claimed = crm.messages._claim(None, 10, {"recovered": 0, "blocked": 0})
        assert claimed and claimed[0].message.id == record.id  # ...and the worker dies here
        assert crm.messages.dispatch().attempted == 0  # the lease holds
        self.clock.advance(seconds=crm.channels.policy(self.channel).lease + 1)
        report = crm.messages.dispatch()
        assert report.recovered == 1 and report.sent == 1
        attempts = crm.messages.attempts(record.id)
        assert [a.status for a in attempts] == ["lost", "accepted"]
        assert self.delivered_ids() == [record.id]

    def test_late_report_of_an_expired_attempt_does_not_override(self, crm: CRM) -> None:
        cid = self._customer(crm, 1)
        record = self._send(crm, cid)
        stale = crm.messages._claim(None, 10, {"recovered": 0, "blocked": 0})
        assert stale
        self.clock.advance(seconds=crm.channels.policy(self.channel).lease + 1)
        assert crm.messages.dispatch().sent == 1
        totals = {"sent": 0, "retrying": 0, "dead": 0}
        crm.messages._record_results([(stale[0], DeliveryResult.rejected("late"))], totals)
        assert crm.messages.get(record.id).status == "sent"

    def test_dedupe_key_sends_once(self, crm: CRM) -> None:
        cid = self._customer(crm, 1)
        first = self._send(crm, cid, dedupe_key="order-1-receipt", purpose="transactional")
        again = self._send(crm, cid, dedupe_key="order-1-receipt", purpose="transactional")
        assert again.id == first.id
        crm.messages.dispatch()
        assert self.delivered_ids() == [first.id]

    def test_outbox_joins_the_hosts_transaction(self, crm: CRM) -> None:
        cid = self._customer(crm, 1)
        with crm.db.engine.connect() as conn:
            with conn.begin() as tx:
                crm.using(conn).messages.send(self.channel, cid, self.template(), dedupe_key="rolled-back")
                tx.rollback()
        assert crm.messages.list() == []
        with crm.db.engine.connect() as conn, conn.begin():
            kept = crm.using(conn).messages.send(self.channel, cid, self.template())
        crm.messages.dispatch()
        assert self.delivered_ids() == [kept.id]

    def test_send_many_returns_one_result_per_message(self, crm: CRM) -> None:
        ids = [self._customer(crm, n) for n in range(1, 6)]
        report = crm.messages.send_many(self.channel, self.template(), customer_ids=ids)
        assert report.queued == 5
        self.fail_next("temporary")
        result = crm.messages.dispatch(batch_size=5)  # no backoff here: the retry follows at once
        assert (result.sent, result.retrying) == (5, 1)
        assert sorted(self.delivered_ids()) == sorted(m.id for m in crm.messages.list())

    def test_render_many_answers_one_result_per_context(self, crm: CRM) -> None:
        chan = crm.channels.get(self.channel)
        cid = self._customer(crm, 1)
        from ..services.messages import plain_customer

        customer = plain_customer(crm.customers.get(cid))

        def context(uid: str, data: Any) -> dict[str, Any]:
            message = {"id": uid, "channel": self.channel, "purpose": "marketing", "transactional": False}
            return {"customer": data, "message": {**message, "workspace": crm.workspace}}

        contexts = [context("m-good", customer), context("m-empty", {}), context("m-good2", customer)]
        results = chan.render_many(
            self.template(), contexts, message_ids=["m-good", "m-empty", "m-good2"], purpose="marketing"
        )
        assert len(results) == 3, "render_many must answer one result per context, in order"
        assert isinstance(results[0], Content) and isinstance(results[2], Content)
        assert isinstance(results[1], Content | TemplateError), "a failure goes in its context's place"

    def test_one_customer_who_cannot_be_rendered_does_not_stop_the_others(self, crm: CRM) -> None:
        ids = [self._customer(crm, n) for n in range(1, 5)]

        def context(customer: Any) -> dict[str, Any]:
            if customer["id"] == ids[1]:
                raise TemplateError("this customer's data cannot be rendered")
            return {}

        report = crm.messages.send_many(self.channel, self.template(), customer_ids=ids, context=context)
        assert report.queued == 3 and dict(report.failed) == {"context_failed": 1}
        [failure] = report.failures
        assert failure.customer_id == ids[1]
        crm.messages.dispatch()
        assert len(self.delivered_ids()) == 3

    def test_inbound_header_names_in_any_case(self, crm: CRM) -> None:
        cid = self._customer(crm, 1)
        record = self._send(crm, cid)
        crm.messages.dispatch()
        genuine = self.inbound_request(crm, record.id, genuine=True)
        if genuine is None:
            pytest.skip("the channel has no signed inbound route")
        shouted = InboundRequest(
            route=genuine.route,
            method=genuine.method,
            params=genuine.params,
            query=genuine.query,
            headers=[(k.upper(), v) for k, v in genuine.headers.items()],
            body=genuine.body,
            form=genuine.form,
        )
        response = crm.channels.handle_inbound(self.channel, shouted)
        assert 200 <= response.status < 400

    def test_inbound_refuses_forged_requests(self, crm: CRM) -> None:
        cid = self._customer(crm, 1)
        record = self._send(crm, cid)
        crm.messages.dispatch()
        forged = self.inbound_request(crm, record.id, genuine=False)
        if forged is None:
            pytest.skip("the channel has no signed inbound route")
        before = len(crm.interactions.timeline(cid))
        with pytest.raises(InboundRejected):
            crm.channels.handle_inbound(self.channel, forged)
        assert len(crm.interactions.timeline(cid)) == before

    def test_inbound_genuine_request_is_applied_once(self, crm: CRM) -> None:
        cid = self._customer(crm, 1)
        record = self._send(crm, cid)
        crm.messages.dispatch()
        genuine = self.inbound_request(crm, record.id, genuine=True)
        if genuine is None:
            pytest.skip("the channel has no signed inbound route")
        before = len(crm.interactions.timeline(cid))
        response = crm.channels.handle_inbound(self.channel, genuine)
        assert 200 <= response.status < 400 and response.events
        after = len(crm.interactions.timeline(cid))
        assert after > before
        crm.channels.handle_inbound(self.channel, genuine)  # a replayed callback
        assert len(crm.interactions.timeline(cid)) == after

    def test_unknown_message_lookup_is_not_found(self, crm: CRM) -> None:
        with pytest.raises(NotFound):
            crm.messages.get("no-such-message")
