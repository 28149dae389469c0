"""Runtime: the agent's clock: wall time at start-up, advanced by the monotonic clock.

Everything the core measures (time in state, backoff, restart windows, alert `for` durations,
reminders) is a difference of two readings of this clock, so an NTP step or a resumed VM does
not move it. Readings stay close to wall time for display; `to_wall` turns one into the wall
time proper for what other systems read (Alertmanager's startsAt).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SteadyClock:
    """Seconds since the epoch as of start-up, then monotonic. `floor` (the newest time in the
    journal) keeps it from starting behind what was already recorded, should the wall clock
    have been stepped back while the agent was down."""

    def __init__(
        self,
        floor: float = 0.0,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._offset = max(wall(), floor) - monotonic()

    def __call__(self) -> float:
        return self._offset + self._monotonic()

    def to_wall(self, reading: float) -> float:
        """A reading of this clock as the wall clock shows that moment now."""
        return reading + self._wall() - self()
