"""Adapters / mqtt: The committed state as retained MQTT messages, computed incrementally.

    setpoint/<host>/services/<name>   {"lifecycle", "active", "sub", "health", "reason", ...}
    setpoint/<host>/domains/<name>    {"satisfied", "values", "error"}
    setpoint/<host>/routes/<group>    {"route", "applied", "switches"}

`Projection.changes(state)` yields only topics whose payload changed since the last call; it
skips a whole map when its identity is unchanged and each entry whose object is unchanged, so
a batch that touches one service costs one comparison per service, not one JSON document each.
A name that disappears yields an empty payload (which clears a retained message). With Home
Assistant discovery on (.discovery), the services' discovery configs follow the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from agent.adapters.mqtt.discovery import Discovery
from agent.core.state import DomainState, GroupState, ServiceState, State

Render = Callable[[Any], bytes]


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def service_doc(svc: ServiceState) -> bytes:
    """A service's retained payload (with its phase, where the service declares phases)."""
    phase = getattr(svc, "phase", "")
    return _dump({
        "lifecycle": svc.lifecycle, "active": svc.active, "sub": svc.sub, "health": svc.health,
        "reason": svc.reason, "since": svc.since, "maintenance": svc.maintenance,
        **({"phase": phase} if phase else {}),
    })  # fmt: skip


def domain_doc(dom: DomainState) -> bytes:
    """A domain's retained payload."""
    return _dump(
        {"satisfied": dom.satisfied, "values": dict(dom.values.items()), "error": dom.error}
    )


def route_doc(group: GroupState) -> bytes:
    """A failover group's retained payload."""
    return _dump({"route": group.route, "applied": group.applied, "switches": group.switches})


class _Table:
    """Last published payload per name for one kind of entry."""

    def __init__(self, prefix: str, render: Render) -> None:
        self.prefix = prefix
        self.render = render
        self.last: object = None
        self.seen: dict[str, tuple[object, bytes]] = {}

    def changes(self, current: Any) -> Iterator[tuple[str, bytes]]:
        if current is self.last:
            return
        seen = self.seen
        for name, obj in current.items():
            old = seen.get(name)
            if old is not None and old[0] is obj:
                continue
            payload = self.render(obj)
            seen[name] = (obj, payload)
            if old is None or old[1] != payload:
                yield f"{self.prefix}/{name}", payload
        if len(seen) > len(current):
            for name in [n for n in seen if n not in current]:
                del seen[name]
                yield f"{self.prefix}/{name}", b""
        self.last = current


class Projection:
    """Turns successive committed states into retained-topic updates."""

    def __init__(self, prefix: str, discovery: Discovery | None = None) -> None:
        self._discovery = discovery
        self._services = _Table(f"{prefix}/services", service_doc)
        self._domains = _Table(f"{prefix}/domains", domain_doc)
        self._routes = _Table(f"{prefix}/routes", route_doc)

    def changes(self, state: State) -> list[tuple[str, bytes]]:
        """(topic, payload) for every entry that changed since the previous call."""
        found = list(self._discovery.changes(state.services)) if self._discovery else []
        return [
            *found,
            *self._services.changes(state.services),
            *self._domains.changes(state.domains),
            *self._routes.changes(state.groups),
        ]
