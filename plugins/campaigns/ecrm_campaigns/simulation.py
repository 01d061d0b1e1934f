"""The result of a campaign's simulation (:func:`ecrm_campaigns.simulate.simulate`):
what would enter and be sent, day by day, as JSON (``to_dict``), a chart and a table."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from attrs import field, frozen

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.charts import Chart

__all__ = ["MAX_LISTED", "OfferBudget", "PlannedMessage", "Simulation"]

#: Messages listed in ``to_dict(details=True)`` (all are counted).
MAX_LISTED = 10_000


@frozen(kw_only=True)
class PlannedMessage:
    """One send of the simulation: ``decision`` is ``queue`` (handed to the channel at ``due_at``),
    ``block`` (the pipeline's ``reason``), ``duplicate``, or ``skip`` (the campaign's offer check:
    ``offer_not_live``, ``offer_not_eligible``, ``offer_limit``, ``offer_budget``)."""

    customer_id: int
    step: str
    channel: str
    at: datetime
    decision: str
    reason: str | None = None
    due_at: datetime | None = None
    scheduled: bool = False


@frozen(kw_only=True)
class OfferBudget:
    """An offer of the campaign over the simulation."""

    code: str
    budget: int | None
    used_before: int
    would_use: int
    valid_until: datetime | None
    exhausted_at: datetime | None = None
    skipped: Mapping[str, int] = field(factory=dict)

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else max(self.budget - self.used_before - self.would_use, 0)


@frozen(kw_only=True)
class Simulation:
    """The result of :func:`simulate` (``to_dict`` for JSON, ``chart`` and ``table`` to look at)."""

    campaign: str
    version: int
    start: datetime
    days: int
    entries: tuple[tuple[int, datetime, str], ...]
    messages: tuple[PlannedMessage, ...]
    reached: Mapping[str, int]
    window_delays: Mapping[str, int]
    final: Mapping[str, int]
    offers: tuple[OfferBudget, ...]
    notes: tuple[str, ...]

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)

    def day_of(self, when: datetime) -> int:
        """0 for the first simulated day (``start`` .. ``start + 1 day``), 1 for the next…"""
        return int((when - self.start) // timedelta(days=1))

    def entered_per_day(self) -> list[dict[str, int]]:
        """Per simulated day: entrants by arm."""
        out: list[dict[str, int]] = [{} for _ in range(self.days)]
        for _cid, when, arm in self.entries:
            d = self.day_of(when)
            if 0 <= d < self.days:
                out[d][arm] = out[d].get(arm, 0) + 1
        return out

    def messages_per_day(self) -> dict[str, list[int]]:
        """Per channel, the messages handed to it each simulated day (by when the pipeline would send
        them, after quiet hours)."""
        out: dict[str, list[int]] = {}
        for m in self.messages:
            if m.decision != "queue" or m.due_at is None:
                continue
            d = self.day_of(m.due_at)
            if 0 <= d < self.days:
                out.setdefault(m.channel, [0] * self.days)[d] += 1
        return out

    def blocked(self) -> dict[str, dict[str, int]]:
        """Per send step, the messages that would not go out, by reason (caps, consent, offers…)."""
        out: dict[str, dict[str, int]] = {}
        for m in self.messages:
            if m.decision in ("block", "skip", "duplicate"):
                reason = m.reason or m.decision
                out.setdefault(m.step, {})[reason] = out.setdefault(m.step, {}).get(reason, 0) + 1
        return out

    def quiet_hours(self) -> dict[str, int]:
        """Per send step, the messages that quiet hours would hold back."""
        out: dict[str, int] = {}
        for m in self.messages:
            if m.scheduled:
                out[m.step] = out.get(m.step, 0) + 1
        return out

    def to_dict(self, *, details: bool = False) -> dict[str, Any]:
        """The JSON result; ``details`` adds the first :data:`MAX_LISTED` entries and messages."""
        days = [(self.start + timedelta(days=d)).date().isoformat() for d in range(self.days)]
        entered = self.entered_per_day()
        data: dict[str, Any] = {
            "campaign": self.campaign,
            "version": self.version,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "days": days,
            "entered": [{"day": d, **e} for d, e in zip(days, entered, strict=True)],
            "entered_total": len(self.entries),
            "messages_per_day": self.messages_per_day(),
            "messages_total": sum(1 for m in self.messages if m.decision == "queue"),
            "blocked": self.blocked(),
            "quiet_hours": self.quiet_hours(),
            "window_delays": dict(self.window_delays),
            "reached": dict(self.reached),
            "final": dict(self.final),
            "offers": [
                {
                    "code": o.code,
                    "budget": o.budget,
                    "used_before": o.used_before,
                    "would_use": o.would_use,
                    "remaining": o.remaining,
                    "exhausted_at": o.exhausted_at.isoformat() if o.exhausted_at else None,
                    "valid_until": o.valid_until.isoformat() if o.valid_until else None,
                    "skipped": dict(o.skipped),
                }
                for o in self.offers
            ],
            "notes": list(self.notes),
        }
        if details:
            data["entries"] = [
                {"customer_id": c, "at": w.isoformat(), "arm": a} for c, w, a in self.entries[:MAX_LISTED]
            ]
            data["messages"] = [
                {
                    "customer_id": m.customer_id,
                    "step": m.step,
                    "channel": m.channel,
                    "at": m.at.isoformat(),
                    "decision": m.decision,
                    "reason": m.reason,
                    "due_at": m.due_at.isoformat() if m.due_at else None,
                }
                for m in self.messages[:MAX_LISTED]
            ]
        return data

    def chart(self) -> Chart:
        """Entrants and messages per channel, per simulated day (``ecrm_core.charts``)."""
        from ecrm_core.charts import Chart, Series

        days = [(self.start + timedelta(days=d)).strftime("%m-%d") for d in range(self.days)]
        series = [Series(name="entered", values=[float(sum(e.values())) for e in self.entered_per_day()])]
        for channel, counts in sorted(self.messages_per_day().items()):
            series.append(Series(name=f"{channel} messages", values=[float(n) for n in counts]))
        total = sum(1 for m in self.messages if m.decision == "queue")
        blocked = sum(sum(v.values()) for v in self.blocked().values())
        return Chart(
            kind="line",
            title=f"{self.campaign}: the next {self.days} days (simulated)",
            categories=days,
            series=series[:24],
            x_label="day",
            y_label="customers / messages",
            caption=(
                f"{len(self.entries)} would enter and {total} messages would go out; "
                f"{blocked} would be held back (caps, consent, offers)."
            )[:500],
        )

    def table(self) -> Any:
        """A rich renderable: entrants and messages per day, then what bites."""
        from rich.console import Group
        from rich.table import Table

        per_channel = self.messages_per_day()
        t = Table(
            title=f"{self.campaign} (version {self.version}): simulated {self.days} days from {self.start:%Y-%m-%d %H:%M} UTC"
        )
        t.add_column("day")
        t.add_column("entered", justify="right")
        t.add_column("held out", justify="right")
        for ch in sorted(per_channel):
            t.add_column(ch, justify="right")
        for d, e in enumerate(self.entered_per_day()):
            row = [(self.start + timedelta(days=d)).strftime("%Y-%m-%d"), str(sum(e.values()) - e.get("holdout", 0))]
            row.append(str(e.get("holdout", 0)))
            row += [str(per_channel[ch][d]) for ch in sorted(per_channel)]
            t.add_row(*row)
        parts: list[Any] = [t]
        bites = Table(title="what holds messages back")
        bites.add_column("step")
        bites.add_column("reason")
        bites.add_column("messages", justify="right")
        for step, reasons in sorted(self.blocked().items()):
            for reason, n in sorted(reasons.items()):
                bites.add_row(step, reason, str(n))
        for step, n in sorted(self.quiet_hours().items()):
            bites.add_row(step, "quiet hours (delayed)", str(n))
        for step, n in sorted(self.window_delays.items()):
            bites.add_row(step, "send window (delayed)", str(n))
        if bites.row_count:
            parts.append(bites)
        if self.offers:
            o = Table(title="offers")
            for col in ("offer", "budget", "used before", "would use", "remaining", "runs out", "skipped"):
                o.add_column(col)
            for b in self.offers:
                o.add_row(
                    b.code,
                    "-" if b.budget is None else str(b.budget),
                    str(b.used_before),
                    str(b.would_use),
                    "-" if b.remaining is None else str(b.remaining),
                    b.exhausted_at.strftime("%Y-%m-%d %H:%M") if b.exhausted_at else "-",
                    ", ".join(f"{k}={v}" for k, v in sorted(b.skipped.items())) or "-",
                )
            parts.append(o)
        parts += [f"[dim]{n}[/]" for n in self.notes]
        return Group(*parts)
