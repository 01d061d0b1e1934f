"""The campaigns plugin's own hook: actions a journey's ``action`` step can call.

Implement it with :data:`ecrm_core.hookimpl` in any plugin::

    from ecrm_core import hookimpl
    from ecrm_campaigns import Action

    class Loyalty:
        @hookimpl
        def campaigns_register_actions(self, crm):
            return [Action(name="loyalty.grant_points", call=grant, description="add points")]

``call(crm, customer_ids, args, campaign, step)`` is called once per group
of customers reaching the step (set-based); an exception fails the group's
tick (retried when the lease expires, with the error recorded on the
enrollments).  The spec is added to the CRM's plugin manager when the
campaigns plugin starts, so plugins that implement it need no import order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from attrs import frozen
from ecrm_core.hookspecs import hookspec

if TYPE_CHECKING:  # pragma: no cover
    from ecrm_core.crm import CRM

__all__ = ["Action", "campaigns_register_actions"]


@frozen(kw_only=True)
class Action:
    """A plugin action for journey steps: ``call(crm, customer_ids, args, campaign, step)``."""

    name: str
    call: Callable[..., Any]
    description: str = ""


@hookspec
def campaigns_register_actions(crm: CRM) -> Sequence[Action] | None:
    """Actions that a campaign's ``action`` step may call, by name.

    :return: a list of :class:`Action`; a name registered twice is an error
        naming both plugins.

    .. versionadded:: 0.1 (ecrm-campaigns)
    """
