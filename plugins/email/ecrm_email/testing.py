"""A test kit for e-mail: a real SMTP server (aiosmtpd) on 127.0.0.1.

A pytest plugin (entry point ``ecrm_email.testing``) with three fixtures:

* ``smtp_server`` — plain SMTP (no TLS, no AUTH);
* ``smtp_tls_server`` — implicit TLS (SMTPS), certificate from a throw-away
  ``trustme`` CA (``server.ca_file``);
* ``smtp_starttls_server`` — STARTTLS required, then AUTH required
  (username ``"ecrm"``, password ``"s3cret"``; AUTH only over TLS).

Each fixture yields an :class:`SMTPTestServer`: ``.host``, ``.port``,
``.messages`` (parsed :class:`email.message.EmailMessage`), ``.envelopes``
(:class:`ReceivedEnvelope`: ``mail_from``, ``rcpt_tos``, raw ``data``),
``.connections`` (connections accepted since start), ``.clear()``, and
programmable failures: ``.fail_next(code, message, at="data")``,
``.drop_next(at="data")`` (close the connection without answering),
``.delay_next(seconds)`` (answer late, for timeouts) and
``.disconnect_all()`` (close idle client connections, as a server does).

Without pytest, use :func:`start_smtp_server` (a context manager) and
:func:`smtp_config` (the ``smtp`` options for ``CRM(channels={"email": …})``)::

    with start_smtp_server() as server:
        transport = SMTPTransport(**smtp_config(server))
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import logging
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from attrs import field, frozen

__all__ = [
    "ReceivedEnvelope",
    "SMTPTestServer",
    "start_smtp_server",
    "smtp_config",
    "TEST_USERNAME",
    "TEST_PASSWORD",
    "smtp_server",
    "smtp_tls_server",
    "smtp_starttls_server",
]

#: Credentials the ``smtp_starttls_server`` fixture accepts.
TEST_USERNAME = "ecrm"
TEST_PASSWORD = "s3cret"

Stage = Literal["mail", "rcpt", "data"]
Security = Literal["none", "starttls", "tls"]
_STAGES = ("mail", "rcpt", "data")


@frozen
class ReceivedEnvelope:
    """One message the test server accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    queue_id: str
    mail_options: tuple[str, ...] = field(factory=tuple)

    @property
    def message(self) -> EmailMessage:
        parsed: EmailMessage = email.message_from_bytes(self.data, policy=email.policy.default)
        return parsed


class SMTPTestServer:
    """A running aiosmtpd server and what it received (thread-safe)."""

    def __init__(self, *, security: Security = "none", username: str | None = None, password: str | None = None):
        self.host = "127.0.0.1"
        self.port = 0
        self.security: Security = security
        self.username = username
        self.password = password
        self.ca_file: str | None = None
        self.connections = 0
        self._lock = threading.Lock()
        self._envelopes: list[ReceivedEnvelope] = []
        self._actions: dict[str, deque[tuple[str, Any]]] = {stage: deque() for stage in _STAGES}
        self._live: set[SMTP] = set()
        self._controller: Controller | None = None

    def __repr__(self) -> str:
        return f"<SMTPTestServer {self.security} {self.host}:{self.port} received={len(self._envelopes)}>"

    # -- what arrived -------------------------------------------------------

    @property
    def envelopes(self) -> list[ReceivedEnvelope]:
        with self._lock:
            return list(self._envelopes)

    @property
    def messages(self) -> list[EmailMessage]:
        return [e.message for e in self.envelopes]

    def clear(self) -> None:
        """Forget received messages, pending failures and the connection count."""
        with self._lock:
            self._envelopes.clear()
            for queue in self._actions.values():
                queue.clear()
            self.connections = 0

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedEnvelope]:
        """Wait until ``count`` messages arrived (for messages answered late)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._envelopes) >= count:
                    return list(self._envelopes)
            time.sleep(0.01)
        raise AssertionError(f"expected {count} message(s), the server received {len(self._envelopes)}")

    # -- programmable failures ---------------------------------------------

    def _program(self, at: str, action: tuple[str, Any], times: int) -> None:
        if at not in _STAGES:
            raise ValueError(f"at={at!r}: use one of {_STAGES}")
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._actions[at].extend([action] * times)

    def fail_next(self, code: int, message: str, at: Stage = "data", times: int = 1) -> None:
        """Answer the next ``times`` MAIL/RCPT/DATA commands with ``code message``
        (e.g. ``fail_next(550, "5.1.1 No such user", at="rcpt")``)."""
        if not 400 <= code <= 599:
            raise ValueError("code must be a 4xx or 5xx SMTP reply code")
        self._program(at, ("fail", f"{code} {message}"), times)

    def drop_next(self, at: Stage = "data", times: int = 1) -> None:
        """Close the connection instead of answering the next command at ``at``
        (``"data"``: the message was transmitted, no reply ever comes)."""
        self._program(at, ("drop", None), times)

    def delay_next(self, seconds: float, at: Stage = "data", times: int = 1) -> None:
        """Answer the next command at ``at`` only after ``seconds`` (then normally)."""
        self._program(at, ("delay", float(seconds)), times)

    def disconnect_all(self, *, abort: bool = False) -> None:
        """Close every open client connection (as a server closing idle ones);
        ``abort=True`` resets them without a TLS goodbye (used at shutdown)."""
        controller = self._controller
        if controller is None:
            return

        async def _close() -> None:
            for smtp in list(self._live):
                if smtp.transport is not None:
                    if abort:
                        cast(asyncio.Transport, smtp.transport).abort()
                    else:
                        smtp.transport.close()
            # Wait for the sessions to end (a TLS close finishes asynchronously).
            for _ in range(200):
                if not self._live:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.01)

        asyncio.run_coroutine_threadsafe(_close(), controller.loop).result(timeout=5)

    # -- used by the handler (server thread) -------------------------------

    def _next_action(self, stage: str) -> tuple[str, Any] | None:
        with self._lock:
            queue = self._actions[stage]
            return queue.popleft() if queue else None

    def _store(self, envelope: Any) -> str:
        queue_id = uuid.uuid4().hex[:12].upper()
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):  # pragma: no cover - decode_data is off
            data = data.encode("utf-8", "surrogateescape")
        received = ReceivedEnvelope(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=bytes(data),
            queue_id=queue_id,
            mail_options=tuple(envelope.mail_options),
        )
        with self._lock:
            self._envelopes.append(received)
        return queue_id


class _Handler:
    def __init__(self, kit: SMTPTestServer) -> None:
        self.kit = kit

    async def _act(self, server: SMTP, stage: str) -> str | None:
        action = self.kit._next_action(stage)
        if action is None:
            return None
        kind, arg = action
        if kind == "fail":
            return cast(str, arg)
        if kind == "drop":
            if server.transport is not None:
                cast(asyncio.Transport, server.transport).abort()
            await asyncio.sleep(3600)  # connection_lost() cancels this task
        if kind == "delay":
            await asyncio.sleep(arg)
        return None

    async def handle_MAIL(self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        status = await self._act(server, "mail")
        if status is not None:
            return status
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        status = await self._act(server, "rcpt")
        if status is not None:
            return status
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        status = await self._act(server, "data")
        if status is not None:
            return status
        queue_id = self.kit._store(envelope)
        return f"250 2.0.0 Ok: queued as {queue_id}"


class _CountingSMTP(SMTP):
    """aiosmtpd's SMTP, counting connections for the kit."""

    def __init__(self, handler: Any, *, kit: SMTPTestServer, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._kit = kit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        fresh = self.transport is None  # not the STARTTLS upgrade of a connection
        super().connection_made(transport)
        if fresh:
            with self._kit._lock:
                self._kit.connections += 1
            self._kit._live.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._kit._live.discard(self)
        super().connection_lost(error)


class _Controller(Controller):
    def __init__(self, handler: Any, *, kit: SMTPTestServer, **kwargs: Any) -> None:
        super().__init__(handler, hostname=kit.host, port=0, **kwargs)
        self._kit = kit

    def factory(self) -> SMTP:
        return _CountingSMTP(self.handler, kit=self._kit, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        server = cast(asyncio.Server, self.server)
        self.port = server.sockets[0].getsockname()[1]  # port 0: the kernel chose one
        super()._trigger_server()  # type: ignore[no-untyped-call]


class _QuietFilter(logging.Filter):
    """Drops aiosmtpd's own deprecation chatter (it warns on every AUTH)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


_QUIET = _QuietFilter()


def _authenticator(username: str, password: str) -> Any:
    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == username.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)

    return authenticate


@contextlib.contextmanager
def start_smtp_server(
    security: Security = "none",
    *,
    auth: bool | None = None,
    username: str = TEST_USERNAME,
    password: str = TEST_PASSWORD,
    quiet: bool = True,
) -> Iterator[SMTPTestServer]:
    """Run an aiosmtpd server on 127.0.0.1 (a free port) for the ``with`` block.

    ``security``: ``"none"`` (plain), ``"starttls"`` (STARTTLS required) or
    ``"tls"`` (implicit TLS).  TLS certificates come from a fresh ``trustme``
    CA whose certificate is written to ``server.ca_file``.  ``auth`` (default:
    on for ``"starttls"``) requires AUTH with ``username``/``password``, over
    TLS only.  ``quiet`` keeps aiosmtpd's logger at WARNING.
    """
    if security not in ("none", "starttls", "tls"):
        raise ValueError(f"security={security!r}: use 'none', 'starttls' or 'tls'")
    if auth is None:
        auth = security == "starttls"
    kit = SMTPTestServer(security=security, username=username if auth else None, password=password if auth else None)
    tmpdir: str | None = None
    kwargs: dict[str, Any] = {"ready_timeout": 10.0}
    if security != "none":
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(server_ctx)
        tmpdir = tempfile.mkdtemp(prefix="ecrm-smtp-")
        ca_path = Path(tmpdir) / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_path))
        kit.ca_file = str(ca_path)
        if security == "tls":
            kwargs["ssl_context"] = server_ctx
        else:
            kwargs["tls_context"] = server_ctx
            kwargs["require_starttls"] = True
    if auth:
        kwargs["auth_required"] = True
        kwargs["auth_require_tls"] = security != "none"
        kwargs["authenticator"] = _authenticator(username, password)
    mail_log = logging.getLogger("mail.log")
    previous = mail_log.level
    if quiet:
        mail_log.setLevel(logging.WARNING)
        mail_log.addFilter(_QUIET)
    controller = _Controller(_Handler(kit), kit=kit, **kwargs)
    try:
        controller.start()
        kit.port = controller.port
        kit._controller = controller
        with kit._lock:
            kit.connections = 0  # the controller's own start-up probe
        yield kit
    finally:
        with contextlib.suppress(Exception):
            kit.disconnect_all(abort=True)  # end open sessions before the loop stops
        kit._controller = None
        with contextlib.suppress(Exception):
            controller.stop(no_assert=True)
        if quiet:
            mail_log.setLevel(previous)
            mail_log.removeFilter(_QUIET)
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def smtp_config(server: SMTPTestServer, **overrides: Any) -> dict[str, Any]:
    """The ``smtp`` options (for :class:`~ecrm_email.transport.SMTPTransport` or
    ``CRM(channels={"email": {"smtp": ...}})``) that reach ``server``."""
    config: dict[str, Any] = {"host": server.host, "port": server.port, "security": server.security, "timeout": 10.0}
    if server.ca_file is not None:
        config["ca_file"] = server.ca_file
    if server.username is not None:
        config["username"] = server.username
        config["password"] = server.password
    config.update(overrides)
    return config


# ---------------------------------------------------------------------------
# pytest fixtures (this module is registered as a pytest11 plugin)
# ---------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the kit is usable without pytest
    pass
else:

    @pytest.fixture
    def smtp_server() -> Iterator[SMTPTestServer]:
        """A plain SMTP server on 127.0.0.1 (no TLS, no AUTH)."""
        with start_smtp_server("none") as server:
            yield server

    @pytest.fixture
    def smtp_tls_server() -> Iterator[SMTPTestServer]:
        """An implicit-TLS SMTP server on 127.0.0.1 (trust ``server.ca_file``)."""
        with start_smtp_server("tls") as server:
            yield server

    @pytest.fixture
    def smtp_starttls_server() -> Iterator[SMTPTestServer]:
        """STARTTLS required, then AUTH ``ecrm``/``s3cret`` required."""
        with start_smtp_server("starttls") as server:
            yield server
