"""Adapters / mqtt: Operator commands over MQTT (`setpoint/<host>/commands`), off unless enabled.

The payload is the control socket's JSON (`{"command": "maintenance_on", "service": "web"}`),
optionally with an `"id"` echoed in the reply. A command runs only when both it and its service
are in the allowlist; a command for the whole agent (no service) needs `*` among the allowed
services, except `resync`, which has no target. Retained messages are refused: a stale retained
command would otherwise run again on every reconnect. MQTT 3.1.1 does not say who published a
message, so the broker's ACL must restrict who may write to the command topic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.core.commands import parse
from agent.core.inputs import Command

MAX_PAYLOAD = 4096


@dataclass(frozen=True)
class CommandPolicy:
    """What may be asked over MQTT."""

    commands: frozenset[str]
    services: frozenset[str]


@dataclass(frozen=True)
class Request:
    """An authorised command."""

    command: Command
    service: str
    id: str | int | None = None


def _id_of(payload: bytes) -> tuple[bytes, str | int | None]:
    """The payload without its correlation id, and the id (None when absent or unreadable)."""
    try:
        doc: Any = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return payload, None
    if not isinstance(doc, dict) or "id" not in doc:
        return payload, None
    ident = doc.pop("id")
    if not isinstance(ident, str | int) or isinstance(ident, bool) or len(str(ident)) > 64:
        raise ValueError("id must be a string or an integer (at most 64 characters)")
    return json.dumps(doc).encode(), ident


def authorise(
    payload: bytes, retained: bool, services: set[str], policy: CommandPolicy
) -> tuple[Request | None, str | int | None, str]:
    """(request, id, "") when allowed; (None, id, why) when malformed or not allowed."""
    if len(payload) > MAX_PAYLOAD:
        return None, None, f"payload larger than {MAX_PAYLOAD} bytes"
    try:
        body, ident = _id_of(payload)
    except ValueError as err:
        return None, None, str(err)
    if retained:
        return None, ident, "retained commands are refused; publish with retain=false"
    try:
        command, service = parse(body, services)
    except ValueError as err:
        return None, ident, str(err)
    if command not in policy.commands:
        return None, ident, f"command {command!r} is not allowed over MQTT"
    if service and service not in policy.services and "*" not in policy.services:
        return None, ident, f"service {service!r} is not allowed over MQTT"
    if not service and command != "resync" and "*" not in policy.services:
        return None, ident, f"{command} for the whole agent needs '*' in the allowed services"
    return Request(command, service, ident), ident, ""


def reply(request: Request | None, ident: str | int | None, error: str) -> bytes:
    """The response document: {ok, error, command, service, id}."""
    doc: dict[str, Any] = {"ok": request is not None, "error": error or None}
    if request is not None:
        doc |= {"command": request.command, "service": request.service}
    if ident is not None:
        doc["id"] = ident
    return json.dumps(doc, sort_keys=True).encode()
