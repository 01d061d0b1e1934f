"""The suppression list: addresses a channel must not be used for."""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from typing import Literal

import sqlalchemy as sa

from ...errors import ValidationError
from ...validation import check_slug
from .records import Suppression, _Lookups
from .safety import _short


class _Suppressions(_Lookups):
    """``suppress``, ``unsuppress``, ``suppressions`` and the bulk check the pipeline uses."""

    # -- suppressions ----------------------------------------------------
    def suppress(
        self,
        channel: str,
        address: str,
        *,
        reason: str = "manual",
        scope: Literal["all", "marketing"] = "all",
        detail: str | None = None,
    ) -> None:
        """Put ``address`` on ``channel``'s suppression list.

        ``scope="all"`` blocks every message (hard bounce, a manual block);
        ``"marketing"`` blocks all but transactional ones (a complaint).  An
        existing entry is widened to ``all`` when asked, never narrowed.
        """
        self.ready()
        check_slug(channel, "channel", "channel name")
        check_slug(reason, "reason", "suppression reason")
        if scope not in ("all", "marketing"):
            raise ValidationError("scope", scope, "unknown suppression scope", "use 'all' or 'marketing'")
        if not isinstance(address, str) or not address or len(address) > 320:
            raise ValidationError("address", address, "not an address", "pass the address to suppress")
        with self.db.write() as conn:
            self._suppress(conn, [(channel, address, scope, reason, detail)])

    def _suppress(self, conn: sa.Connection, entries: Iterable[tuple[str, str, str, str, str | None]]) -> int:
        t = self.t("suppressions")
        now = self.crm.now()
        added = 0
        for channel, address, scope, reason, detail in entries:
            address = address.strip().lower() if channel == "email" else address.strip()
            row = conn.execute(
                sa.select(t.c.id, t.c.scope).where(
                    t.c.workspace_id == self.workspace, t.c.channel == channel, t.c.address == address
                )
            ).first()
            if row is None:
                conn.execute(
                    sa.insert(t).values(
                        workspace_id=self.workspace,
                        channel=channel,
                        address=address,
                        scope=scope,
                        reason=reason,
                        detail=_short(detail, 1000),
                        created_at=now,
                    )
                )
                added += 1
            elif row.scope != "all" and scope == "all":
                conn.execute(sa.update(t).where(t.c.id == row.id).values(scope="all", reason=reason, detail=detail))
        return added

    def unsuppress(self, channel: str, address: str) -> bool:
        """Remove ``address`` from the list; ``True`` if it was there."""
        self.ready()
        t = self.t("suppressions")
        address = address.strip().lower() if channel == "email" else address.strip()
        with self.db.write() as conn:
            n = conn.execute(
                sa.delete(t).where(t.c.workspace_id == self.workspace, t.c.channel == channel, t.c.address == address)
            ).rowcount
        return bool(n)

    def suppressions(self, *, channel: str | None = None, limit: int = 1000) -> builtins.list[Suppression]:
        self.ready()
        t = self.t("suppressions")
        q = sa.select(t).where(t.c.workspace_id == self.workspace).order_by(t.c.id.desc()).limit(limit)
        if channel:
            q = q.where(t.c.channel == channel)
        with self.db.read() as conn:
            rows = conn.execute(q).all()
        return [
            Suppression(
                channel=r.channel,
                address=r.address,
                scope=r.scope,
                reason=r.reason,
                detail=r.detail,
                created_at=r.created_at,
            )
            for r in rows
        ]

    def _suppressed(self, conn: sa.Connection, channel: str, addresses: Iterable[str]) -> dict[str, str]:
        """address -> scope for the suppressed ones (one query)."""
        addrs = {a.lower() if channel == "email" else a for a in addresses if a}
        if not addrs:
            return {}
        from ._sql import _Sql

        t = self.t("suppressions")
        sql = _Sql(conn)
        out: dict[str, str] = {}
        ordered = sorted(addrs)
        for i in range(0, len(ordered), 5000):
            among, param = sql.any_of("address", ordered[i : i + 5000], kind="text")
            q = (
                f"SELECT address, scope FROM {sql.name(t)} WHERE workspace_id = {sql.ph} AND channel = {sql.ph} "
                f"AND {among}"
            )
            out.update({a: s for a, s in sql.all(q, (self.workspace, channel, param))})
        return out
