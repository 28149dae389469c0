"""Adapters / mqtt: Home Assistant MQTT discovery (opt-in, `--mqtt-discovery`).

One device per host; per service a binary_sensor (running) and a sensor (lifecycle state, with
the phase when there is one), both reading the service's retained state topic through a
value_template, every field of it as attributes, and available while the agent's
`setpoint/<host>/status` says online (it is the last will). Configs are retained, on

    <prefix>/binary_sensor/setpoint_<host>/<service>_running/config
    <prefix>/sensor/setpoint_<host>/<service>_state/config

and cleared (an empty retained payload, which removes the entity) when a service leaves the
goals. Node and object ids keep [a-zA-Z0-9_-] only, as discovery requires.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from agent import __version__

DEFAULT_PREFIX = "homeassistant"
RUNNING_TEMPLATE = "{{ 'ON' if value_json.lifecycle == 'Running' else 'OFF' }}"
STATE_TEMPLATE = (
    "{{ value_json.lifecycle }}"
    "{% if value_json.phase is defined and value_json.phase %} ({{ value_json.phase }}){% endif %}"
)


def ident(name: str) -> str:
    """`name` as a discovery node or object id: [a-zA-Z0-9_-] only. Pure."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)


class Discovery:
    """The discovery configs for the current services, and what to publish when they change."""

    def __init__(self, prefix: str, hostname: str, base: str) -> None:
        self.prefix = prefix.strip("/") or DEFAULT_PREFIX
        self.node = f"setpoint_{ident(hostname)}"
        self.hostname = hostname
        self.base = base
        self._published: set[str] = set()
        self._last: object = None

    def device(self) -> dict[str, Any]:
        """This host's device: every entity of the agent belongs to it."""
        return {"identifiers": [self.node], "name": f"Setpoint {self.hostname}",
                "manufacturer": "Setpoint", "model": "setpoint agent",
                "sw_version": __version__}  # fmt: skip

    def topics(self, service: str) -> tuple[str, str]:
        """The binary_sensor's and the sensor's config topics."""
        obj = ident(service)
        return (
            f"{self.prefix}/binary_sensor/{self.node}/{obj}_running/config",
            f"{self.prefix}/sensor/{self.node}/{obj}_state/config",
        )

    def configs(self, service: str) -> list[tuple[str, dict[str, Any]]]:
        """(topic, config) of the two entities of `service`."""
        running, state = self.topics(service)
        common = {
            "state_topic": f"{self.base}/services/{service}",
            "json_attributes_topic": f"{self.base}/services/{service}",
            "availability_topic": f"{self.base}/status",
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": self.device(),
            "origin": {"name": "Setpoint", "sw_version": __version__},
        }
        uid = f"{self.node}_{ident(service)}"
        return [
            (running, {**common, "name": f"{service} running", "unique_id": f"{uid}_running",
                       "device_class": "running", "value_template": RUNNING_TEMPLATE,
                       "payload_on": "ON", "payload_off": "OFF"}),
            (state, {**common, "name": f"{service} state", "unique_id": f"{uid}_state",
                     "value_template": STATE_TEMPLATE, "icon": "mdi:state-machine"}),
        ]  # fmt: skip

    def changes(self, services: Mapping[str, object]) -> Iterator[tuple[str, bytes]]:
        """Configs of services new since the last call, empty payloads for those gone."""
        if services is self._last:
            return
        self._last = services
        names = set(services.keys())
        for name in sorted(names - self._published):
            for topic, config in self.configs(name):
                yield topic, json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        for name in sorted(self._published - names):
            for topic in self.topics(name):
                yield topic, b""
        self._published = names
