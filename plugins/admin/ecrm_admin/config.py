"""How an admin app is configured: :class:`AdminConfig`."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from attrs import field, frozen
from ecrm_core.errors import ValidationError

__all__ = ["AdminConfig"]

_PATH = re.compile(r"^(/[A-Za-z0-9_.\-]+)*$")


def _path(value: Any) -> str:
    if not isinstance(value, str) or not _PATH.match(value.rstrip("/") if value != "/" else ""):
        raise ValidationError("path", value, "not a mount path", "use '' (the root) or '/admin', '/crm/admin'…")
    return "" if value in ("", "/") else value.rstrip("/")


def _positive(name: str, *, whole: bool = False) -> Callable[[Any, Any, Any], None]:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        number = isinstance(value, int) if whole else isinstance(value, int | float)
        if isinstance(value, bool) or not number or float(value) <= 0:
            raise ValidationError(name, value, "not a positive number", f"give {name} a number above 0")

    return check


@frozen(kw_only=True)
class AdminConfig:
    """Options of :func:`ecrm_admin.create_admin` (also accepted as its keyword arguments).

    * ``path``: the public path the admin is served under (``"/admin"``;
      ``""`` for the root).  Build the app with the path clients use and give
      it requests with their full path (as for the API, see
      ``docs/http/embedding.md``).
    * ``authenticate``: the host's authentication.  ``authenticate(request)``
      gets the Litestar request (``.headers``, ``.cookies``, ``.scope``) and
      returns an :class:`~ecrm_admin.users.AdminUser` (the host decides the
      role and workspaces) or ``None``.  With it, the admin's login form is
      replaced by a redirect to ``login_url``.  ``own_users=True`` keeps the
      admin's own login as well.
    * ``secure_cookies``: the session cookie is ``Secure`` (only sent over
      HTTPS; browsers treat ``http://127.0.0.1``/``localhost`` as secure
      too).  Always ``HttpOnly`` and ``SameSite=Lax``.
    * ``session_hours``: the absolute lifetime of a session, from its login
      (12 hours); then the user logs in again, however active.
    * ``session_idle_minutes``: a session unused this long ends (30
      minutes).  Enforced by the server from the session's ``seen_at``,
      which requests advance at most once a minute (or every tenth of the
      idle time, if shorter), so the idle end comes that much early at most.
    * ``login_failures_per_account``, ``login_failures_per_address``,
      ``login_window_minutes``: failed password logins allowed per account
      (5) and per client address (50) within a sliding window (15 minutes);
      past either, logins for that account or from that address are refused
      (429 with ``Retry-After``, the password not even checked) until the
      oldest failure leaves the window.  Counted in memory per process, in
      bounded maps of ``login_throttle_keys`` (10,000) accounts and as many
      addresses (see :mod:`ecrm_admin.throttle`).
    * ``client_address``: ``client_address(request)`` returns the address to
      count failures against (default: the connection's peer address).  Behind
      a reverse proxy every peer is the proxy: return the client address the
      proxy reports (e.g. the last ``X-Forwarded-For`` entry your proxy adds).
    * ``secret``: key for the login form's CSRF token (default:
      ``ECRM_SECRET``, else random per process — then run one process, or
      set it).
    * ``stylesheets``: extra same-origin CSS URLs loaded after the admin's
      own (theming).
    * ``dashboard_ttl``: seconds the dashboard's figures are reused before
      they are computed again (in the background, the old ones shown
      meanwhile).
    * ``dashboard_history_ttl``: seconds the closed months of the revenue
      chart are reused (an hour; they are computed again at once when a month
      closes).  Sales recorded late for a past month show after at most this.
    * ``count_timeout``: seconds the segment builder's live count may take
      before it is abandoned and reported as too slow.
    """

    path: str = field(default="/admin", converter=_path)
    title: str = "ecrm admin"
    authenticate: Callable[[Any], Any] | None = None
    login_url: str | None = None
    own_users: bool | None = None
    secure_cookies: bool = True
    session_hours: float = field(default=12.0, validator=_positive("session_hours"))
    session_idle_minutes: float = field(default=30.0, validator=_positive("session_idle_minutes"))
    login_failures_per_account: int = field(default=5, validator=_positive("login_failures_per_account", whole=True))
    login_failures_per_address: int = field(default=50, validator=_positive("login_failures_per_address", whole=True))
    login_window_minutes: float = field(default=15.0, validator=_positive("login_window_minutes"))
    login_throttle_keys: int = field(default=10_000, validator=_positive("login_throttle_keys", whole=True))
    client_address: Callable[[Any], str | None] | None = None
    secret: str | bytes | None = None
    stylesheets: Sequence[str] = ()
    dashboard_ttl: float = 60.0
    dashboard_history_ttl: float = 3600.0
    count_timeout: float = 1.0
    max_body: int = 1_000_000

    @property
    def password_login(self) -> bool:
        """Whether the admin's own login form is offered."""
        return self.own_users if self.own_users is not None else self.authenticate is None
