"""Ticks over an idle fleet: 10,000 services Running and quiet, one Tick a second. A Tick visits
only the services with time-driven work left (core/due.py); the same Tick visiting every
service, as before, is measured in the same run for the ratio. Target: under 1% of a core."""

from __future__ import annotations

import time

from immutables import Map

from agent.core.draft import evolve
from agent.core.inputs import GoalsLoaded, Tick, UnitObserved
from agent.core.spec import GoalSet
from agent.core.state import State
from agent.core.step import step
from tests.corekit import service

SERVICES = 10_000
TICKS = 200


def idle_fleet() -> State:
    """Every service observed running, then one Tick: what the agent holds on a quiet host."""
    goals = GoalSet(services=tuple(service(f"svc{i}") for i in range(SERVICES)), digest="idle")
    state, _ = step(State(), GoalsLoaded(goals, 0.0))
    for i in range(SERVICES):
        state, _ = step(state, UnitObserved(f"svc{i}.service", "active", "running", 1.0))
    state, _ = step(state, Tick(2.0))
    return state


def per_tick(state: State, eager: bool) -> float:
    """CPU seconds per Tick (eager: every service visited, as without the busy set)."""
    everyone = Map((name, True) for name in state.services)
    started = time.process_time()
    for n in range(TICKS):
        state, _ = step(evolve(state, busy=everyone) if eager else state, Tick(3.0 + n))
    return (time.process_time() - started) / TICKS


def main() -> None:
    state = idle_fleet()
    lazy, eager = per_tick(state, False), per_tick(state, True)
    print(
        f"idle fleet: {SERVICES:,} services, busy after settling {len(state.busy)}; one Tick "
        f"{lazy * 1e3:.3f} ms CPU = {lazy * 100:.3f}% of a core at 1 Hz (target < 1%); "
        f"visiting every service {eager * 1e3:.1f} ms = {eager * 100:.1f}%; "
        f"ratio {eager / lazy:.0f}x"
    )


if __name__ == "__main__":
    main()
