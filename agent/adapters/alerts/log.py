"""Adapters / alerts: Alert delivery. Without configured sinks, an alert effect goes to the agent's
log (at WARNING, or ERROR for critical ones), the way monit reports when no mail server is set.
"""

from __future__ import annotations

import logging

from agent.core.actions import RunEffect, TrackedAction
from agent.errors import PermanentError

log = logging.getLogger("setpoint.alert")


async def log_alert(action: TrackedAction) -> str:
    """Deliver an alert effect to the log."""
    if not isinstance(action, RunEffect) or action.effect.kind != "alert":
        raise PermanentError(f"action {action.id} is not an alert effect")
    effect = action.effect
    level = logging.ERROR if effect.severity == "critical" else logging.WARNING
    log.log(level, "ALERT %s: %s (%s, %s)", effect.severity, effect.summary, action.owner,
            action.reason)  # fmt: skip
    return "logged (no alert sinks configured)"
