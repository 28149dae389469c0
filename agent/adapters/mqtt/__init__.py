"""Adapters / MQTT: the broker link, the state projection, commands and their options.

The link (and with it aiomqtt and paho, ~10 MB) is imported only by an agent given --mqtt-url;
`no_broker` is the `mqtt` lane of one that was not.
"""

from __future__ import annotations

from agent.core.actions import TrackedAction
from agent.errors import PermanentError


async def no_broker(action: TrackedAction) -> str:
    """The `mqtt` lane when no broker is configured."""
    raise PermanentError(f"action {action.id}: no MQTT broker configured (setpoint run --mqtt-url)")
