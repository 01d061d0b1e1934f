"""The services: ``crm.channels`` (:class:`Channels`) and ``crm.messages`` (:class:`Messages`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ...channels import (
    Channel,
    ChannelConfigError,
    DeliveryPolicy,
    InboundRequest,
    InboundResponse,
)
from ...errors import ValidationError
from .._base import Service

if TYPE_CHECKING:  # pragma: no cover
    from ...registry import ChannelSpec

from .events import _Feedback
from .records import EventReport, InboundResult
from .screen import _Screening

log = logging.getLogger("ecrm.messages")

# ---------------------------------------------------------------------------
# crm.channels
# ---------------------------------------------------------------------------


class Channels(Service):
    """``crm.channels``: the registered channels, their config and inbound routes."""

    def names(self) -> list[str]:
        return sorted(self.crm.registry.channels)

    def spec(self, name: str) -> ChannelSpec:
        from ...crm import _registered

        _registered(name, self.crm.registry.channels, "channel", "channel")
        return self.crm.registry.channels[name]

    def config(self, name: str) -> dict[str, Any]:
        """The channel's settings from ``CRM(channels=...)`` (without ``policy``)."""
        conf = dict(self.crm._shared.channel_config.get(name, {}))
        conf.pop("policy", None)
        return conf

    def policy(self, name: str) -> DeliveryPolicy:
        """The :class:`~ecrm_core.channels.DeliveryPolicy` for ``name``."""
        shared = self.crm._shared
        cache = shared.channels.setdefault("__policies__", {})
        if name not in cache:
            raw = shared.channel_config.get(name, {}).get("policy")
            try:
                cache[name] = DeliveryPolicy.from_config(raw)
            except ValidationError as exc:
                raise exc.at(f"channels.{name}.policy") from None
        policy: DeliveryPolicy = cache[name]
        return policy

    def get(self, name: str) -> Channel:
        """The channel object (built once per CRM, on first use).

        One object serves every workspace: its ``crm`` is a view in the
        workspace the CRM was built for (never in the workspace of whichever
        view happened to ask first).  A channel acting for a message or a
        customer acts in *their* workspace (``crm.messages.locate(id)``,
        ``crm.in_workspace(record.workspace)``), and the events it returns
        are applied in their message's or customer's workspace."""
        shared = self.crm._shared
        channel = shared.channels.get(name)
        if channel is not None:
            return channel  # type: ignore[no-any-return]
        spec = self.spec(name)
        with shared.lock:
            channel = shared.channels.get(name)
            if channel is None:
                root = self.crm._view(db=shared.root_db, workspace=shared.root_workspace or self.crm.workspace)
                try:
                    channel = spec.factory(root)
                except ChannelConfigError:
                    raise
                except (TypeError, ValueError, KeyError) as exc:
                    raise ChannelConfigError(
                        f"channels.{name}: the {spec.plugin or 'channel'} plugin could not build the channel: {exc}"
                    ) from exc
                shared.channels[name] = channel
        return channel  # type: ignore[no-any-return]

    def close_all(self) -> None:
        shared = self.crm._shared
        for name, channel in list(shared.channels.items()):
            if isinstance(channel, Channel):
                try:
                    channel.close()
                except Exception:
                    log.exception("channel %s failed to close", name)
        shared.channels.clear()

    def routes(self) -> list[tuple[str, Any]]:
        """Every channel's inbound routes as ``(channel, InboundRoute)`` pairs."""
        out: list[tuple[str, Any]] = []
        for name in self.names():
            try:
                channel = self.get(name)
            except ChannelConfigError:
                log.warning("channel %s is not configured; its inbound routes are not mounted", name)
                continue
            out.extend((name, r) for r in channel.inbound_routes())
        return out

    def handle_inbound(self, name: str, request: InboundRequest) -> InboundResponse:
        """Let channel ``name`` verify and interpret ``request``, then apply its events.

        Raises :class:`~ecrm_core.channels.InboundRejected` when the request
        is not authentic (nothing is changed then).  Events the core does not
        apply (an unknown message, an address that is not the message's
        recipient…) are logged and ignored; :meth:`receive` reports them.
        """
        return self.receive(name, request).response

    def receive(self, name: str, request: InboundRequest) -> InboundResult:
        """Like :meth:`handle_inbound`, and what became of each event
        (:class:`EventReport`: applied, duplicates, ignored with the reason)."""
        response = self.get(name).handle_inbound(request)
        if not isinstance(response, InboundResponse):
            raise TypeError(
                f"channel {name!r}: handle_inbound returned {type(response).__name__}, not an InboundResponse"
            )
        report = self.crm.messages.apply(response.events) if response.events else EventReport()
        return InboundResult(response=response, events=report)


# ---------------------------------------------------------------------------
# crm.messages
# ---------------------------------------------------------------------------


class Messages(_Screening, _Feedback):
    """``crm.messages``: send through any channel, dispatch, inspect, replay.

    Built from one module per responsibility: :mod:`.records` (lookups),
    :mod:`.suppression`, :mod:`.send` (the decision), :mod:`.screen` (the
    decision without writing), :mod:`.deliver`
    (dispatch and dead letters) and :mod:`.events` (feedback).
    """
