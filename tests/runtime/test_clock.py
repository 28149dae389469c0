"""The agent's steady clock: wall time at start, then monotonic."""

from __future__ import annotations

from agent.runtime.clock import SteadyClock


class Fake:
    """A wall clock that an operator (or NTP) can step, and a monotonic one that only runs."""

    def __init__(self) -> None:
        self.wall_at = 1_800_000_000.0
        self.mono_at = 500.0

    def run(self, seconds: float) -> None:
        self.wall_at += seconds
        self.mono_at += seconds

    def wall(self) -> float:
        return self.wall_at

    def mono(self) -> float:
        return self.mono_at


def test_a_wall_clock_step_does_not_move_it_but_shows_in_wall_time() -> None:
    t = Fake()
    clock = SteadyClock(wall=t.wall, monotonic=t.mono)
    start = clock()
    assert start == t.wall_at
    t.run(10)
    t.wall_at += 3600  # NTP steps the clock an hour forward
    assert clock() - start == 10
    assert clock.to_wall(start) == start + 3600  # what Alertmanager reads
    t.wall_at -= 7200  # and two hours back
    t.run(5)
    assert clock() - start == 15
    assert clock.to_wall(clock()) == t.wall_at


def test_it_never_starts_behind_the_journal() -> None:
    t = Fake()
    newest = t.wall_at + 3600  # written before the wall clock was stepped back an hour
    clock = SteadyClock(newest, wall=t.wall, monotonic=t.mono)
    assert clock() == newest
    assert SteadyClock(t.wall_at - 60, wall=t.wall, monotonic=t.mono)() == t.wall_at
