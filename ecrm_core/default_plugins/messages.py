"""The core's message purposes (plugin ``core.messages``)."""

from __future__ import annotations

from ecrm_core.channels import Purpose
from ecrm_core.hookspecs import hookimpl

PURPOSES = (
    Purpose(
        name="transactional",
        description="receipts, password resets, order updates: sent without marketing consent",
        transactional=True,
    ),
    Purpose(name="marketing", description="offers, promotions and campaigns"),
)


@hookimpl
def ecrm_register_message_purposes() -> tuple[Purpose, ...]:
    return PURPOSES
