"""Seeded deterministic simulation of the core (FASM style), with crash + restore injected.

After every step: each tracked action is pending or completed exactly once; restore(state)
emits exactly the pending set; a replica fed the journaled (encoded, decoded) inputs holds an
equal state; a domain that emits effects is broken; no unit has two jobs in flight; an eager
twin that takes none of step's shortcuts (full_step) and whose Ticks visit every service (not
only the busy ones whose deadline came, see core/due.py) decides the same.
Same seed, same run: a failure prints the seed and step to reproduce it.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import pytest
from immutables import Map

from agent.core.actions import RunEffect, TrackedAction, UnitJob, is_tracked
from agent.core.draft import evolve
from agent.core.inputs import (
    ActionCompleted,
    GoalsLoaded,
    GoalsRejected,
    Input,
    OperatorCommand,
    ProbeResult,
    Tick,
    UnitObserved,
)
from agent.core.spec import AlertSink, DomainSpec, Effect, GoalSet, StateVar, Transition
from agent.core.state import State
from agent.core.step import full_step, restore, step
from agent.journal import codec
from tests.corekit import http_probe, policy, routing_domain, service

STEPS = int(os.environ.get("SETPOINT_SIM_STEPS", "10000"))
UNIT_STATES = [
    ("active", "running"),
    ("activating", "start"),
    ("activating", "auto-restart"),
    ("deactivating", "stop-sigterm"),
    ("inactive", "dead"),
    ("failed", "failed"),
]


def _counter_domain() -> DomainSpec:
    """A domain with an effect-less transition and one whose effect may fail."""
    return DomainSpec(
        name="Warmup",
        variables=(
            StateVar("web_up", "bool", False, bind='services["web"].state == "Running"'),
            StateVar("warmed", "bool", False),
            StateVar("announced", "bool", False),
        ),
        goal="!web_up || (warmed && announced)",
        transitions=(
            Transition("Warm", "web_up && !warmed", (), (("warmed", True),)),
            Transition(
                "Announce",
                "web_up && !announced",
                (Effect("exec", argv=("announce",)),),
                (("announced", True),),
                retry_after=2,
            ),
            Transition("Cool", "!web_up && warmed", (), (("warmed", False), ("announced", False))),
        ),
    )


def goal_sets() -> list[GoalSet]:
    fast = policy(backoff_initial=0.5, limit=4, window=30, stable_for=10)
    base = (
        service("db-primary", restart=fast),
        service("db", restart=fast),
        service("web", probes=("web-hz",), depends_on=("db",), restart=fast),
        service("worker", depends_on=("web",)),
        service("batch", desired="stopped"),
        service("legacy", desired="unmanaged"),
    )
    probes = (http_probe("web-hz", failures=2, successes=2, start_period=1),)
    sinks = (AlertSink("pager", "webhook", url="http://x", repeat_interval=20),)
    first = GoalSet(
        services=base, probes=probes, domains=(routing_domain(), _counter_domain()),
        sinks=sinks, digest="a",
    )  # fmt: skip
    changed = (*base[:3], service("worker", depends_on=("web",), restart=fast), service("extra"))
    second = GoalSet(services=changed, probes=probes, domains=(routing_domain(),), digest="b")
    return [first, second]


@dataclass
class World:
    """The simulated outside: what is in flight, what completed, the journal's view."""

    rng: random.Random
    goals: list[GoalSet]
    state: State = field(default_factory=State)
    replica: State = field(default_factory=State)
    eager: State = field(default_factory=State)
    now: float = 0.0
    outstanding: dict[int, TrackedAction] = field(default_factory=dict)
    emitted: dict[int, TrackedAction] = field(default_factory=dict)
    completed: set[int] = field(default_factory=set)

    def next_input(self) -> Input:
        r = self.rng.random()
        self.now += self.rng.choice([0.0, 0.01, 0.1, 0.5, 1.0, 3.0])
        units = [s.unit for s in self.state.goals.services] or ["web.service"]
        if r < 0.30:
            active, sub = self.rng.choice(UNIT_STATES)
            load = "not-found" if self.rng.random() < 0.02 else "loaded"
            return UnitObserved(self.rng.choice(units), active, sub, self.now, load=load)
        if r < 0.45:
            ok = self.rng.random() < 0.6
            return ProbeResult("web-hz", ok, self.rng.random() / 5, self.now, "" if ok else "500")
        if r < 0.75 and self.outstanding:
            return self._completion()
        if r < 0.80:
            cmd = self.rng.choice(["maintenance_on", "maintenance_off", "reset", "resync"])
            target = self.rng.choice(["", "web", "db", "nope"])
            return OperatorCommand(cmd, self.now, target)  # type: ignore[arg-type]
        if r < 0.81:
            return GoalsLoaded(self.rng.choice(self.goals), self.now)
        if r < 0.815:
            return GoalsRejected(("g.yaml:1:1: broken",), self.now)
        return Tick(self.now)

    def _completion(self) -> ActionCompleted:
        action_id = self.rng.choice(sorted(self.outstanding))
        if self.rng.random() < 0.9:
            del self.outstanding[action_id]  # else: a duplicate delivery later
        roll = self.rng.random()
        return ActionCompleted(action_id, roll < 0.75, self.now, "sim", permanent=roll > 0.97)

    def crash(self) -> None:
        """Lose everything in flight; reload the journaled state; restore."""
        self.state = codec.decode(codec.encode(self.state))
        self.replica = self.eager = self.state
        self.outstanding = {a.id: a for a in restore(self.state)}


def check(world: World, before: State, inp: Input, new_actions: list[TrackedAction]) -> None:
    state = world.state
    pending = set(state.pending.keys())
    for action in new_actions:
        assert action.id not in world.emitted, f"action id {action.id} emitted twice"
        world.emitted[action.id] = action
    if isinstance(inp, ActionCompleted) and inp.action_id in before.pending:
        assert inp.action_id not in world.completed, "completed twice"
        world.completed.add(inp.action_id)
    assert pending.isdisjoint(world.completed)
    assert pending | world.completed == set(world.emitted), "an action is neither pending nor done"
    assert [a.id for a in restore(state)] == sorted(pending)
    assert list(restore(state)) == [world.emitted[i] for i in sorted(pending)]
    units = [a.unit for a in state.pending.values() if isinstance(a, UnitJob)]
    assert len(units) == len(set(units)), f"two jobs in flight on one unit: {units}"
    for action in new_actions:
        if isinstance(action, RunEffect):
            assert not state.domains[action.owner.name].satisfied, "a satisfied goal emitted"
    assert world.replica == state, "replaying the journaled input gave another state"


def _all_busy(state: State) -> State:
    """Every service busy and none passed over: the Tick visits the whole fleet."""
    return evolve(state, busy=Map((name, True) for name in state.services), wake=Map())


def simulate(seed: int, steps: int) -> World:
    rng = random.Random(seed)
    world = World(rng, goal_sets())
    world.state, _ = step(world.state, GoalsLoaded(world.goals[0], 0.0))
    world.replica = world.eager = world.state
    for i in range(steps):
        inp = world.next_input()
        before = world.state
        try:
            world.state, actions = step(before, inp)
            world.replica, _ = step(world.replica, codec.decode(codec.encode(inp)))
            world.eager, eager = full_step(_all_busy(world.eager) if isinstance(inp, Tick)
                                           else world.eager, inp)  # fmt: skip
            assert eager == actions, "step's shortcuts changed what was decided"
            assert world.eager == world.state
            new = [a for a in actions if is_tracked(a)]
            world.outstanding.update((a.id, a) for a in new)
            check(world, before, inp, new)
        except AssertionError as err:
            raise AssertionError(f"seed {seed}, step {i}, input {inp}: {err}") from err
        if rng.random() < 0.01:
            world.crash()
    return world


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_simulation_keeps_invariants(seed: int) -> None:
    world = simulate(seed, STEPS // 4)
    assert len(world.emitted) > 50, "the simulation must exercise tracked actions"
    assert world.completed, "the simulation must complete actions"


def test_simulation_is_deterministic() -> None:
    a, b = simulate(7, 500), simulate(7, 500)
    assert a.state == b.state and a.emitted == b.emitted
