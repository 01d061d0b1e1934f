"""Sessions end after an idle time and at an absolute lifetime (server-side,
whatever the cookie says); failed logins are throttled per account and per
client address (429 with Retry-After, the password not checked) in a bounded
store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ecrm_core import CRM
from ecrm_core.errors import ValidationError

from .conftest import PASSWORD, Browser, build, plugins


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clocked(crm_factory: Callable[..., CRM]) -> Any:
    """``make(**options)``: a logged-in Browser on a CRM whose clock the test moves."""
    from ecrm_admin import Users
    from litestar.testing import TestClient

    clock = Clock()
    crm = crm_factory(plugins=plugins(), secret="test-secret", clock=clock)
    Users(crm).create("ada", PASSWORD, role="agent")
    clients: list[Any] = []

    def make(**options: Any) -> tuple[Browser, Clock, CRM]:
        client = TestClient(build(crm, **options), base_url="https://testserver.local")
        client.__enter__()
        clients.append(client)
        b = Browser(client)
        assert b.login("ada").status_code == 303
        return b, clock, crm

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def _signed_out(response: Any) -> bool:
    return response.status_code == 303 and "/admin/login?next=" in response.headers["location"]


def test_an_idle_session_ends_and_use_keeps_it_alive(clocked: Any) -> None:
    b, clock, crm = clocked(session_idle_minutes=30)
    for _ in range(4):  # used every 25 minutes: alive for 100 minutes
        clock.advance(minutes=25)
        assert b.get("/", follow_redirects=False).status_code == 200
    clock.advance(minutes=30)  # then unused for 30 minutes: ended
    gone = b.get("/", follow_redirects=False)
    assert _signed_out(gone) and gone.headers["location"].endswith("&ended=1")
    page = b.client.get(gone.headers["location"])
    assert "Your session has ended" in page.text
    # a POST with the old cookie and its CSRF token is refused too (server-side, not the cookie's age)
    assert b.post("/logout", {}, csrf="x").status_code == 401
    # the ended row is removed when the next session starts
    assert b.login("ada").status_code == 303
    t = crm.db.tables["admin_sessions"]
    with crm.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() == 1


def test_the_absolute_lifetime_ends_even_a_busy_session(clocked: Any) -> None:
    b, clock, _ = clocked(session_hours=1, session_idle_minutes=30)
    for _ in range(5):
        clock.advance(minutes=11)
        assert b.get("/", follow_redirects=False).status_code == 200
    clock.advance(minutes=5)  # 60 minutes after the login
    assert _signed_out(b.get("/", follow_redirects=False))


def test_last_use_is_written_at_most_once_a_minute(clocked: Any) -> None:
    b, clock, crm = clocked(session_idle_minutes=30)
    t = crm.db.tables["admin_sessions"]

    def seen() -> datetime:
        with crm.db.read() as conn:
            return conn.execute(sa.select(t.c.seen_at)).scalar_one()

    start = seen()
    clock.advance(seconds=30)
    b.get("/")
    assert seen() == start
    clock.advance(seconds=31)
    b.get("/")
    assert seen() == clock.now


def test_session_options_must_be_positive() -> None:
    from ecrm_admin import AdminConfig

    for bad in ({"session_idle_minutes": 0}, {"session_hours": -1}, {"login_failures_per_account": 0}):
        with pytest.raises(ValidationError, match="not a positive number"):
            AdminConfig(**bad)


# -- login throttling ---------------------------------------------------------------


def _admin(b: Browser) -> Any:
    return b.client.app.state["ecrm_admin"]


def test_failed_logins_lock_the_account_with_retry_after(admin_client: Any) -> None:
    b = admin_client(None, login_failures_per_account=3, login_window_minutes=10)
    now = [1000.0]
    _admin(b).throttle.clock = lambda: now[0]
    for _ in range(3):
        assert b.login("agent", "wrong password!").status_code == 401
    locked = b.login("agent")  # the right password, but locked: not even checked
    assert locked.status_code == 429
    assert locked.headers["retry-after"] == "600"
    assert "Too many failed logins for this account. Try again in 10 minutes." in locked.text
    assert b.login("marketer").status_code == 303  # another account from the same address is fine
    now[0] += 599
    assert b.login("agent").headers["retry-after"] == "1"
    now[0] += 1  # the first failure left the window
    assert b.login("agent").status_code == 303


def test_a_success_clears_the_account_failures(admin_client: Any) -> None:
    b = admin_client(None, login_failures_per_account=3)
    for _ in range(2):
        assert b.login("agent", "wrong password!").status_code == 401
    assert b.login("agent").status_code == 303
    for _ in range(2):
        assert b.login("agent", "wrong password!").status_code == 401
    assert b.login("agent").status_code == 303


def test_failures_from_one_address_lock_that_address_only(admin_client: Any) -> None:
    def by_header(request: Any) -> str | None:
        return request.headers.get("x-client")

    b = admin_client(None, login_failures_per_address=4, client_address=by_header)
    for n in range(4):  # different, made-up accounts: the per-account limit is not reached
        b.client.headers["x-client"] = "203.0.113.9"
        assert b.login(f"guess{n}", "wrong password!").status_code == 401
    locked = b.login("admin")
    assert locked.status_code == 429 and "from your network address" in locked.text
    assert 840 < int(locked.headers["retry-after"]) <= 900
    b.client.headers["x-client"] = "198.51.100.7"
    assert b.login("admin").status_code == 303


def test_the_throttle_store_is_bounded() -> None:
    from ecrm_admin.throttle import LoginThrottle

    throttle = LoginThrottle(per_account=2, per_address=1000, max_keys=100)
    for n in range(10_000):
        throttle.failed(f"user{n}", f"10.0.{n // 256 % 256}.{n % 256}")
    assert len(throttle) <= 200
    assert max(len(times) for times in throttle.accounts.keys.values()) <= 2
    # the most recent keys are kept and still counted
    throttle.failed("user9999", None)
    refusal = throttle.check("user9999", None)
    assert refusal is not None and refusal.scope == "account" and refusal.retry_after == 900
    assert throttle.check("user0", None) is None  # forgotten (evicted), not locked


def test_throttle_options_are_checked() -> None:
    from ecrm_admin.throttle import LoginThrottle

    with pytest.raises(ValueError, match="per_account"):
        LoginThrottle(per_account=0)
    with pytest.raises(ValueError, match="window"):
        LoginThrottle(window=0)
