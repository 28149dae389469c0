"""Adapters: what every lane executor shares at the edge (the action check, HTTP outcomes)."""

from __future__ import annotations

from agent.core.actions import RunEffect, TrackedAction
from agent.errors import PermanentError, TransientError


def effect_action(action: TrackedAction, kind: str) -> RunEffect:
    """`action` as a RunEffect of `kind`; anything else on that lane is a PermanentError."""
    if not isinstance(action, RunEffect) or action.effect.kind != kind:
        raise PermanentError(f"action {action.id} is not a {kind} effect")
    return action


def http_outcome(what: str, status: int, text: str) -> str:
    """The detail of a 2xx answer; 5xx and 429 raise TransientError, any other PermanentError."""
    if status >= 500 or status == 429:
        raise TransientError(f"{what}: HTTP {status}")
    if not 200 <= status < 300:
        raise PermanentError(f"{what}: HTTP {status} {text[:200]}")
    return f"HTTP {status}"


def publish_topic(topic: str, what: str) -> str:
    """`topic` if one may publish to it (not empty, no wildcard); PermanentError otherwise."""
    if not topic or any(c in topic for c in "+#"):
        raise PermanentError(f"{what}: invalid MQTT topic {topic!r} (empty, or a + or # wildcard)")
    return topic
