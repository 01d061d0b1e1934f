"""The admin's own users (scrypt-hashed passwords, roles, workspaces) and their sessions.

A host with its own accounts can skip these users and authenticate through
``AdminConfig(authenticate=...)`` instead (see :mod:`ecrm_admin.config`);
sessions are then still the admin's, so CSRF tokens and workspaces work the
same way.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from attrs import frozen
from ecrm_core.errors import NotFound, ValidationError
from ecrm_core.registry import ADMIN_ROLES

from .schema import SESSIONS, USERS

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["ADMIN_ROLES", "AdminUser", "Session", "Users", "Sessions", "hash_password", "check_password", "role_rank"]

#: scrypt cost: n=2**14, r=8, p=1 (RFC 7914's interactive-login figures; ~16 MiB, ~50 ms)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,99}$")
_MIN_PASSWORD = 10
_MAX_PASSWORD = 1024
#: A hash to compare against when the user does not exist (same cost: no user probing by timing).
_DUMMY = None


def role_rank(role: str) -> int:
    """0 for agent, 1 for marketer, 2 for admin."""
    return ADMIN_ROLES.index(role)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$n$r$p$salt$hash`` of ``password`` with a fresh 16-byte salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a :func:`hash_password` result (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode("utf-8"), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), maxmem=64 * 1024 * 1024, dklen=32
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(digest))


def _dummy_hash() -> str:
    global _DUMMY
    if _DUMMY is None:
        _DUMMY = hash_password(secrets.token_hex(16))
    return _DUMMY


@frozen(kw_only=True)
class AdminUser:
    """Who is using the admin: a ``username``, a ``role`` (:data:`ADMIN_ROLES`)
    and the ``workspaces`` they may see (``("*",)``: every workspace).

    The admin's own users are stored by :class:`Users`; a host that
    authenticates through ``AdminConfig(authenticate=...)`` returns one of
    these built from its own account.
    """

    username: str
    role: str = "agent"
    workspaces: tuple[str, ...] = ("*",)
    display_name: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.role not in ADMIN_ROLES:
            raise ValidationError("role", self.role, "not an admin role", f"use one of {', '.join(ADMIN_ROLES)}")

    def at_least(self, role: str) -> bool:
        """Whether this user's role is ``role`` or above it."""
        return role_rank(self.role) >= role_rank(role)

    def may_see(self, workspace: str) -> bool:
        return "*" in self.workspaces or workspace in self.workspaces


def _check_username(value: Any) -> str:
    if not isinstance(value, str) or not _USERNAME.match(value):
        raise ValidationError(
            "username", value, "not a user name", "use 1-100 letters, digits, '_', '.', '@' or '-', starting alnum"
        )
    return value


def _check_password(value: Any) -> str:
    if not isinstance(value, str) or not _MIN_PASSWORD <= len(value) <= _MAX_PASSWORD:
        raise ValidationError(
            "password", "***", f"not {_MIN_PASSWORD}..{_MAX_PASSWORD} characters", "choose a longer password"
        )
    return value


def _check_role(value: Any) -> str:
    if value not in ADMIN_ROLES:
        raise ValidationError("role", value, "not an admin role", f"use one of {', '.join(ADMIN_ROLES)}")
    return str(value)


def _check_workspaces(value: Iterable[str] | None) -> tuple[str, ...]:
    from ecrm_core.validation import check_slug

    if value is None:
        return ("*",)
    items = tuple(value)
    if not items:
        raise ValidationError("workspaces", value, "no workspace", "give one or more workspaces, or '*' for all")
    return tuple(v if v == "*" else check_slug(v, "workspaces", "workspace") for v in items)


class Users:
    """The admin's own users, in the CRM's database (``crm.db.tables["admin_users"]``)."""

    def __init__(self, crm: CRM) -> None:
        self.crm = crm

    @property
    def table(self) -> sa.Table:
        self.crm.db.check_schema()
        return self.crm.db.tables[USERS]

    def create(
        self,
        username: str,
        password: str,
        *,
        role: str = "agent",
        workspaces: Sequence[str] | None = None,
        display_name: str | None = None,
    ) -> AdminUser:
        """Create a user; :class:`ValidationError` for a bad or taken name, short password, unknown role."""
        from ecrm_core.validation import check_text

        username = _check_username(username)
        password = _check_password(password)
        role = _check_role(role)
        spaces = _check_workspaces(workspaces)
        if display_name is not None:
            display_name = check_text(display_name, "display_name", max_length=200)
        t = self.table
        try:
            with self.crm.db.write() as conn:
                conn.execute(
                    sa.insert(t).values(
                        username=username,
                        display_name=display_name,
                        password_hash=hash_password(password),
                        role=role,
                        workspaces=json.dumps(list(spaces)),
                        disabled=False,
                        created_at=self.crm.now(),
                    )
                )
        except sa.exc.IntegrityError:
            raise ValidationError("username", username, "already taken", "choose another user name") from None
        return AdminUser(username=username, role=role, workspaces=spaces, display_name=display_name)

    @staticmethod
    def _user(row: Any) -> AdminUser:
        return AdminUser(
            username=row.username,
            role=row.role,
            workspaces=tuple(json.loads(row.workspaces)),
            display_name=row.display_name,
        )

    def get(self, username: str) -> AdminUser:
        t = self.table
        with self.crm.db.read() as conn:
            row = conn.execute(sa.select(t).where(t.c.username == username)).first()
        if row is None:
            raise NotFound("admin user", username)
        return self._user(row)

    def list(self) -> builtins.list[AdminUser]:
        t = self.table
        with self.crm.db.read() as conn:
            return [
                self._user(r) for r in conn.execute(sa.select(t).where(t.c.disabled.is_(False)).order_by(t.c.username))
            ]

    def update(
        self,
        username: str,
        *,
        password: str | None = None,
        role: str | None = None,
        workspaces: Sequence[str] | None = None,
        disabled: bool | None = None,
    ) -> AdminUser:
        """Change a user; a new password, role, workspaces or disabling ends their sessions."""
        values: dict[str, Any] = {}
        if password is not None:
            values["password_hash"] = hash_password(_check_password(password))
        if role is not None:
            values["role"] = _check_role(role)
        if workspaces is not None:
            values["workspaces"] = json.dumps(list(_check_workspaces(workspaces)))
        if disabled is not None:
            values["disabled"] = bool(disabled)
        t = self.table
        with self.crm.db.write() as conn:
            done = conn.execute(sa.update(t).where(t.c.username == username).values(**values)).rowcount
        if not done:
            raise NotFound("admin user", username)
        Sessions(self.crm).end_all(username)
        return self.get(username)

    def authenticate(self, username: str, password: str) -> AdminUser | None:
        """The user if the password is right and the user is enabled, else ``None``.

        Costs one scrypt whether or not the user exists."""
        if not isinstance(username, str) or not isinstance(password, str) or len(password) > _MAX_PASSWORD:
            return None
        t = self.table
        with self.crm.db.read() as conn:
            row = (
                conn.execute(sa.select(t).where(t.c.username == username)).first()
                if _USERNAME.match(username)
                else None
            )
        ok = check_password(password, row.password_hash if row is not None else _dummy_hash())
        if row is None or not ok or row.disabled:
            return None
        with self.crm.db.write() as conn:
            conn.execute(sa.update(t).where(t.c.id == row.id).values(last_login_at=self.crm.now()))
        return self._user(row)


@frozen(kw_only=True)
class Session:
    """A logged-in session: its user, current workspace and CSRF token."""

    id_hash: str
    user: AdminUser
    workspace: str
    csrf: str
    source: str
    expires_at: datetime


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Sessions:
    """Server-side sessions: the cookie holds a random token, the table its SHA-256.

    A session ends ``lifetime`` after it started (absolute) or ``idle`` after
    its last use, whichever comes first; both are checked on every request
    against the row, so they hold whatever the cookie says.  The last use
    (``seen_at``) is written at most every ``touch_every`` (a minute, or a
    tenth of ``idle`` if shorter), not on every request.
    """

    def __init__(
        self,
        crm: CRM,
        *,
        lifetime: timedelta = timedelta(hours=12),
        idle: timedelta = timedelta(minutes=30),
        touch_every: timedelta | None = None,
    ) -> None:
        self.crm = crm
        self.lifetime = lifetime
        self.idle = idle
        self.touch_every = touch_every if touch_every is not None else min(timedelta(minutes=1), idle / 10)

    @property
    def table(self) -> sa.Table:
        self.crm.db.check_schema()
        return self.crm.db.tables[SESSIONS]

    def start(self, user: AdminUser, workspace: str, *, source: str = "password", replaces: str | None = None) -> str:
        """A new session for ``user``; returns the cookie token.

        Always a fresh random token (never one the browser brought: no
        fixation); ``replaces`` (the token the browser had) is ended.
        """
        token = secrets.token_urlsafe(32)
        now = self.crm.now()
        t = self.table
        with self.crm.db.write() as conn:
            if replaces:
                conn.execute(sa.delete(t).where(t.c.id == _token_hash(replaces)))
            conn.execute(sa.delete(t).where(sa.or_(t.c.expires_at < now, t.c.seen_at < now - self.idle)))
            conn.execute(
                sa.insert(t).values(
                    id=_token_hash(token),
                    username=user.username,
                    role=user.role,
                    workspace=workspace,
                    csrf=secrets.token_urlsafe(32),
                    source=source,
                    created_at=now,
                    seen_at=now,
                    expires_at=now + self.lifetime,
                )
            )
        return token

    def get(self, token: str | None, users: Users | None = None) -> Session | None:
        """The live session of a cookie token, or ``None`` (unknown, expired, user disabled or gone).

        For the admin's own users, the role and workspaces are read from the
        user's row on every request, so a demotion takes effect at once."""
        if not token or len(token) > 100:
            return None
        t = self.table
        now = self.crm.now()
        with self.crm.db.read() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == _token_hash(token))).first()
            if row is None or row.expires_at <= now or row.seen_at + self.idle <= now:
                return None
            if row.source == "password":
                u = self.crm.db.tables[USERS]
                urow = conn.execute(sa.select(u).where(u.c.username == row.username)).first()
                if urow is None or urow.disabled:
                    return None
                user = Users._user(urow)
            else:
                user = AdminUser(username=row.username, role=row.role, workspaces=("*",))
        if now - row.seen_at >= self.touch_every:
            with self.crm.db.write() as conn:
                conn.execute(sa.update(t).where(t.c.id == row.id).values(seen_at=now))
        return Session(
            id_hash=row.id,
            user=user,
            workspace=row.workspace,
            csrf=row.csrf,
            source=row.source,
            expires_at=row.expires_at,
        )

    def switch(self, session: Session, workspace: str) -> None:
        t = self.table
        with self.crm.db.write() as conn:
            conn.execute(sa.update(t).where(t.c.id == session.id_hash).values(workspace=workspace))

    def end(self, token: str | None) -> None:
        if not token:
            return
        t = self.table
        with self.crm.db.write() as conn:
            conn.execute(sa.delete(t).where(t.c.id == _token_hash(token)))

    def end_id(self, id_hash: str) -> None:
        t = self.table
        with self.crm.db.write() as conn:
            conn.execute(sa.delete(t).where(t.c.id == id_hash))

    def end_all(self, username: str) -> int:
        t = self.table
        with self.crm.db.write() as conn:
            return int(conn.execute(sa.delete(t).where(t.c.username == username)).rowcount)

    def find(self, session_id_hash: str) -> bool:
        t = self.table
        with self.crm.db.read() as conn:
            return conn.execute(sa.select(t.c.id).where(t.c.id == session_id_hash)).first() is not None
