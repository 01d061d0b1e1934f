"""The bounce address: an SMTP server that accepts only what it can prove.

:class:`InboundMail` turns a parsed mail (:func:`~ecrm_email.mailparse.parse_inbound_mail`)
and its envelope recipients into the events ecrm applies.  A bounce, a
complaint or an unsubscribe changes state only when **all** of these hold:

1. the mail carries a signed per-message address (:mod:`ecrm_email.returns`):
   its envelope recipient (the VERP return path a DSN is sent to, or the
   ``unsubscribe_mailto`` address), or the ``Return-Path`` of the original it
   quotes (how feedback loops show it) — the message id comes from that
   signature, never from a header anyone can write;
2. that message exists, was sent on this channel, and was handed to the
   transport (``sent_at``);
3. for a bounce or complaint, the recipient the report names equals that
   message's recipient; the event is then applied in the message's
   workspace, to its customer;
4. an unsubscribe token verifies only when ``unsubscribe_mailto`` is set,
   and only as the envelope recipient of a mail that is not itself a report.

Everything else is logged with the reason (no token, no secret) and
ignored.  :class:`InboundMailHandler` is the aiosmtpd handler: it parses in
a thread pool (never on the event loop, so one huge mail does not hold up
other clients) within :class:`~ecrm_email.mailparse.MailLimits`, refusing a
mail over a limit with ``552`` (``451`` when parsing runs out of time).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from ecrm_core.channels import MessageEvent

from .mailparse import DEFAULT_LIMITS, InboundReport, MailLimits, MailRejected, parse_inbound_mail
from .returns import ReturnAddresses, ReturnToken

__all__ = ["InboundMail", "InboundMailHandler", "serve_inbound"]

log = logging.getLogger("ecrm.email.inbound")

#: Envelope recipients looked at per mail (a DSN has one).
MAX_RCPTS = 20
_TOKEN_PART = re.compile(r"\+[^@]*")


def _masked(address: str) -> str:
    """An address for the log: the token (a capability) cut out."""
    return _TOKEN_PART.sub("+…", address)[:120]


def _normal(address: str | None) -> str:
    if not address:
        return ""
    local, _, domain = address.strip().rpartition("@")
    try:
        domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        pass
    return f"{local}@{domain}".lower()


class InboundMail:
    """Verify and apply mail delivered to the bounce (or unsubscribe) address.

    :param crm: the CRM (any workspace view: each event is applied in its
        message's workspace).
    :param channel: the e-mail channel's name.
    :param limits: :class:`~ecrm_email.mailparse.MailLimits` for :meth:`receive`.
    """

    def __init__(self, crm: Any, *, channel: str = "email", limits: MailLimits = DEFAULT_LIMITS) -> None:
        self.crm = crm
        self.channel = channel
        self.limits = limits
        self._returns: ReturnAddresses | None = None

    def __repr__(self) -> str:
        return f"<InboundMail channel={self.channel!r}>"

    @property
    def returns(self) -> ReturnAddresses:
        if self._returns is None:
            self._returns = ReturnAddresses.from_config(self.crm.signer, self.crm.channels.config(self.channel))
        return self._returns

    def _ignore(self, report: InboundReport, reason: str) -> None:
        log.info("inbound %s mail %s ignored: %s", report.kind, report.report_id[:120], reason)

    def _tokens(self, report: InboundReport, recipients: Sequence[str]) -> list[ReturnToken]:
        now = self.crm.now().timestamp()
        found: dict[tuple[str, str], ReturnToken] = {}
        evidence = [(r, True) for r in list(recipients)[:MAX_RCPTS]] + [(p, False) for p in report.return_paths]
        for address, envelope in evidence:
            token = self.returns.check(address, now=now)
            if isinstance(token, str):
                if "+" in address:
                    self._ignore(report, f"{_masked(address)}: {token}")
                continue
            if token.kind == "unsubscribe" and not envelope:
                continue  # an unsubscribe address quoted in a report is no request to unsubscribe
            found.setdefault((token.kind, token.message_id), token)
        return list(found.values())

    def events(self, report: InboundReport, recipients: Sequence[str]) -> list[MessageEvent]:
        """The events a report proves (see the module documentation); every
        claim it cannot prove is logged and left out."""
        tokens = self._tokens(report, recipients)
        if not tokens:
            self._ignore(
                report,
                "carries no valid signed return address (envelope "
                + ", ".join(_masked(r) for r in list(recipients)[:3])
                + ")",
            )
            return []
        events: list[MessageEvent] = []
        now = self.crm.now()
        occurred = report.occurred_at if report.occurred_at is not None and report.occurred_at <= now else None
        for token in tokens:
            record = self.crm.messages.locate(token.message_id)
            if record is None:
                self._ignore(report, f"message {token.message_id} is not known (deleted?)")
                continue
            if record.channel != self.channel or record.sent_at is None or not record.address:
                self._ignore(report, f"message {record.id} was never sent on channel {self.channel!r}")
                continue
            base = {
                "channel": self.channel,
                "message_id": record.id,
                "address": record.address,
                "customer_id": record.customer_id,
                "workspace": record.workspace,
                "occurred_at": occurred,
            }
            if token.kind == "unsubscribe":
                purpose = self.crm.registry.purposes.get(record.purpose)
                if report.kind != "mail":
                    self._ignore(report, f"a {report.kind} report sent to the unsubscribe address of {record.id}")
                elif purpose is None or purpose.transactional:
                    self._ignore(report, f"message {record.id} is transactional: nothing to unsubscribe from")
                else:
                    events.append(
                        MessageEvent(
                            type="unsubscribed",
                            purpose=record.purpose,
                            key=f"unsub:{record.id}:{record.purpose}",
                            detail="List-Unsubscribe mailto",
                            properties={"source": "mailto"},
                            **base,
                        )
                    )
                continue
            if not report.claims:
                self._ignore(report, f"about message {record.id} but neither a bounce nor a complaint")
                continue
            recipient = _normal(record.address)
            for claim in report.claims:
                if recipient not in {_normal(a) for a in claim.addresses}:
                    self._ignore(
                        report,
                        f"{claim.type} for another recipient than the one message {record.id} was sent to",
                    )
                    continue
                events.append(
                    MessageEvent(
                        type=claim.type,
                        detail=claim.detail,
                        key=f"dsn:{report.report_id}:{recipient}",
                        properties={"source": claim.source},
                        **base,
                    )
                )
        return events

    def returned(self, recipients: Sequence[str]) -> bool:
        """Whether an envelope recipient is a valid signed return path (only
        then is a mail searched for a non-standard bounce: it costs time)."""
        now = self.crm.now().timestamp()
        return any(
            (t := self.returns.verify(r, now=now)) is not None and t.kind == "return"
            for r in list(recipients)[:MAX_RCPTS]
        )

    def apply(self, report: InboundReport, recipients: Sequence[str]) -> list[MessageEvent]:
        """Verify ``report`` and apply its events; return the new ones."""
        events = self.events(report, recipients)
        applied = self.crm.messages.apply_events(events) if events else []
        if events:
            log.info(
                "inbound %s mail %s: %d event(s), %d new",
                report.kind,
                report.report_id[:120],
                len(events),
                len(applied),
            )
        return list(applied)

    def receive(self, raw: bytes, recipients: Sequence[str]) -> list[MessageEvent]:
        """Parse (raises :class:`~ecrm_email.mailparse.MailRejected` over the
        limits), verify and apply one mail; return the new events."""
        report = parse_inbound_mail(raw, limits=self.limits, heuristics=self.returned(recipients))
        return self.apply(report, recipients)


class InboundMailHandler:
    """An aiosmtpd handler for the bounce address (see the module documentation).

    Mail that proves nothing is logged and dropped with ``250 OK`` (an error
    would bounce a bounce); a mail over the limits is refused (``552``, or
    ``451`` when parsing takes longer than ``max_seconds``); if the database
    fails, ``451`` so the sending MTA tries again later.

    :param executor: where parsing runs (default: a pool of
        ``parse_workers`` threads of its own); a
        :class:`~concurrent.futures.ProcessPoolExecutor` works too.
    """

    def __init__(
        self,
        crm: Any,
        *,
        channel: str = "email",
        limits: MailLimits = DEFAULT_LIMITS,
        executor: Executor | None = None,
        parse_workers: int = 2,
    ) -> None:
        self.inbound = InboundMail(crm, channel=channel, limits=limits)
        self.limits = limits
        self._executor = executor
        self._own_executor = executor is None
        self.parse_workers = parse_workers
        #: Mails being parsed right now (for metrics and tests).
        self.parsing = 0

    @property
    def crm(self) -> Any:
        return self.inbound.crm

    @property
    def channel(self) -> str:
        return self.inbound.channel

    def __repr__(self) -> str:
        return f"<InboundMailHandler channel={self.channel!r}>"

    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.parse_workers, thread_name_prefix="ecrm-inbound-parse")
        return self._executor

    def close(self) -> None:
        """Stop the parsing threads this handler started."""
        if self._own_executor and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        recipients = [str(r) for r in envelope.rcpt_tos]
        loop = asyncio.get_running_loop()
        self.parsing += 1
        try:
            heuristics = self.inbound.returned(recipients)
            report = await loop.run_in_executor(
                self.executor(), functools.partial(parse_inbound_mail, raw, limits=self.limits, heuristics=heuristics)
            )
        except MailRejected as exc:
            log.warning("inbound mail of %d bytes refused: %s", len(raw), exc.reason)
            return exc.reply
        except Exception:
            log.exception("could not parse an inbound mail of %d bytes; dropped", len(raw))
            return "250 OK"
        finally:
            self.parsing -= 1
        try:
            await asyncio.to_thread(self.inbound.apply, report, recipients)
        except Exception:
            log.exception("could not record inbound mail %s; asking the sender to retry", report.report_id[:120])
            return "451 4.3.0 Could not record the report, try again later"
        return "250 OK"


def _controller_class() -> Any:
    from aiosmtpd.controller import Controller

    class InboundController(Controller):  # type: ignore[misc]
        """A Controller that also works with ``port=0`` (a free port, read
        back after binding) and stops its handler's parsing threads."""

        def _trigger_server(self) -> None:
            server = getattr(self, "server", None)
            if server is not None and server.sockets:
                self.port = server.sockets[0].getsockname()[1]
            super()._trigger_server()  # type: ignore[no-untyped-call]

        def stop(self, *args: Any, **kwargs: Any) -> None:
            try:
                super().stop(*args, **kwargs)
            finally:
                close = getattr(self.handler, "close", None)
                if close is not None:
                    close()

    return InboundController


def serve_inbound(
    crm: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    limits: MailLimits | None = None,
    data_size_limit: int | None = None,
    channel: str = "email",
    executor: Executor | None = None,
) -> Any:
    """Start an SMTP server for the bounce address (an aiosmtpd
    ``Controller``, already started; ``.port`` is the bound port, ``.stop()``
    stops it).  ``port=0`` picks a free port.  ``limits`` bound each mail
    (``data_size_limit``, if given, overrides ``limits.max_bytes``)."""
    import attrs

    limits = limits or DEFAULT_LIMITS
    if data_size_limit is not None:
        limits = attrs.evolve(limits, max_bytes=data_size_limit)
    handler = InboundMailHandler(crm, channel=channel, limits=limits, executor=executor)
    controller = _controller_class()(handler, hostname=host, port=port, data_size_limit=limits.max_bytes)
    controller.start()
    return controller
