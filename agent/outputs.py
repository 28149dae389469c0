"""Wiring of the agent's outward channels: alert sinks, the MQTT link and their lanes."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.lanes import RetryPolicy
from agent.mqtt import MqttLink, no_broker
from agent.mqtt_config import MqttConfig
from agent.runtime import Runtime
from agent.sinks import Sinks

ALERT_RETRY = RetryPolicy(attempts=5, initial=0.5, maximum=8.0, deadline=30.0)
"""A sink still down after this is reported failed; the core sends again 30 s later."""
MQTT_RETRY = RetryPolicy(attempts=5, initial=0.5, maximum=8.0, deadline=30.0)


@dataclass
class Outputs:
    """What `wire` set up; the daemon runs `mqtt.run` and closes `sinks` at the end."""

    sinks: Sinks
    mqtt: MqttLink | None


def wire(
    rt: Runtime,
    mqtt: MqttConfig | None,
    hostname: str = "",
    *,
    http_port: int = 9477,
    clock: Callable[[], float] = time.time,
) -> Outputs:
    """Register the `alert:*`, `alert` and `mqtt` lanes; feed committed state to MQTT.

    `hostname` (default: the machine's) names the host in topics and alert labels.
    """
    hostname = hostname or socket.gethostname()
    generator_url = f"http://{hostname}:{http_port}/api/v1/status"
    link = None
    if mqtt is not None:
        link = MqttLink(
            mqtt,
            hostname,
            submit=rt.submit,
            services=lambda: set(rt.state.services.keys()),
            clock=clock,
        )
        rt.on_commit.append(link.on_commit)
        link.on_commit(rt.state)
    sinks = Sinks(
        lambda: rt.state.goals.sinks, hostname, mqtt=link, generator_url=generator_url, clock=clock
    )
    rt.lanes.register("alert:", sinks.send, ALERT_RETRY)
    rt.lanes.register("alert", sinks.effect, ALERT_RETRY)
    rt.lanes.register("mqtt", link.effect if link is not None else no_broker, MQTT_RETRY)
    return Outputs(sinks, link)
