"""API keys: per workspace, stored hashed, scoped, revocable and rotatable.

A key is a bearer token ``ecrm_<key_id>_<secret>``.  ``key_id`` is public
(it is how a key is listed, revoked and looked up); the secret is 256
random bits of which only the SHA-256 is stored, compared with
:func:`hmac.compare_digest`.  The whole token is shown once, by
:meth:`Keys.create` / :meth:`Keys.rotate`, and cannot be recovered.

Scopes: ``read`` (GET), ``write`` (create, change, delete), ``ingest``
(tracking: interactions and the Segment-spec endpoints) and ``admin``
(everything, including keys).  A Segment/RudderStack *write key* is an
``ingest`` key, sent as the Basic-auth user name.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import attrs
import sqlalchemy as sa
from ecrm_core.errors import NotFound, ValidationError
from ecrm_core.validation import check_slug, check_text

from .schema import TABLE

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["SCOPES", "ApiKey", "Keys", "NewKey"]

#: Every scope a key can have.
SCOPES = ("read", "write", "ingest", "admin")
_PREFIX = "ecrm_"
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


@attrs.frozen
class ApiKey:
    """A stored key (never with its secret)."""

    key_id: str
    workspace: str
    name: str
    scopes: frozenset[str]
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    rotated_from: str | None = None

    def allows(self, scope: str) -> bool:
        """Whether the key grants ``scope`` (``admin`` grants every scope)."""
        return scope in self.scopes or "admin" in self.scopes

    def active(self, now: datetime) -> bool:
        """Not revoked and not expired at ``now``."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or self.expires_at > now


@attrs.frozen
class NewKey:
    """A key just created: :attr:`token` is shown this once and never again."""

    key: ApiKey
    token: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _scopes(value: Iterable[str] | str) -> frozenset[str]:
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
    if not items:
        raise ValidationError("scopes", value, "no scope given", f"give one or more of {', '.join(SCOPES)}")
    for s in items:
        if s not in SCOPES:
            raise ValidationError("scopes", s, "unknown scope", f"use {', '.join(SCOPES)}")
    return frozenset(items)


def parse_token(token: str) -> tuple[str, str] | None:
    """Split ``ecrm_<key_id>_<secret>`` into ``(key_id, secret)``; ``None`` if malformed."""
    if not isinstance(token, str) or not token.startswith(_PREFIX) or len(token) > 200:
        return None
    key_id, sep, secret = token[len(_PREFIX) :].partition("_")
    if not sep or not key_id or not secret or not key_id.isalnum():
        return None
    return key_id, secret


class Keys:
    """``Keys(crm)``: create, list, revoke, rotate and check API keys.

    Works across workspaces (a key names its own); :meth:`create` takes the
    workspace.  Successful lookups are cached for ``cache_seconds`` (default
    2 s) so a busy API does not read the table on every request; revoking
    through this object drops its cache at once, a revocation made by
    another process is seen within ``cache_seconds``.
    """

    def __init__(self, crm: CRM, *, cache_seconds: float = 2.0) -> None:
        self.crm = crm
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, ApiKey]] = {}
        self._lock = threading.Lock()

    @property
    def table(self) -> sa.Table:
        return self.crm.db.tables[TABLE]

    # ------------------------------------------------------------------
    def create(
        self,
        name: str,
        *,
        scopes: Iterable[str] | str = ("read",),
        workspace: str | None = None,
        expires_at: datetime | None = None,
        rotated_from: str | None = None,
    ) -> NewKey:
        """Create a key and return it with its token (shown once)."""
        name = check_text(name, "name", max_length=200)
        ws = check_slug(workspace or self.crm.workspace, "workspace", "workspace id")
        wanted = _scopes(scopes)
        if expires_at is not None and (expires_at.tzinfo is None):
            raise ValidationError("expires_at", expires_at, "naive datetime", "give a timezone-aware time")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        now = self.crm.now()
        self.crm.db.check_schema()
        with self.crm.db.write() as conn:
            conn.execute(
                sa.insert(self.table).values(
                    key_id=key_id,
                    workspace_id=ws,
                    name=name,
                    secret_hash=_hash(secret),
                    scopes=",".join(sorted(wanted)),
                    created_at=now,
                    expires_at=expires_at,
                    rotated_from=rotated_from,
                )
            )
        key = ApiKey(key_id, ws, name, wanted, now, expires_at, None, rotated_from)
        return NewKey(key, f"{_PREFIX}{key_id}_{secret}")

    def _from_row(self, r: sa.Row[tuple[object, ...]]) -> ApiKey:
        m = r._mapping
        return ApiKey(
            key_id=m["key_id"],
            workspace=m["workspace_id"],
            name=m["name"],
            scopes=frozenset(m["scopes"].split(",")),
            created_at=m["created_at"],
            expires_at=m["expires_at"],
            revoked_at=m["revoked_at"],
            rotated_from=m["rotated_from"],
        )

    def list(self, *, workspace: str | None = None, include_revoked: bool = False) -> list[ApiKey]:
        """Keys of a workspace (default: the CRM's), oldest first.

        Without ``include_revoked``: the keys that still work (a rotated key
        is listed until its grace period ends)."""
        t = self.table
        ws = check_slug(workspace or self.crm.workspace, "workspace", "workspace id")
        q = sa.select(t).where(t.c.workspace_id == ws).order_by(t.c.id)
        if not include_revoked:
            q = q.where(sa.or_(t.c.revoked_at.is_(None), t.c.revoked_at > self.crm.now()))
        self.crm.db.check_schema()
        with self.crm.db.read() as conn:
            return [self._from_row(r) for r in conn.execute(q)]

    def get(self, key_id: str) -> ApiKey:
        t = self.table
        with self.crm.db.read() as conn:
            row = conn.execute(sa.select(t).where(t.c.key_id == key_id)).first()
        if row is None:
            raise NotFound("api key", key_id)
        return self._from_row(row)

    def revoke(self, key_id: str, *, at: datetime | None = None) -> ApiKey:
        """Revoke a key now (or at ``at``, for a rotation's grace period)."""
        key = self.get(key_id)
        when = at or self.crm.now()
        with self.crm.db.write() as conn:
            conn.execute(sa.update(self.table).where(self.table.c.key_id == key_id).values(revoked_at=when))
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if v[1].key_id != key_id}
        return attrs.evolve(key, revoked_at=when)

    def rotate(self, key_id: str, *, grace: timedelta = timedelta(0)) -> NewKey:
        """A new key with the same workspace, name and scopes; the old one is
        revoked after ``grace`` (0: at once) so clients can switch over."""
        old = self.get(key_id)
        if old.revoked_at is not None and old.revoked_at <= self.crm.now():
            raise ValidationError("key_id", key_id, "key is revoked", "create a new key with `ecrm keys create`")
        new = self.create(
            old.name, scopes=old.scopes, workspace=old.workspace, expires_at=old.expires_at, rotated_from=key_id
        )
        self.revoke(key_id, at=self.crm.now() + grace)
        return new

    # ------------------------------------------------------------------
    def cached(self, token: str) -> tuple[bool, ApiKey | None]:
        """``(True, key or None)`` when the cache can answer for ``token`` without a read."""
        hit = self._cache.get(_digest(token))
        if hit is None or hit[0] <= time.monotonic():
            return False, None
        return True, hit[1] if hit[1].active(self.crm.now()) else None

    def authenticate(self, token: str) -> ApiKey | None:
        """The active key for ``token``, or ``None`` (unknown, wrong, revoked, expired)."""
        known, key = self.cached(token)
        if known:
            return key
        parsed = parse_token(token)
        now = self.crm.now()
        digest = _digest(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        t = self.table
        with self.crm.db.read() as conn:
            row = conn.execute(sa.select(t).where(t.c.key_id == key_id)).first()
        stored = row._mapping["secret_hash"] if row is not None else _DUMMY_HASH
        ok = hmac.compare_digest(_hash(secret), stored)
        if row is None or not ok:
            return None
        key = self._from_row(row)
        if not key.active(now):
            return None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (time.monotonic() + self.cache_seconds, key)
        return key
