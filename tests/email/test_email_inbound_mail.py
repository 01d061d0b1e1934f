"""Mail delivered to the bounce address proves what it claims (issue 14, item 2).

Messages are sent through the real e-mail channel to an aiosmtpd test server
(so their envelope carries the signed VERP return path), and mail comes back
through a real aiosmtpd inbound server on 127.0.0.1.  The corpus
``tests/fixtures/hardening/inbound_mail.json`` holds forged and hostile
mails: each must change nothing (no suppression, no consent change, no
timeline event, in any workspace), or be refused with the SMTP code it names.
Genuine reports must still work.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import pickle
import re
import smtplib
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path
from string import Template

import pytest
from ecrm_email import plugin as email_plugin
from ecrm_email.links import Links
from ecrm_email.mailparse import MailLimits, MailRejected, parse_inbound_mail
from ecrm_email.mailserver import InboundMail, serve_inbound
from ecrm_email.returns import ReturnAddresses
from ecrm_email.testing import smtp_config, start_smtp_server

from ecrm_core.channels import InboundRequest
from ecrm_core.signing import Signer
from ecrm_core.testing import make_crm

CORPUS = json.loads((Path(__file__).parents[1] / "fixtures" / "hardening" / "inbound_mail.json").read_text("utf-8"))
FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "inbound-mail-secret-0123456789abcdef"
WORKSPACES = ("default", "shop_b")
DAY = 86400.0


def _config(server, **extra):
    return {
        "email": {
            "from": "Shop <news@shop.example>",
            "base_url": "https://shop.example/crm",
            "smtp": smtp_config(server),
            "bounce_address": "bounces@shop.example",
            **extra,
        }
    }


class World:
    """A CRM with messages sent in two workspaces, their signed addresses,
    and an inbound SMTP server."""

    def __init__(self, path: Path, outbox, *, unsubscribe_mailto: str | None = "unsubscribe@shop.example"):
        extra = {"unsubscribe_mailto": unsubscribe_mailto} if unsubscribe_mailto else {}
        self.crm = make_crm(path, plugins=[email_plugin], secret=SECRET, channels=_config(outbox, **extra))
        self.outbox = outbox
        crm, other = self.crm, self.crm.in_workspace("shop_b")
        self.ada = crm.customers.create(email="ada@example.com", consent={"email": "granted"})
        self.bob = crm.customers.create(email="bob@example.com", consent={"email": "granted"})
        self.victim = crm.customers.create(email="victim@example.org", consent={"email": "granted"})
        self.carol = other.customers.create(email="carol@example.net", consent={"email": "granted"})
        self.ada_msg = crm.messages.send("email", self.ada.id, {"subject": "Offers", "text": "hi"})
        self.receipt = crm.messages.send(
            "email", self.ada.id, {"subject": "Receipt", "text": "paid"}, purpose="transactional"
        )
        self.bob_msg = crm.messages.send("email", self.bob.id, {"subject": "Offers", "text": "hi"})
        self.carol_msg = other.messages.send("email", self.carol.id, {"subject": "Offers", "text": "hi"})
        assert crm.messages.dispatch().sent == 3 and other.messages.dispatch().sent == 1
        mail_from = {}
        self.mailto = {}
        for env, msg in zip(outbox.envelopes, outbox.messages, strict=True):
            mail_from[msg["X-Ecrm-Message"]] = env.mail_from
            found = re.findall(r"<mailto:([^?>]+)", msg["List-Unsubscribe"] or "")
            if found:
                self.mailto[msg["X-Ecrm-Message"]] = found[0]
        self.verp = mail_from
        now = crm.now().timestamp()
        returns = ReturnAddresses.from_config(crm.signer, crm.channels.config("email"))
        signed_unsub = ReturnAddresses(crm.signer, "bounces@shop.example", "unsubscribe@shop.example")
        foreign = ReturnAddresses(Signer("another-secret-0123456789abcdef"), "bounces@shop.example")
        ada_verp = mail_from[self.ada_msg.id]
        local, domain = ada_verp.split("@")
        mac = local.rsplit(".", 1)[1]
        flipped = mac[:-1] + ("a" if mac[-1] != "a" else "b")
        ada_unsub = self.mailto.get(self.ada_msg.id) or signed_unsub.unsubscribe_address(self.ada_msg.id, now=now)
        values = {
            "ada": "ada@example.com",
            "bob": "bob@example.com",
            "carol": "carol@example.net",
            "victim": "victim@example.org",
            "ada_mid": self.ada_msg.id,
            "bob_mid": self.bob_msg.id,
            "carol_mid": self.carol_msg.id,
            "ada_verp": ada_verp,
            "carol_verp": mail_from[self.carol_msg.id],
            "receipt_verp": mail_from[self.receipt.id],
            "ada_unsub": ada_unsub,
            "tampered_verp": f"{local[: -len(mac)]}{flipped}@{domain}",
            "swapped_verp": ada_verp.replace(self.ada_msg.id, self.bob_msg.id),
            "truncated_verp": f"{local.rsplit('.', 1)[0]}@{domain}",
            "expired_verp": returns.return_path(self.ada_msg.id, now=now - 200 * DAY),
            "future_verp": returns.return_path(self.ada_msg.id, now=now + 30 * DAY),
            "foreign_verp": foreign.return_path(self.ada_msg.id, now=now),
            "tampered_unsub": ada_unsub[:-14] + ("a" if ada_unsub[-14] != "a" else "b") + ada_unsub[-13:],
            "expired_unsub": signed_unsub.unsubscribe_address(self.ada_msg.id, now=now - 200 * DAY),
            "receipt_unsub": signed_unsub.unsubscribe_address(self.receipt.id, now=now),
        }
        self.values = values

    def fill(self, text: str, n: int = 0) -> str:
        return Template(text).substitute(self.values, n=n)

    def snapshot(self) -> dict:
        state = {}
        for ws in WORKSPACES:
            view = self.crm.in_workspace(ws)
            state[ws, "suppressions"] = sorted((s.address, s.scope, s.reason) for s in view.messages.suppressions())
            for c in view.customers.list(limit=1000):
                fresh = view.customers.get(c.id)
                state[ws, c.id, "consent"] = {k: v.status for k, v in fresh.consent.items()}
                state[ws, c.id, "timeline"] = sorted(i.kind for i in view.interactions.timeline(c.id))
        return state

    def kinds(self, customer_id: int, ws: str = "default") -> list[str]:
        return [i.kind for i in self.crm.in_workspace(ws).interactions.timeline(customer_id)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with start_smtp_server() as outbox:
        w = World(tmp_path_factory.mktemp("inbound") / "crm.db", outbox)
        server = serve_inbound(w.crm, "127.0.0.1", 0)
        w.server = server
        try:
            yield w
        finally:
            server.stop()
            w.crm.close()


@pytest.fixture
def fresh(tmp_path):
    """A world of its own, for tests that change state."""
    with start_smtp_server() as outbox:
        w = World(tmp_path / "crm.db", outbox)
        try:
            yield w
        finally:
            w.crm.close()


def _send(port: int, rcpts: list[str], raw: bytes, sender: str = "") -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        return smtp.sendmail(sender, rcpts, raw)


def test_outgoing_mail_carries_signed_per_message_addresses(world):
    ada_verp = world.verp[world.ada_msg.id]
    assert re.fullmatch(rf"bounces\+{world.ada_msg.id}\.[0-9a-z]+\.[a-z2-7]{{16}}@shop\.example", ada_verp)
    assert len(ada_verp.split("@")[0]) <= 64  # RFC 5321 local-part limit
    assert len(set(world.verp.values())) == 4  # one per message
    assert world.mailto[world.ada_msg.id].startswith(f"unsubscribe+{world.ada_msg.id}.")
    assert world.receipt.id not in world.mailto  # no List-Unsubscribe on a receipt
    [ada_mail] = [m for m in world.outbox.messages if m["X-Ecrm-Message"] == world.ada_msg.id]
    assert f"mailto:{world.mailto[world.ada_msg.id]}?subject=unsubscribe" in ada_mail["List-Unsubscribe"]


@pytest.mark.parametrize("case", CORPUS["hostile"], ids=[c["id"] for c in CORPUS["hostile"]])
def test_hostile_mail_changes_nothing(world, case, caplog):
    raw = world.fill(case["mail"], n=hash(case["id"]) & 0xFFFF).encode("utf-8", "surrogateescape")
    rcpts = [world.fill(r) for r in case["rcpt_to"]]
    inbound = InboundMail(world.crm)
    report = parse_inbound_mail(raw, heuristics=inbound.returned(rcpts))
    with caplog.at_level(logging.INFO, logger="ecrm.email.inbound"):
        assert inbound.events(report, rcpts) == []
    assert "ignored" in caplog.text  # the reason is logged
    assert world.values["ada_verp"].split("+")[1] not in caplog.text  # no token in the log
    before = world.snapshot()
    assert _send(world.server.port, rcpts, raw) == {}  # accepted (never bounce a bounce) and dropped
    assert world.snapshot() == before


def _generate(spec: dict) -> bytes:
    head = b"From: a@x.example\r\nTo: bounces@shop.example\r\nMessage-ID: <big@x.example>\r\nMIME-Version: 1.0\r\n"
    kind, count = spec["kind"], spec.get("count", 0)
    if kind == "parts":
        parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(count))
        return head + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + b"--b--\r\n"
    if kind == "depth":
        top, tail = b"", b""
        for i in range(count):
            if spec["type"] == "multipart/mixed":
                top += f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n".encode()
                tail = f"\r\n--b{i}--\r\n".encode() + tail
            else:
                top += b"Content-Type: message/rfc822\r\n\r\nFrom: x@y.example\r\n"
        return head + top + b"Content-Type: text/plain\r\n\r\nx\r\n" + tail
    if kind == "dsn_blocks":
        blocks = b"".join(
            f"Final-Recipient: rfc822; u{i}@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n".encode()
            for i in range(count)
        )
        return (
            head
            + b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
            + b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
            + blocks
            + b"--b--\r\n"
        )
    if kind == "header":
        value = ("a " * (spec["size"] // 2)).strip()
        folded = "\r\n ".join(value[i : i + 900] for i in range(0, len(value), 900))
        return head + f"{spec['name']}: {folded}\r\n\r\nx\r\n".encode()
    if kind == "ctype_params":
        params = ";\r\n ".join(f"p{i}=v" for i in range(count))
        return head + f"Content-Type: text/plain; {params}\r\n\r\nx\r\n".encode()
    if kind == "ctype_quotes":
        folded = b"\r\n ".join([b';"a' * 300] * (count // 300))  # SMTP lines stay short
        ctype = b"Content-Type: multipart/mixed; boundary=x" + folded + b"\r\n"
        if spec.get("nested"):
            return head + b"Content-Type: message/rfc822\r\n\r\nFrom: q@x.example\r\n" + ctype + b"\r\n--x--\r\n"
        return head + ctype + b"\r\n--x\r\n\r\nhi\r\n--x--\r\n"
    if kind == "headers":
        return head + b"".join(f"X-H{i}: v\r\n".encode() for i in range(count)) + b"\r\nx\r\n"
    if kind == "size":
        return head + b"\r\n" + b"x" * 900 + b"\r\n" * 0 + (b"y" * 78 + b"\r\n") * (spec["size"] // 80)
    raise AssertionError(kind)


@pytest.mark.parametrize("case", CORPUS["refused"], ids=[c["id"] for c in CORPUS["refused"]])
def test_oversized_or_too_complex_mail_is_refused(world, case):
    raw = _generate(case["generate"])
    with pytest.raises(MailRejected) as direct:
        parse_inbound_mail(raw)
    assert direct.value.reply.startswith(case["code"]) and "(max_" in direct.value.reason
    before = world.snapshot()
    started = time.monotonic()
    with pytest.raises((smtplib.SMTPDataError, smtplib.SMTPSenderRefused)) as info:
        _send(world.server.port, [world.values["ada_verp"]], raw)
    assert str(info.value.smtp_code) == case["code"]
    assert time.monotonic() - started < 10
    assert world.snapshot() == before


def test_limits_are_configurable_and_named():
    small = MailLimits(max_parts=3, max_depth=2)
    raw = _generate({"kind": "parts", "count": 3})
    with pytest.raises(MailRejected, match=r"more than 3 MIME parts \(max_parts\)"):
        parse_inbound_mail(raw, limits=small)
    assert parse_inbound_mail(raw).kind == "mail"
    with pytest.raises(ValueError, match=r"MailLimits\.max_parts"):
        MailLimits(max_parts=0)


# ---------------------------------------------------------------------------
# Genuine reports still work
# ---------------------------------------------------------------------------


def _fixture(name: str, **values: str) -> bytes:
    values.setdefault("feedback_type", "abuse")
    return Template((FIXTURES / name).read_bytes().decode("ascii")).substitute(values).encode()


def _suppressed(w: World, ws: str = "default") -> set:
    return {(s.address, s.scope, s.reason) for s in w.crm.in_workspace(ws).messages.suppressions()}


def test_dsn_to_the_verp_address_hard_bounces_that_recipient_once(fresh):
    w = fresh
    raw = _fixture("dsn_5.1.1.eml", address="ada@example.com", message_id=w.ada_msg.id)
    inbound = InboundMail(w.crm)
    applied = inbound.receive(raw, [w.verp[w.ada_msg.id]])
    assert [(e.type, e.message_id, e.address, e.customer_id) for e in applied] == [
        ("bounced", w.ada_msg.id, "ada@example.com", w.ada.id)
    ]
    assert "5.1.1" in applied[0].detail
    assert _suppressed(w) == {("ada@example.com", "all", "hard_bounce")}
    assert inbound.receive(raw, [w.verp[w.ada_msg.id]]) == []  # delivered twice: applied once
    assert w.kinds(w.ada.id).count("bounce") == 1
    assert _suppressed(w, "shop_b") == set()


def test_delayed_dsn_is_a_soft_bounce(fresh):
    w = fresh
    raw = _fixture("dsn_delayed.eml", address="ada@example.com", message_id=w.ada_msg.id)
    [event] = InboundMail(w.crm).receive(raw, [w.verp[w.ada_msg.id]])
    assert event.type == "soft_bounced"
    assert _suppressed(w) == set() and "bounce" in w.kinds(w.ada.id)


def test_dsn_in_another_workspace_applies_there_only(fresh):
    w = fresh
    raw = _fixture("dsn_5.1.1.eml", address="carol@example.net", message_id=w.carol_msg.id)
    [event] = InboundMail(w.crm).receive(raw, [w.verp[w.carol_msg.id]])
    assert event.workspace == "shop_b"
    assert _suppressed(w, "shop_b") == {("carol@example.net", "all", "hard_bounce")}
    assert _suppressed(w) == set()
    assert "bounce" in w.kinds(w.carol.id, "shop_b")


def test_dsn_naming_the_recipient_and_others_applies_to_the_recipient_only(fresh):
    w = fresh
    raw = _fixture("dsn_5.1.1.eml", address="ADA@Example.COM", message_id=w.ada_msg.id)
    raw = raw.replace(
        b"Remote-MTA",
        b"Remote-MTA: dns; x\r\n\r\nFinal-Recipient: rfc822; victim@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nX-Old-Remote-MTA",
        1,
    )
    # a relay that folds the envelope's case changes nothing
    applied = InboundMail(w.crm).receive(raw, [w.verp[w.ada_msg.id].upper()])
    assert [(e.type, e.address) for e in applied] == [("bounced", "ada@example.com")]
    assert _suppressed(w) == {("ada@example.com", "all", "hard_bounce")}


def test_non_standard_bounce_to_the_verp_address(fresh):
    w = fresh
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@shop.example\r\nSubject: failure notice\r\n"
        b"Message-ID: <q1@mx.example.net>\r\n\r\n"
        b"Hi. This is the qmail-send program at mx.example.net.\r\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
        b"<ada@example.com>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n"
    )
    [event] = InboundMail(w.crm).receive(raw, [w.verp[w.ada_msg.id]])
    assert (event.type, event.address, event.properties["source"]) == ("bounced", "ada@example.com", "bounce")


def test_arf_complaint_matched_through_the_quoted_return_path(fresh):
    w = fresh
    raw = _fixture("arf_abuse.eml", address="ada@example.com", message_id=w.ada_msg.id)
    raw = raw.replace(
        b"From: Shop <news@shop.example>",
        f"Return-Path: <{w.verp[w.ada_msg.id]}>\r\nFrom: Shop <news@shop.example>".encode(),
        1,
    )
    [event] = InboundMail(w.crm).receive(raw, ["fbl@shop.example"])
    assert (event.type, event.address, event.message_id) == ("complained", "ada@example.com", w.ada_msg.id)
    assert _suppressed(w) == {("ada@example.com", "marketing", "complaint")}
    assert w.crm.customers.get(w.ada.id).consent["email"].status == "denied"


def test_mailto_unsubscribe_with_the_signed_address(fresh):
    w = fresh
    mail = b"From: Ada <ada@example.com>\r\nTo: x\r\nSubject: unsubscribe\r\n\r\n"
    [event] = InboundMail(w.crm).receive(mail, [w.mailto[w.ada_msg.id]])
    assert (event.type, event.purpose, event.key) == ("unsubscribed", "marketing", f"unsub:{w.ada_msg.id}:marketing")
    state = {k: v.status for k, v in w.crm.customers.get(w.ada.id).consent.items()}
    assert state == {"email": "granted", "email:marketing": "denied"}
    # the one-click link of the same message is then a replay
    links = Links(w.crm.signer, "https://shop.example/crm")
    token = links.unsubscribe_url(message_id=w.ada_msg.id, purpose="marketing").rsplit("/", 1)[1]
    click = w.crm.channels.handle_inbound(
        "email",
        InboundRequest(
            route="unsubscribe/{token}", method="POST", params={"token": token}, body=b"List-Unsubscribe=One-Click"
        ),
    )
    assert [e.type for e in click.events] == ["unsubscribed"]
    assert w.kinds(w.ada.id).count("unsubscribe") == 1


def test_mailto_unsubscribe_is_ignored_without_unsubscribe_mailto(tmp_path):
    with start_smtp_server() as outbox:
        w = World(tmp_path / "crm.db", outbox, unsubscribe_mailto=None)
        try:
            assert w.mailto == {}  # no mailto: target in List-Unsubscribe
            before = w.snapshot()
            mail = b"From: ada@example.com\r\nSubject: unsubscribe\r\n\r\n"
            for rcpt in (w.values["ada_unsub"], "unsubscribe@shop.example"):
                assert InboundMail(w.crm).receive(mail, [rcpt]) == []
            mail = f"From: ada@example.com\r\nSubject: unsubscribe {w.ada_msg.id}\r\n\r\n".encode()
            assert InboundMail(w.crm).receive(mail, ["bounces@shop.example"]) == []
            assert w.snapshot() == before
        finally:
            w.crm.close()


def test_genuine_dsn_through_the_smtp_server_and_a_database_failure(fresh, monkeypatch):
    w = fresh
    server = serve_inbound(w.crm, "127.0.0.1", 0)
    try:
        raw = _fixture("dsn_5.1.1.eml", address="ada@example.com", message_id=w.ada_msg.id)
        assert _send(server.port, [w.verp[w.ada_msg.id]], raw) == {}
        assert _suppressed(w) == {("ada@example.com", "all", "hard_bounce")}

        def broken(events):
            raise RuntimeError("database is down")

        monkeypatch.setattr(w.crm.messages, "apply_events", broken)
        raw = _fixture("dsn_5.1.1.eml", address="bob@example.com", message_id=w.bob_msg.id)
        with pytest.raises(smtplib.SMTPDataError) as info:
            _send(server.port, [w.verp[w.bob_msg.id]], raw)
        assert info.value.smtp_code == 451
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# One huge mail does not hold up the other clients
# ---------------------------------------------------------------------------


def _slow_mail(lines: int) -> bytes:
    top, tail = b"", b""
    for i in range(9):
        top += f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n".encode()
        tail = f"\r\n--b{i}--\r\n".encode() + tail
    return (
        b"From: a@x.example\r\nMessage-ID: <slow@x.example>\r\n"
        + top
        + b"Content-Type: text/plain\r\n\r\n"
        + b"a\r\n" * lines
        + tail
    )


def test_a_second_client_is_served_while_a_huge_mail_is_parsed(fresh, monkeypatch):
    """Parsing runs off the SMTP server's event loop: while one mail is being
    parsed (held there by the test, so no timing is assumed), other clients
    complete whole transactions, and the held mail is then answered."""
    from ecrm_email import mailserver

    w = fresh
    limits = MailLimits(max_bytes=16 * 1024 * 1024, max_seconds=120)
    big = _slow_mail(30_000)  # many short lines in nested multiparts
    real = mailserver.parse_inbound_mail
    holding, release = threading.Event(), threading.Event()

    def held(raw, **kwargs):
        if len(raw) >= len(big):
            holding.set()
            release.wait(60)  # the big mail is "being parsed" until the test lets it go
        return real(raw, **kwargs)

    monkeypatch.setattr(mailserver, "parse_inbound_mail", held)
    server = serve_inbound(w.crm, "127.0.0.1", 0, limits=limits)
    try:
        done = threading.Event()
        outcome = {}

        def big_client():
            try:
                outcome["answer"] = _send(server.port, ["fbl@shop.example"], big)
            except Exception as exc:  # pragma: no cover - reported by the asserts below
                outcome["answer"] = exc
            finally:
                done.set()

        thread = threading.Thread(target=big_client)
        thread.start()
        assert holding.wait(60), outcome  # the big mail was received and is being parsed
        assert server.handler.parsing == 1
        raw = _fixture("dsn_5.1.1.eml", address="ada@example.com", message_id=w.ada_msg.id)
        for _ in range(3):  # whole transactions complete while the big mail is held
            assert _send(server.port, [w.verp[w.ada_msg.id]], raw) == {}
        assert not done.is_set() and server.handler.parsing == 1
        release.set()
        thread.join(60)
        assert done.is_set() and outcome["answer"] == {}, outcome
        assert _suppressed(w) == {("ada@example.com", "all", "hard_bounce")}
    finally:
        release.set()
        server.stop()


def test_verp_token_checks():
    signer = Signer(SECRET)
    returns = ReturnAddresses(signer, "bounces@shop.example", "unsub@shop.example", max_age=10 * DAY)
    now = 1_800_000_000.0
    address = returns.return_path("m-1.x", now=now)
    assert returns.verify(address, now=now).message_id == "m-1.x"
    assert returns.verify(address, now=now + 12 * DAY) is None  # expired
    assert "expired" in returns.check(address, now=now + 12 * DAY)
    unsub = returns.unsubscribe_address("m-1.x", now=now)
    assert returns.verify(unsub, now=now).kind == "unsubscribe"
    assert ReturnAddresses(signer, "bounces@shop.example").verify(unsub, now=now) is None  # not configured
    rotated = ReturnAddresses(Signer(["x" * 20, SECRET]), "bounces@shop.example")
    assert rotated.verify(address, now=now).message_id == "m-1.x"  # an old key still verifies
    assert timedelta(seconds=returns.max_days * DAY) >= timedelta(days=10)


def test_parsing_in_a_process_pool(fresh):
    w = fresh
    rejected = pickle.loads(pickle.dumps(MailRejected("slow (max_seconds)", code="451 4.3.2")))
    assert rejected.reply == "451 4.3.2 slow (max_seconds)"
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        server = serve_inbound(w.crm, "127.0.0.1", 0, executor=pool)
        try:
            with pytest.raises(smtplib.SMTPDataError) as info:
                _send(server.port, [w.verp[w.ada_msg.id]], _generate({"kind": "parts", "count": 60000}))
            assert info.value.smtp_code == 552
            raw = _fixture("dsn_5.1.1.eml", address="ada@example.com", message_id=w.ada_msg.id)
            assert _send(server.port, [w.verp[w.ada_msg.id]], raw) == {}
        finally:
            server.stop()
    assert _suppressed(w) == {("ada@example.com", "all", "hard_bounce")}
