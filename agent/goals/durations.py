"""Goals: Durations in goal files: `500ms`, `5s`, `10m`, `1h`, `2d`, `1m30s`, or plain seconds."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
PATTERN = r"^\s*(\d+(\.\d+)?(ms|s|m|h|d))+\s*$"
_WHOLE = re.compile(PATTERN)
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
HINT = "use seconds (5, 0.5) or a string like 500ms, 5s, 10m, 1h, 1m30s"


def parse_duration(value: object) -> float:
    """Seconds as a float; raise ValueError with a readable message on anything else."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: {HINT}")
    if isinstance(value, int | float):
        return _checked(float(value), value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration of type {type(value).__name__}: {HINT}")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"duration must not be negative, got {value!r}")
    if _WHOLE.match(text) is None:
        try:
            return _checked(float(text), value)
        except ValueError:
            raise ValueError(f"invalid duration {value[:40]!r}: {HINT}") from None
    return _checked(sum(float(n) * UNITS[u] for n, u in _PART.findall(text)), value)


def within(low: float, high: float) -> Callable[[object], float]:
    """A parser of durations between `low` and `high` seconds (both included)."""

    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if not low <= seconds <= high:
            shown = value if isinstance(value, int | float) else repr(str(value)[:40])
            span = f"between {format_duration(low)} and {format_duration(high)}"
            raise ValueError(f"duration must be {span}, got {shown}")
        return seconds

    return parse


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 0s, 10ms, 5s, 24h, 30d."""
    for unit in ("d", "h", "m", "s"):
        if seconds >= UNITS[unit] and seconds % UNITS[unit] == 0:
            return f"{seconds / UNITS[unit]:g}{unit}"
    return f"{seconds * 1000:g}ms" if seconds else "0s"


def _checked(seconds: float, original: object) -> float:
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"invalid duration {original!r}: {HINT}")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {original!r}")
    return seconds
