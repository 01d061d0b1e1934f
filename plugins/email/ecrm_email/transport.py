"""The SMTP transport of the e-mail channel (stevedore driver ``smtp`` in
``ecrm.transports.email``).

:class:`SMTPTransport` keeps one :mod:`smtplib` connection open across sends
(guarded by a lock), speaks STARTTLS or implicit TLS, authenticates, limits
its send rate, and *classifies* every outcome as an
:class:`~ecrm_core.channels.DeliveryResult` instead of raising:

* ``2xx`` → ``accepted`` (``provider_id``: the queue id of the final reply,
  else the Message-ID);
* ``4xx``, connection refused, DNS failure, timeouts, TLS failures, a server
  that drops the connection (even in the middle of DATA), authentication
  failures → ``deferred`` (the pipeline retries with a new attempt id);
* ``5xx`` → ``rejected``; ``suppress=True`` only for permanent recipient
  address failures (enhanced status ``5.1.1``/``5.1.2``/``5.1.3``/``5.1.6``/
  ``5.1.10``, or a bare ``551``/``553`` or "unknown user" ``550`` to RCPT).

Each envelope is transmitted at most once per call: DATA is never retried
internally.  Only a ``MAIL FROM`` that fails on a *reused* connection (the
server closed it while idle) is retried once on a fresh connection — nothing
of the message had been sent.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import smtplib
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
from attrs import field, frozen
from ecrm_core.channels import DeliveryResult
from ecrm_core.errors import ValidationError

__all__ = ["Envelope", "SMTPTransport", "TokenBucket", "classify_reply"]

log = logging.getLogger("ecrm.email.transport")

Security = Literal["none", "starttls", "tls"]
_SECURITY = ("none", "starttls", "tls")
_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f<>]")
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
# Enhanced status codes that say the recipient address itself is bad (RFC 3463).
_BAD_ADDRESS = frozenset({"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10"})
_UNKNOWN_USER = re.compile(
    r"(no such (user|mailbox|recipient)|user unknown|unknown (user|recipient|mailbox)|"
    r"mailbox (unavailable|not found|does not exist)|does not exist|invalid recipient|recipient rejected)",
    re.IGNORECASE,
)
_QUEUE_ID = (
    re.compile(r"\bqueued as ([A-Za-z0-9][A-Za-z0-9._-]*)", re.IGNORECASE),
    re.compile(r"\bid=([A-Za-z0-9][A-Za-z0-9._-]*)", re.IGNORECASE),
)
_REMEMBERED_ATTEMPTS = 100_000


def _check_address(field_name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or not value.isascii() or _CONTROL.search(value) or "@" not in value:
        raise ValidationError(
            field_name,
            value,
            "is not a bare ASCII e-mail address",
            "pass the addr-spec only, e.g. 'ada@example.com' (see ecrm_email.mime.envelope_sender)",
        )
    return value


@frozen(kw_only=True)
class Envelope:
    """One message to send: SMTP envelope plus the message bytes.

    ``mail_from`` and ``rcpt`` are bare addresses; ``data`` the message
    (``ecrm_email.mime.message_bytes``); ``message_id`` the ``Message-ID``
    header value (``"<uid@domain>"``, the fallback ``provider_id``);
    ``attempt_id`` the pipeline's attempt id (an envelope is never sent
    twice under one attempt id).
    """

    mail_from: str = field()
    rcpt: str = field()
    data: bytes = field(repr=lambda d: f"<{len(d)} bytes>")
    message_id: str
    attempt_id: str

    def __attrs_post_init__(self) -> None:
        # An empty reverse path (bounces) is allowed for MAIL FROM.
        if self.mail_from != "":
            _check_address("envelope.mail_from", self.mail_from)
        _check_address("envelope.rcpt", self.rcpt)
        if not isinstance(self.data, bytes | bytearray) or not self.data:
            raise ValidationError("envelope.data", self.data, "must be non-empty bytes", "use mime.message_bytes(msg)")
        for name in ("message_id", "attempt_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or _CONTROL.sub("", value.strip("<>")) != value.strip("<>"):
                raise ValidationError(f"envelope.{name}", value, "must be a non-empty printable string", "pass an id")


class TokenBucket:
    """A send-rate limiter: at most ``rate`` messages per second, evenly spaced
    (a bucket of one token, refilled at ``rate``/s).  ``clock``/``sleep`` are
    injectable for tests."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not rate > 0:
            raise ValidationError("smtp.rate_limit", rate, "must be positive", "give messages per second, e.g. 50")
        self.rate = float(rate)
        self.interval = 1.0 / self.rate
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def acquire(self) -> float:
        """Wait for a token; return the seconds slept (0.0 if none)."""
        now = self._clock()
        due = now if self._next is None else max(self._next, now)
        wait = due - now
        if wait > 0:
            self._sleep(wait)
        self._next = due + self.interval
        return wait if wait > 0 else 0.0


def _text(resp: bytes | str) -> str:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _code(code: int, resp: bytes | str) -> str:
    match = _ENHANCED.match(_text(resp))
    return f"{code} {'.'.join(match.groups())}" if match else str(code)


def classify_reply(code: int, resp: bytes | str, *, stage: str) -> DeliveryResult:
    """Classify an SMTP reply ``code resp`` received at ``stage`` (``"mail"``,
    ``"rcpt"``, ``"data"``) as a :class:`DeliveryResult`.  For 2xx the caller
    fills in the provider id."""
    text = _text(resp)
    code_str = _code(code, resp)
    enhanced = code_str.partition(" ")[2] or None
    reason = f"{stage.upper()} answered {code} {text}".strip()
    if 200 <= code < 300:
        return DeliveryResult.accepted(None, code=code_str)
    if 400 <= code < 500:
        return DeliveryResult.deferred(reason, code=code_str)
    if code == 530:  # "authentication required": a configuration problem, keep the message
        return DeliveryResult.deferred(
            f"{reason}: the server requires AUTH; set smtp.username and smtp.password", code=code_str
        )
    if 500 <= code < 600:
        suppress = False
        if stage in ("rcpt", "data"):
            if enhanced is not None:
                suppress = enhanced in _BAD_ADDRESS
            elif stage == "rcpt":
                suppress = code in (551, 553) or (code == 550 and bool(_UNKNOWN_USER.search(text)))
        return DeliveryResult.rejected(reason, code=code_str, suppress=suppress)
    return DeliveryResult.deferred(f"unexpected SMTP reply at {stage.upper()}: {code} {text}", code=str(code))


def _provider_id(resp: bytes | str, fallback: str) -> str:
    text = _text(resp)
    for pattern in _QUEUE_ID:
        found = pattern.search(text)
        if found:
            return found.group(1).rstrip(".")
    return fallback


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _ConnectFailure(Exception):
    """Could not open a usable (connected, secured, authenticated) session."""

    def __init__(self, reason: str, *, code: str | None = None, config: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.config = config


class _Retry(Exception):
    """MAIL FROM failed on a reused connection before anything was sent."""


class SMTPTransport:
    """Send envelopes over SMTP, classifying each outcome (never raising for
    provider failures).  See the module docstring and
    ``docs/plugins/email/transport.md``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 25,
        security: Security = "starttls",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        rate_limit: float | None = None,
        max_per_connection: int = 1000,
        idle_timeout: float = 30.0,
        ca_file: str | None = None,
        verify: bool = True,
        local_hostname: str | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if not isinstance(host, str) or not host or _CONTROL.search(host):
            raise ValidationError("smtp.host", host, "is not a host name", "use e.g. 'smtp.example.com' or '127.0.0.1'")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValidationError("smtp.port", port, "is not a TCP port", "use an integer 1..65535 (25, 465, 587)")
        if security not in _SECURITY:
            raise ValidationError(
                "smtp.security",
                security,
                "unknown security mode",
                "use 'starttls' (submission, port 587), 'tls' (implicit TLS, port 465) or 'none'",
            )
        if username is not None and (not isinstance(username, str) or not username):
            raise ValidationError("smtp.username", username, "must be a non-empty string", "give the SMTP login")
        if password is not None and not isinstance(password, str):
            raise ValidationError("smtp.password", "***", "must be a string", "give the SMTP password as text")
        if (username is None) != (password is None):
            missing = "smtp.password" if password is None else "smtp.username"
            raise ValidationError(missing, None, "is missing", "set both smtp.username and smtp.password, or neither")
        if username is not None and security == "none" and not _is_loopback(host):
            raise ValidationError(
                "smtp.security",
                security,
                f"AUTH over a plaintext connection to {host!r} is refused (the password would travel in clear)",
                "use security='starttls' or 'tls'; plaintext AUTH is allowed only to a loopback host",
            )
        for name, value in (("timeout", timeout), ("idle_timeout", idle_timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValidationError(f"smtp.{name}", value, "must be a positive number of seconds", "e.g. 30")
        if rate_limit is not None and (
            isinstance(rate_limit, bool) or not isinstance(rate_limit, int | float) or not rate_limit > 0
        ):
            raise ValidationError(
                "smtp.rate_limit", rate_limit, "must be positive", "give messages per second, or None for no limit"
            )
        if isinstance(max_per_connection, bool) or not isinstance(max_per_connection, int) or max_per_connection < 1:
            raise ValidationError("smtp.max_per_connection", max_per_connection, "must be an integer >= 1", "e.g. 1000")
        if not isinstance(verify, bool):
            raise ValidationError("smtp.verify", verify, "must be true or false", "leave it true outside tests")
        if local_hostname is not None and (not isinstance(local_hostname, str) or _CONTROL.search(local_hostname)):
            raise ValidationError(
                "smtp.local_hostname", local_hostname, "is not a host name", "e.g. 'mail.example.com'"
            )

        self.host = host
        self.port = port
        self.security: Security = security
        self.username = username
        self.__password = password
        self.timeout = float(timeout)
        self.rate_limit = float(rate_limit) if rate_limit is not None else None
        self.max_per_connection = max_per_connection
        self.idle_timeout = float(idle_timeout)
        self.ca_file = ca_file
        self.verify = verify
        self.local_hostname = local_hostname
        self._ssl_context = self._make_ssl_context() if security != "none" else None
        self._limiter = (
            TokenBucket(self.rate_limit, clock=clock or time.monotonic, sleep=sleep or time.sleep)
            if self.rate_limit is not None
            else None
        )
        self._lock = threading.RLock()
        self._conn: smtplib.SMTP | None = None
        self._sent_on_conn = 0
        self._last_used = 0.0
        self._attempts: OrderedDict[str, None] = OrderedDict()
        self._config_error_logged = False
        #: Connections opened so far (for tests and metrics).
        self.connections_opened = 0
        if not verify and security != "none":
            log.warning("smtp: TLS certificate verification is OFF for %s:%s (verify=False)", host, port)

    # -- helpers -------------------------------------------------------------

    def __repr__(self) -> str:
        auth = f", username={self.username!r}, password='***'" if self.username is not None else ""
        return f"SMTPTransport(host={self.host!r}, port={self.port}, security={self.security!r}{auth})"

    __str__ = __repr__

    def _make_ssl_context(self) -> ssl.SSLContext:
        if self.ca_file is not None:
            if not isinstance(self.ca_file, str) or not Path(self.ca_file).is_file():
                raise ValidationError(
                    "smtp.ca_file", self.ca_file, "is not a readable file", "give the path of a PEM CA bundle"
                )
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValidationError(
                "smtp.ca_file", self.ca_file, f"cannot be loaded ({exc.__class__.__name__})", "give a PEM CA bundle"
            ) from None
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _scrub(self, text: str) -> str:
        secret = self.__password
        return text.replace(secret, "***") if secret else text

    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    # -- connection ----------------------------------------------------------

    def _connect(self) -> smtplib.SMTP:
        where = self._where()
        conn: smtplib.SMTP | None = None
        try:
            if self.security == "tls":
                conn = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    local_hostname=self.local_hostname,
                    timeout=self.timeout,
                    context=self._ssl_context,
                )
            else:
                conn = smtplib.SMTP(self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout)
            self.connections_opened += 1
            conn.ehlo_or_helo_if_needed()
            if self.security == "starttls":
                if not conn.has_extn("starttls"):
                    raise _ConnectFailure(
                        f"{where} does not offer STARTTLS; refusing to send in plaintext "
                        "(fix the server, or choose smtp.security='tls' or 'none')",
                        config=True,
                    )
                conn.starttls(context=self._ssl_context)
                conn.ehlo()
            if self.username is not None:
                conn.login(self.username, self.__password or "")
            return conn
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, _ConnectFailure):
                raise
            if isinstance(exc, Exception):
                raise self._connect_failure(exc) from None
            raise

    def _connect_failure(self, exc: Exception) -> _ConnectFailure:
        where = self._where()
        name = exc.__class__.__name__
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            code = _code(exc.smtp_code, exc.smtp_error)
            return _ConnectFailure(
                f"SMTP authentication failed at {where} ({exc.smtp_code} {_text(exc.smtp_error)}): "
                "fix smtp.username/smtp.password; the message is kept and retried",
                code=code,
                config=True,
            )
        if isinstance(exc, smtplib.SMTPNotSupportedError) or (
            type(exc) is smtplib.SMTPException and "authentication" in str(exc).lower()
        ):
            return _ConnectFailure(
                f"{where} cannot do what smtp options ask ({exc}): check smtp.security and smtp.username",
                config=True,
            )
        if isinstance(exc, ssl.SSLCertVerificationError):
            return _ConnectFailure(
                f"TLS certificate verification failed for {where} ({exc.verify_message or exc.reason}): "
                "set smtp.ca_file to the CA that signed the server certificate, or fix the certificate"
            )
        if isinstance(exc, ssl.SSLError):
            return _ConnectFailure(f"TLS failure with {where} ({name}: {exc.reason or exc})")
        if isinstance(exc, smtplib.SMTPConnectError):
            return _ConnectFailure(
                f"{where} refused the session: {exc.smtp_code} {_text(exc.smtp_error)}",
                code=_code(exc.smtp_code, exc.smtp_error),
            )
        if isinstance(exc, smtplib.SMTPResponseException):
            return _ConnectFailure(
                f"{where} answered {exc.smtp_code} {_text(exc.smtp_error)} while opening the session",
                code=_code(exc.smtp_code, exc.smtp_error),
            )
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            return _ConnectFailure(f"{where} closed the connection while opening the session ({exc})")
        if isinstance(exc, ConnectionRefusedError):
            return _ConnectFailure(f"connection refused by {where} (is the SMTP server running?)")
        if isinstance(exc, socket.gaierror):
            return _ConnectFailure(f"cannot resolve SMTP host {self.host!r} ({exc.strerror or exc})")
        if isinstance(exc, TimeoutError):
            return _ConnectFailure(f"timed out after {self.timeout:g}s connecting to {where}")
        if isinstance(exc, OSError):
            return _ConnectFailure(f"network error talking to {where} ({name}: {exc.strerror or exc})")
        return _ConnectFailure(f"could not open an SMTP session with {where} ({name}: {exc})")

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover - close() swallows most errors itself
                pass

    def _quit(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.quit()
            except Exception:
                conn.close()

    def _session(self) -> tuple[smtplib.SMTP, bool]:
        """The open connection (reused when fresh enough) and whether it is new."""
        if self._conn is not None and (
            self._sent_on_conn >= self.max_per_connection or time.monotonic() - self._last_used > self.idle_timeout
        ):
            self._quit()
        if self._conn is not None:
            return self._conn, False
        self._conn = self._connect()
        self._sent_on_conn = 0
        return self._conn, True

    # -- sending -------------------------------------------------------------

    def send(self, envelope: Envelope) -> DeliveryResult:
        """Send one envelope; never raises for provider failures."""
        return self.send_many([envelope])[0]

    def send_many(self, envelopes: Sequence[Envelope]) -> list[DeliveryResult]:
        """Send envelopes over the shared connection; one result per envelope,
        in order.  A failure of one envelope does not affect the others; if
        no session can be opened, the rest of the batch is deferred with the
        same reason (without trying each)."""
        results: list[DeliveryResult] = []
        with self._lock:
            connect_failure: _ConnectFailure | None = None
            for envelope in envelopes:
                if envelope.attempt_id in self._attempts:
                    results.append(
                        DeliveryResult.deferred(
                            f"attempt {envelope.attempt_id} was already handed to this transport; "
                            "not sent twice (a retry needs a new attempt id)"
                        )
                    )
                    continue
                self._remember(envelope.attempt_id)
                if connect_failure is not None:
                    results.append(DeliveryResult.deferred(connect_failure.reason, code=connect_failure.code))
                    continue
                try:
                    results.append(self._send_one(envelope))
                except _ConnectFailure as failure:
                    failure.reason = self._scrub(failure.reason)
                    self._report_connect_failure(failure)
                    connect_failure = failure
                    results.append(DeliveryResult.deferred(failure.reason, code=failure.code))
        return results

    def _remember(self, attempt_id: str) -> None:
        self._attempts[attempt_id] = None
        if len(self._attempts) > _REMEMBERED_ATTEMPTS:
            self._attempts.popitem(last=False)

    def _report_connect_failure(self, failure: _ConnectFailure) -> None:
        if failure.config:
            if not self._config_error_logged:
                self._config_error_logged = True
                log.error("smtp: %s", failure.reason)
        else:
            log.warning("smtp: %s", failure.reason)

    def _send_one(self, envelope: Envelope) -> DeliveryResult:
        if self._limiter is not None:
            self._limiter.acquire()
        try:
            return self._transaction(envelope)
        except _Retry:
            # The reused connection was dead before anything was sent: once more, on a new one.
            self._drop()
            try:
                return self._transaction(envelope, allow_retry=False)
            except _Retry:  # pragma: no cover - allow_retry=False never raises it
                raise AssertionError("unreachable") from None

    def _transaction(self, envelope: Envelope, *, allow_retry: bool = True) -> DeliveryResult:
        conn, fresh = self._session()
        self._sent_on_conn += 1
        self._last_used = time.monotonic()
        stage = "mail"
        try:
            code, resp = conn.mail(envelope.mail_from)
            if code == 421 and not fresh and allow_retry:
                raise _Retry
            if code != 250:
                return self._refused(conn, code, resp, stage, envelope)
            stage = "rcpt"
            code, resp = conn.rcpt(envelope.rcpt)
            if code not in (250, 251):
                return self._refused(conn, code, resp, stage, envelope)
            stage = "data"
            try:
                code, resp = conn.data(envelope.data)
            except smtplib.SMTPDataError as exc:  # DATA itself (before 354) refused
                return self._refused(conn, exc.smtp_code, exc.smtp_error, stage, envelope)
            self._last_used = time.monotonic()
            if code != 250:
                return self._refused(conn, code, resp, stage, envelope, reset=False)
            result = classify_reply(code, resp, stage=stage)
            return DeliveryResult.accepted(_provider_id(resp, envelope.message_id), code=result.code)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop()
            if stage == "mail" and not fresh and allow_retry:
                raise _Retry from None
            return self._lost(exc, stage, envelope)
        except smtplib.SMTPException as exc:
            self._drop()
            return DeliveryResult.deferred(self._scrub(f"SMTP error at {stage.upper()} ({exc}); will retry"))

    def _refused(
        self, conn: smtplib.SMTP, code: int, resp: bytes | str, stage: str, envelope: Envelope, *, reset: bool = True
    ) -> DeliveryResult:
        result = classify_reply(code, resp, stage=stage)
        if code == 421:
            self._drop()  # the server is closing this connection
        elif reset:
            try:
                conn.rset()
            except (smtplib.SMTPException, OSError):
                self._drop()
        result = attrs.evolve(result, reason=self._scrub(result.reason))
        log.info("smtp: %s for %s (attempt %s): %s", result.status, envelope.rcpt, envelope.attempt_id, result.reason)
        return result

    def _lost(self, exc: BaseException, stage: str, envelope: Envelope) -> DeliveryResult:
        detail = str(exc) or exc.__class__.__name__
        if isinstance(exc, TimeoutError) or "timed out" in detail:
            what = f"timed out after {self.timeout:g}s"
        else:
            what = f"connection lost ({detail})"
        if stage == "data":
            reason = (
                f"{what} during DATA with {self._where()}: the server may or may not have the message; "
                "it is retried under a new attempt id"
            )
        else:
            reason = f"{what} at {stage.upper()} with {self._where()}; nothing was transmitted"
        reason = self._scrub(reason)
        log.warning("smtp: deferred %s (attempt %s): %s", envelope.rcpt, envelope.attempt_id, reason)
        return DeliveryResult.deferred(reason)

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """QUIT and close the connection (a later send opens a new one)."""
        with self._lock:
            self._quit()

    def __enter__(self) -> SMTPTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
