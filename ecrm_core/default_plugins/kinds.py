"""The interaction kinds every ecrm knows (plugin ``core.kinds``)."""

from __future__ import annotations

from ecrm_core.hookspecs import hookimpl
from ecrm_core.registry import InteractionKind

KINDS = (
    InteractionKind(name="purchase", description="an order was paid", sale=True),
    InteractionKind(name="refund", description="money was given back", sale=True),
    InteractionKind(name="page_view", description="a web page was seen"),
    InteractionKind(name="screen_view", description="an app screen was seen"),
    InteractionKind(name="product_view", description="a product page was seen"),
    InteractionKind(name="add_to_cart", description="a product was put in the cart"),
    InteractionKind(name="search", description="the customer searched"),
    InteractionKind(name="signup", description="the customer registered"),
    InteractionKind(name="login", description="the customer signed in"),
    InteractionKind(name="email_sent", description="an e-mail was sent to the customer"),
    InteractionKind(name="email_open", description="an e-mail was opened"),
    InteractionKind(name="click", description="a tracked link was clicked"),
    InteractionKind(name="unsubscribe", description="the customer opted out"),
    InteractionKind(name="complaint", description="the customer complained"),
    InteractionKind(name="inquiry", description="the customer asked a question"),
    InteractionKind(name="offer_shown", description="an offer was presented"),
    InteractionKind(name="offer_accepted", description="an offer was taken up"),
    InteractionKind(name="identify", description="the customer was identified (traits sent)"),
    InteractionKind(name="event", description="a custom event (name in properties['event'])"),
    # The delivery pipeline (crm.messages): one interaction per attempt and per event.
    InteractionKind(name="message_sent", description="a channel accepted a message for the customer"),
    InteractionKind(name="message_deferred", description="a delivery attempt failed temporarily (retried)"),
    InteractionKind(name="message_failed", description="a message could not be delivered (rejected or dead)"),
    InteractionKind(name="message_blocked", description="a message was not sent (consent, suppression, cap)"),
    InteractionKind(name="message_delivered", description="the provider confirmed delivery"),
    InteractionKind(name="message_opened", description="a message was opened or read (non-email channels)"),
    InteractionKind(name="bounce", description="a message bounced"),
    InteractionKind(name="reply", description="the customer replied to a message"),
    InteractionKind(name="resubscribe", description="the customer opted back in"),
)


@hookimpl
def ecrm_register_interaction_kinds() -> tuple[InteractionKind, ...]:
    return KINDS
