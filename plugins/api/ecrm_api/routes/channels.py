"""``/channels/<channel>/<route>``: the public inbound routes of every channel.

Each channel declares :class:`~ecrm_core.channels.InboundRoute` objects
(receipts, bounces, unsubscribe and tracking links…); this module mounts
them, turns the HTTP request into a framework-neutral
:class:`~ecrm_core.channels.InboundRequest`, and lets
``crm.channels.handle_inbound`` verify it and apply its events.  The routes
are public (no API key): each handler checks a signature or a signed token
itself, and answers 4xx without changing anything when it does not verify.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from litestar import Request, Response, route
from litestar.concurrency import sync_to_thread

from ..problems import problem

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["channel_handlers"]

#: Bodies of inbound requests are small (webhooks, forms); refuse more.
MAX_INBOUND_BODY = 1024 * 1024


def _path(channel: str, name: str) -> str:
    return f"/channels/{channel}/" + re.sub(r"\{(\w+)\}", r"{\1:str}", name)


def channel_handlers(crm: CRM) -> list[Any]:
    """One Litestar handler per (channel, inbound route) the channels declare."""
    from ecrm_core.channels import InboundRejected, InboundRequest

    handlers: list[Any] = []
    for channel_name, spec in crm.channels.routes():

        def make(channel_name: str = channel_name, spec: Any = spec) -> Any:
            async def inbound(request: Request[Any, Any, Any]) -> Response[bytes]:
                body = await request.body()
                if len(body) > MAX_INBOUND_BODY:
                    raise problem(413, "too-large", "Request body too large", f"send at most {MAX_INBOUND_BODY} bytes")
                ctype = request.headers.get("content-type", "")
                form: dict[str, str] = {}
                if ctype.startswith("application/x-www-form-urlencoded"):
                    try:
                        form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200))
                    except (UnicodeDecodeError, ValueError):
                        raise problem(400, "bad-form", "Malformed form", "send a UTF-8 url-encoded form") from None
                inbound_request = InboundRequest(
                    route=spec.name,
                    method=request.method,
                    params={k: str(v) for k, v in request.path_params.items()},
                    query={k: str(v) for k, v in request.query_params.items()},
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=body,
                    form=form,
                )
                try:
                    answer = await sync_to_thread(crm.channels.handle_inbound, channel_name, inbound_request)
                except InboundRejected as exc:
                    raise problem(exc.status, "inbound-rejected", "Inbound request rejected", exc.reason) from None
                content = answer.body.encode("utf-8") if isinstance(answer.body, str) else answer.body
                return Response(
                    content=content,
                    status_code=answer.status,
                    media_type=answer.content_type,
                    headers=dict(answer.headers),
                )

            return route(
                _path(channel_name, spec.name),
                http_method=list(spec.methods),
                name=f"channel:{channel_name}:{spec.name}",
                summary=f"{channel_name}: {spec.name}",
                description=spec.description or f"An inbound route of the {channel_name} channel.",
                tags=["channels"],
                opt={
                    "public": "a channel's inbound route: it verifies its own signature or signed token",
                    "allow_unknown_query": True,
                },
            )(inbound)

        handlers.append(make())
    return handlers
