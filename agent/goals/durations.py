"""Durations in goal files: `500ms`, `5s`, `10m`, `1h`, `2d`, `1m30s`, or plain seconds."""

from __future__ import annotations

import math
import re

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


def _checked(seconds: float, original: object) -> float:
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"invalid duration {original!r}: {HINT}")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {original!r}")
    return seconds
