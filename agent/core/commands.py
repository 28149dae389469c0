"""Core: the operator command vocabulary and the check of a command request (pure).

The control socket, the HTTP API and MQTT all speak it; none of them owns it.
"""

from __future__ import annotations

import json
from typing import get_args

from agent.core.inputs import Command

COMMANDS: tuple[str, ...] = get_args(Command)


def parse(body: bytes, services: set[str]) -> tuple[Command, str]:
    """Validate a command request; ValueError says what is wrong."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"body is not JSON: {err}") from None
    if not isinstance(doc, dict):
        raise ValueError("body must be a JSON object")
    unknown = sorted(set(doc) - {"command", "service"})
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    command, service = doc.get("command"), doc.get("service", "")
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {', '.join(COMMANDS)}; got {command!r}")
    if not isinstance(service, str) or (service and service not in services):
        raise ValueError(f"no service named {service!r}")
    return command, service
