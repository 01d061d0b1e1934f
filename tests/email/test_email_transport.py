"""ecrm_email.transport.SMTPTransport against a real aiosmtpd server on 127.0.0.1
(plain, STARTTLS + AUTH, implicit TLS with trustme certificates)."""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from ecrm_email.mime import build_message, envelope_sender, message_bytes
from ecrm_email.testing import TEST_PASSWORD, SMTPTestServer, smtp_config, start_smtp_server
from ecrm_email.transport import Envelope, SMTPTransport, TokenBucket, classify_reply

from ecrm_core.channels import DeliveryResult, load_transport
from ecrm_core.errors import ValidationError

SENDER = "Shop <shop@example.com>"


def envelope(to: str = "ada@example.com", *, uid: str | None = None, subject: str = "Hello") -> Envelope:
    uid = uid or uuid.uuid4().hex
    msg = build_message(message_id=uid, from_=SENDER, to=to, subject=subject, text=f"for {to}", domain="example.com")
    return Envelope(
        mail_from=envelope_sender(SENDER),
        rcpt=to,
        data=message_bytes(msg),
        message_id=str(msg["Message-ID"]),
        attempt_id=uuid.uuid4().hex,
    )


_OPEN: list[SMTPTransport] = []


def transport(server: SMTPTestServer, **overrides: Any) -> SMTPTransport:
    t = SMTPTransport(**smtp_config(server, **overrides))
    _OPEN.append(t)
    return t


@pytest.fixture(autouse=True)
def _close_transports() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def other_ca(tmp_path: Path) -> str:
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


# ---------------------------------------------------------------------------
# Delivery: plain, STARTTLS + AUTH, implicit TLS
# ---------------------------------------------------------------------------


def test_plain_send_arrives_intact(smtp_server: SMTPTestServer) -> None:
    env = envelope(subject="Your order ünï")
    with transport(smtp_server) as t:
        result = t.send(env)
    assert result.status == "accepted"
    received = smtp_server.envelopes
    assert len(received) == 1
    assert received[0].mail_from == "shop@example.com"
    assert received[0].rcpt_tos == ("ada@example.com",)
    assert result.provider_id == received[0].queue_id  # "250 2.0.0 Ok: queued as <id>"
    assert result.code == "250 2.0.0"
    msg = smtp_server.messages[0]
    assert msg["Subject"] == "Your order ünï"
    assert msg["Message-ID"] == env.message_id
    assert msg["To"].addresses[0].addr_spec == "ada@example.com"


def test_starttls_with_auth(smtp_starttls_server: SMTPTestServer) -> None:
    config = smtp_config(smtp_starttls_server)
    assert config["security"] == "starttls" and config["username"] == "ecrm"
    with SMTPTransport(**config) as t:
        results = t.send_many([envelope(), envelope("bob@example.com")])
    assert [r.status for r in results] == ["accepted", "accepted"]
    assert [e.rcpt_tos for e in smtp_starttls_server.envelopes] == [("ada@example.com",), ("bob@example.com",)]
    assert smtp_starttls_server.connections == 1


def test_starttls_server_requires_auth(smtp_starttls_server: SMTPTestServer) -> None:
    config = smtp_config(smtp_starttls_server)
    del config["username"], config["password"]
    t = SMTPTransport(**config)
    _OPEN.append(t)
    result = t.send(envelope())
    assert result.status == "deferred"  # a configuration problem: nothing is lost
    assert result.code is not None and result.code.startswith("530")
    assert "smtp.username" in result.reason
    assert smtp_starttls_server.envelopes == []


def test_wrong_password_is_deferred_logged_once_and_never_shown(
    smtp_starttls_server: SMTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "hunter2-very-secret"
    caplog.set_level(logging.DEBUG)
    t = transport(smtp_starttls_server, password=secret)
    results = [*t.send_many([envelope(), envelope()]), t.send(envelope())]
    assert [r.status for r in results] == ["deferred"] * 3
    assert results[0].code == "535 5.7.8"
    assert "fix smtp.username/smtp.password" in results[0].reason
    errors = [r for r in caplog.records if r.name == "ecrm.email.transport" and r.levelno >= logging.ERROR]
    assert len(errors) == 1
    for text in [caplog.text, repr(t), str(t), *(repr(r) for r in results)]:
        assert secret not in text
    assert smtp_starttls_server.envelopes == []


def test_starttls_against_a_server_without_starttls(smtp_server: SMTPTestServer) -> None:
    result = transport(smtp_server, security="starttls").send(envelope())
    assert result.status == "deferred"
    assert "does not offer STARTTLS" in result.reason
    assert smtp_server.envelopes == []


def test_implicit_tls_verified_against_the_ca(smtp_tls_server: SMTPTestServer) -> None:
    with transport(smtp_tls_server) as t:
        assert t.send(envelope()).status == "accepted"
    assert len(smtp_tls_server.messages) == 1


@pytest.mark.parametrize("kind", ["tls", "starttls"])
def test_wrong_ca_is_deferred_with_a_tls_reason(kind: str, other_ca: str) -> None:
    with start_smtp_server(kind) as server:
        result = transport(server, ca_file=other_ca).send(envelope())
        assert result.status == "deferred"
        assert "TLS certificate verification failed" in result.reason
        assert "smtp.ca_file" in result.reason
        assert server.envelopes == []


def test_verify_false_skips_certificate_checks(smtp_tls_server: SMTPTestServer, other_ca: str) -> None:
    t = transport(smtp_tls_server, ca_file=other_ca, verify=False)
    assert t.send(envelope()).status == "accepted"


def test_plaintext_auth_to_loopback_only_when_chosen(smtp_server: SMTPTestServer) -> None:
    # Allowed to a loopback host; the plain test server offers no AUTH at all.
    result = transport(smtp_server, username="u", password="p").send(envelope())
    assert result.status == "deferred"
    assert "smtp.security" in result.reason or "AUTH" in result.reason
    with pytest.raises(ValidationError) as err:
        SMTPTransport(host="smtp.example.com", security="none", username="u", password="p")
    assert err.value.field == "smtp.security"
    assert "plaintext" in str(err.value)


def test_stevedore_driver(smtp_server: SMTPTestServer) -> None:
    t = load_transport("email", "smtp", **smtp_config(smtp_server))
    _OPEN.append(t)
    assert isinstance(t, SMTPTransport)
    assert t.send(envelope()).status == "accepted"


# ---------------------------------------------------------------------------
# Connection reuse
# ---------------------------------------------------------------------------


def test_one_connection_for_many_messages(smtp_server: SMTPTestServer) -> None:
    t = transport(smtp_server)
    results = [t.send(envelope(f"user{i}@example.com")) for i in range(5)]
    results += t.send_many([envelope(f"batch{i}@example.com") for i in range(5)])
    assert [r.status for r in results] == ["accepted"] * 10
    assert len(smtp_server.envelopes) == 10
    assert smtp_server.connections == 1
    assert t.connections_opened == 1
    t.close()
    assert t.send(envelope()).status == "accepted"
    assert smtp_server.connections == 2


def test_reconnects_after_the_server_closed_an_idle_connection(smtp_server: SMTPTestServer) -> None:
    t = transport(smtp_server)
    assert t.send(envelope("a@example.com")).status == "accepted"
    smtp_server.disconnect_all()
    assert t.send(envelope("b@example.com")).status == "accepted"
    assert [e.rcpt_tos for e in smtp_server.envelopes] == [("a@example.com",), ("b@example.com",)]
    assert smtp_server.connections == 2


def test_421_on_a_reused_connection_retries_mail_once(smtp_server: SMTPTestServer) -> None:
    t = transport(smtp_server)
    assert t.send(envelope()).status == "accepted"
    smtp_server.fail_next(421, "4.4.2 idle too long, closing", at="mail")
    assert t.send(envelope("b@example.com")).status == "accepted"
    assert len(smtp_server.envelopes) == 2
    assert smtp_server.connections == 2
    # On a fresh connection a 421 is just deferred (no loop).
    t.close()
    smtp_server.fail_next(421, "4.3.2 shutting down", at="mail")
    result = t.send(envelope("c@example.com"))
    assert result.status == "deferred" and result.code == "421 4.3.2"
    assert len(smtp_server.envelopes) == 2


def test_max_per_connection(smtp_server: SMTPTestServer) -> None:
    t = transport(smtp_server, max_per_connection=2)
    assert [r.status for r in t.send_many([envelope() for _ in range(5)])] == ["accepted"] * 5
    assert smtp_server.connections == 3


def test_idle_timeout_reconnects(smtp_server: SMTPTestServer) -> None:
    t = transport(smtp_server, idle_timeout=0.001)
    assert t.send(envelope()).status == "accepted"
    threading.Event().wait(0.05)  # longer than idle_timeout: the connection is not reused
    assert t.send(envelope()).status == "accepted"
    assert smtp_server.connections == 2


def test_threads_share_one_connection(smtp_server: SMTPTestServer) -> None:
    t = transport(smtp_server)
    results: list[DeliveryResult] = []

    def worker(n: int) -> None:
        for i in range(5):
            results.append(t.send(envelope(f"t{n}-{i}@example.com")))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status for r in results] == ["accepted"] * 20
    assert len({e.rcpt_tos for e in smtp_server.envelopes}) == 20
    assert smtp_server.connections == 1


# ---------------------------------------------------------------------------
# Classification of server answers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "code", "text", "status", "result_code", "suppress"),
    [
        ("data", 451, "4.3.0 Try again later", "deferred", "451 4.3.0", False),
        ("rcpt", 450, "4.2.1 Mailbox busy", "deferred", "450 4.2.1", False),
        ("mail", 452, "Insufficient storage", "deferred", "452", False),
        ("rcpt", 550, "5.1.1 No such user", "rejected", "550 5.1.1", True),
        ("rcpt", 553, "5.1.3 Bad address syntax", "rejected", "553 5.1.3", True),
        ("rcpt", 551, "User not local", "rejected", "551", True),
        ("rcpt", 550, "Mailbox unavailable", "rejected", "550", True),
        ("rcpt", 550, "Rejected by policy", "rejected", "550", False),
        ("rcpt", 550, "5.7.1 Relaying denied", "rejected", "550 5.7.1", False),
        ("data", 554, "5.7.1 Message rejected as spam", "rejected", "554 5.7.1", False),
        ("data", 552, "5.3.4 Message too big", "rejected", "552 5.3.4", False),
        ("data", 550, "5.1.1 Recipient address rejected", "rejected", "550 5.1.1", True),
        ("mail", 553, "5.1.8 Sender address rejected", "rejected", "553 5.1.8", False),
    ],
)
def test_server_answers_are_classified(
    smtp_server: SMTPTestServer, at: Any, code: int, text: str, status: str, result_code: str, suppress: bool
) -> None:
    t = transport(smtp_server)
    smtp_server.fail_next(code, text, at=at)
    result = t.send(envelope())
    assert (result.status, result.code, result.suppress) == (status, result_code, suppress)
    assert text in result.reason and at.upper() in result.reason
    assert smtp_server.envelopes == []
    # The session was reset, not dropped: the next message uses the same connection.
    assert t.send(envelope()).status == "accepted"
    assert smtp_server.connections == 1


def test_classify_reply_table() -> None:
    assert classify_reply(250, b"2.0.0 Ok", stage="data").status == "accepted"
    assert classify_reply(421, b"4.7.0 Try later", stage="mail").code == "421 4.7.0"
    assert classify_reply(550, b"5.1.10 Null MX", stage="rcpt").suppress is True
    assert classify_reply(550, b"5.1.1 x", stage="mail").suppress is False  # the sender, not the recipient
    assert classify_reply(530, b"5.7.0 Authentication required", stage="mail").status == "deferred"
    assert classify_reply(554, b"5.7.1", stage="data").suppress is False


def test_failures_in_a_batch_do_not_affect_the_others(smtp_server: SMTPTestServer) -> None:
    t = transport(smtp_server)
    batch = [envelope(f"u{i}@example.com") for i in range(6)]
    results = []
    results += t.send_many(batch[:1])
    smtp_server.fail_next(550, "5.1.1 No such user", at="rcpt")
    results += t.send_many(batch[1:3])
    smtp_server.drop_next(at="data")
    results += t.send_many(batch[3:])
    assert [r.status for r in results] == ["accepted", "rejected", "accepted", "deferred", "accepted", "accepted"]
    assert results[1].suppress is True
    received = [e.rcpt_tos[0] for e in smtp_server.envelopes]
    assert received == ["u0@example.com", "u2@example.com", "u4@example.com", "u5@example.com"]


# ---------------------------------------------------------------------------
# Network failures: refused, timeout, dropped mid-DATA
# ---------------------------------------------------------------------------


def test_connection_refused_is_deferred(closed_port: int) -> None:
    t = SMTPTransport(host="127.0.0.1", port=closed_port, security="none", timeout=5)
    results = t.send_many([envelope(), envelope(), envelope()])
    assert [r.status for r in results] == ["deferred"] * 3
    assert all("connection refused" in r.reason for r in results)


def test_unresolvable_host_is_deferred() -> None:
    result = SMTPTransport(host="no-such-host.invalid", port=25, security="none", timeout=5).send(envelope())
    assert result.status == "deferred"
    assert "no-such-host.invalid" in result.reason


@pytest.mark.parametrize("at", ["data", "mail"])
def test_timeout_is_deferred_and_the_next_message_reconnects(smtp_server: SMTPTestServer, at: Any) -> None:
    t = transport(smtp_server, timeout=0.3)
    smtp_server.delay_next(3.0, at=at)
    result = t.send(envelope("slow@example.com"))
    assert result.status == "deferred"
    assert "timed out" in result.reason and at.upper() in result.reason
    assert t.send(envelope("next@example.com")).status == "accepted"
    assert smtp_server.connections == 2


def test_drop_mid_data_is_deferred_then_a_new_connection(smtp_server: SMTPTestServer) -> None:
    t = transport(smtp_server)
    assert t.send(envelope("first@example.com")).status == "accepted"
    smtp_server.drop_next(at="data")
    dropped = t.send(envelope("dropped@example.com"))
    assert dropped.status == "deferred"
    assert "during DATA" in dropped.reason and "may or may not" in dropped.reason
    assert t.send(envelope("after@example.com")).status == "accepted"
    assert [e.rcpt_tos[0] for e in smtp_server.envelopes] == ["first@example.com", "after@example.com"]
    assert smtp_server.connections == 2


@pytest.mark.parametrize("at", ["mail", "rcpt"])
def test_drop_before_data_on_a_fresh_connection(smtp_server: SMTPTestServer, at: Any) -> None:
    t = transport(smtp_server)
    smtp_server.drop_next(at=at)
    result = t.send(envelope())
    assert result.status == "deferred"
    assert "nothing was transmitted" in result.reason
    assert t.send(envelope()).status == "accepted"


def test_never_sent_twice_for_one_attempt_id(smtp_server: SMTPTestServer) -> None:
    t = transport(smtp_server)
    env = envelope()
    first, again, *batch = [t.send(env), t.send(env), *t.send_many([env, env])]
    assert first.status == "accepted"
    assert all(r.status == "deferred" and "not sent twice" in r.reason for r in [again, *batch])
    assert len(smtp_server.envelopes) == 1


# ---------------------------------------------------------------------------
# Rate limit (counted, not timed)
# ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 9))
        self.now += seconds


def test_token_bucket_spaces_messages() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        bucket.acquire()
    assert clock.sleeps == [0.25] * 4
    clock.now += 10  # idle time does not build up a burst
    bucket.acquire()
    bucket.acquire()
    assert clock.sleeps == [0.25] * 5


def test_transport_rate_limit_requests_sleeps(smtp_server: SMTPTestServer) -> None:
    clock = FakeClock()
    t = transport(smtp_server, rate_limit=10, clock=clock, sleep=clock.sleep)
    results = [*t.send_many([envelope() for _ in range(5)]), t.send(envelope())]
    assert [r.status for r in results] == ["accepted"] * 6
    assert clock.sleeps == [0.1] * 5
    unlimited = FakeClock()
    t2 = transport(smtp_server, clock=unlimited, sleep=unlimited.sleep)
    t2.send_many([envelope() for _ in range(3)])
    assert unlimited.sleeps == []


# ---------------------------------------------------------------------------
# Options and secrets
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"security": "ssl"}, "smtp.security"),
        ({"port": 0}, "smtp.port"),
        ({"port": "25"}, "smtp.port"),
        ({"port": True}, "smtp.port"),
        ({"host": ""}, "smtp.host"),
        ({"host": "smtp.example.com\r\n"}, "smtp.host"),
        ({"username": "u"}, "smtp.password"),
        ({"password": "p"}, "smtp.username"),
        ({"timeout": 0}, "smtp.timeout"),
        ({"idle_timeout": -1}, "smtp.idle_timeout"),
        ({"rate_limit": 0}, "smtp.rate_limit"),
        ({"max_per_connection": 0}, "smtp.max_per_connection"),
        ({"ca_file": "/no/such/ca.pem"}, "smtp.ca_file"),
        ({"verify": "yes"}, "smtp.verify"),
    ],
)
def test_options_are_validated(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        SMTPTransport(**options)
    assert err.value.field == field


def test_bad_ca_file_content(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    path.write_text("not a certificate")
    with pytest.raises(ValidationError) as err:
        SMTPTransport(ca_file=str(path))
    assert err.value.field == "smtp.ca_file"


def test_password_never_in_repr_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    t = SMTPTransport(host="smtp.example.com", username="ecrm", password=TEST_PASSWORD)
    assert TEST_PASSWORD not in repr(t) and TEST_PASSWORD not in str(t)
    assert "password='***'" in repr(t)
    with pytest.raises(ValidationError) as err:
        SMTPTransport(host="smtp.example.com", security="none", username="ecrm", password=TEST_PASSWORD)
    assert TEST_PASSWORD not in str(err.value)
    with pytest.raises(ValidationError) as err:
        SMTPTransport(password=TEST_PASSWORD)
    assert TEST_PASSWORD not in str(err.value)
    assert TEST_PASSWORD not in caplog.text


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"rcpt": "ada@example.com\r\nRCPT TO:<eve@example.net>"}, "envelope.rcpt"),
        ({"rcpt": "Ada <ada@example.com>"}, "envelope.rcpt"),
        ({"rcpt": "zoë@example.com"}, "envelope.rcpt"),
        ({"mail_from": "shop"}, "envelope.mail_from"),
        ({"data": b""}, "envelope.data"),
        ({"data": "text"}, "envelope.data"),
        ({"attempt_id": ""}, "envelope.attempt_id"),
    ],
)
def test_envelope_is_validated(overrides: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {
        "mail_from": "shop@example.com",
        "rcpt": "ada@example.com",
        "data": b"Subject: x\r\n\r\nx\r\n",
        "message_id": "<x@example.com>",
        "attempt_id": "a1",
    }
    values.update(overrides)
    with pytest.raises(ValidationError) as err:
        Envelope(**values)
    assert err.value.field == field


def test_test_kit_helpers(smtp_server: SMTPTestServer) -> None:
    with pytest.raises(ValueError):
        smtp_server.fail_next(250, "ok")
    with pytest.raises(ValueError):
        smtp_server.drop_next(at="quit")  # type: ignore[arg-type]
    t = transport(smtp_server)
    t.send(envelope())
    assert smtp_server.wait_for(1)[0].rcpt_tos == ("ada@example.com",)
    smtp_server.fail_next(451, "4.3.0 later", times=2)
    smtp_server.clear()
    assert smtp_server.envelopes == [] and smtp_server.connections == 0
    assert t.send(envelope()).status == "accepted"  # the programmed failures were cleared too
