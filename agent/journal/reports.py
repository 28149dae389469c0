"""Journal: What `history` shows of an entry, as text or JSON; and the one timestamp format.

An entry as text, its input then one line per action:

    2024-05-01T12:00:00.250+00:00 #42 UnitObserved active=failed at=1714564800.25 ...
        -> UnitJob id=7 op=restart service=web unit=web.service

As JSON (`history --json`), every field, with "time" beside "at".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.core.actions import Action
from agent.core.inputs import Input
from agent.journal import codec


def utc_iso(at: float, *, z: bool = False) -> str:
    """`at` (seconds since the epoch) in ISO 8601, UTC, to the millisecond:
    `1970-01-01T00:00:00.000+00:00`, or `...000Z` with `z` (RFC 3339 as Alertmanager wants it)."""
    text = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z") if z else text


@dataclass(frozen=True)
class HistoryRow:
    """An entry as `history` returns it."""

    seq: int
    at: float
    input: Input
    actions: tuple[Action, ...]
    completed: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly: every field, dataclasses as dicts with a "type"."""
        return {
            "seq": self.seq,
            "at": self.at,
            "time": utc_iso(self.at),
            "input": codec.plain(self.input),
            "actions": codec.plain(self.actions),
            "completed": list(self.completed),
        }

    def __str__(self) -> str:
        text = f"{utc_iso(self.at)} #{self.seq} {brief(self.input)}"
        for action in self.actions:
            text += f"\n    -> {brief(action)}"
        return text


def brief(obj: object) -> str:
    """`Name field=value ...`: the fields that differ from their defaults, values shortened."""
    fields = json.loads(codec.encode(obj))
    kind = fields.pop("_t", type(obj).__name__)
    return " ".join([kind, *(f"{k}={short(v)}" for k, v in fields.items())])


def short(value: Any, limit: int = 60) -> str:
    """A field value in at most `limit` characters; a nested dataclass as `Name(...)`."""
    if isinstance(value, dict) and "_t" in value:
        return f"{value['_t']}(...)"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
