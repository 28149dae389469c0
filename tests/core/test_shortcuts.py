"""`step`'s shortcuts decide exactly what the full path decides.

`step` returns the state as it is for a probe result or a unit observation that changes nothing
(probes.steady, services.repeats), and its Ticks pass over busy services whose deadline is still
ahead (State.wake, core/due.py). `full_step` takes none of those shortcuts when its Ticks are
given a state without `wake`. Fed the same inputs, both must reach equal states (equal journal
encodings) and emit the same actions: for the bench's two mixes, and for a small fleet with a
failover group and phases, whose probes never take the shortcut. The seeded simulation
(test_simulation.py) checks the same against its own mix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from immutables import Map

from agent.core import probes, services
from agent.core.actions import Action, is_tracked
from agent.core.draft import evolve
from agent.core.inputs import (
    ActionCompleted,
    GoalsLoaded,
    Input,
    ProbeResult,
    Tick,
    UnitObserved,
    input_time,
)
from agent.core.spec import Effect, FailoverGroup, GoalSet, Member, Phase
from agent.core.state import State
from agent.core.step import full_step, step
from agent.journal import codec
from bench import step_bench
from tests.corekit import http_probe, policy, service


def eager(state: State) -> State:
    """The state as a Tick of the full path sees it: every busy service is visited."""
    return evolve(state, wake=Map()) if state.wake else state


@dataclass
class Twin:
    """A `step` for the benches that also takes the full path from the same state, compares,
    and goes on with what `step` returned (equal at every step: equal all along)."""

    shortcuts: int = 0
    passed_over: int = 0
    steps: int = 0
    digests: int = 0

    def __call__(self, state: State, inp: Input) -> tuple[State, tuple[Action, ...]]:
        self._count(state, inp)
        new, actions = step(state, inp)
        full, expected = full_step(eager(state) if isinstance(inp, Tick) else state, inp)
        assert actions == expected, f"step {self.steps}, {inp}: other actions"
        assert same(new, full), f"step {self.steps}, {inp}: another state"
        self.steps += 1
        if self.steps % 1000 == 0:
            assert codec.digest(new) == codec.digest(full), f"step {self.steps}: encodings differ"
            self.digests += 1
        return new, actions

    def _count(self, state: State, inp: Input) -> None:
        if isinstance(inp, Tick):
            spans = state.wake.values()
            self.passed_over += sum(1 for since, until in spans if since <= inp.now < until)
            return
        steady = type(inp) is ProbeResult and probes.steady(state, inp)
        self.shortcuts += steady or (type(inp) is UnitObserved and services.repeats(state, inp))


def same(a: object, b: object) -> bool:
    """`a == b` for core values (State: but for its derived fields), by identity first: two
    states stepped from one share whatever neither step touched."""
    if a is b:
        return True
    if isinstance(a, State) and isinstance(b, State):
        derived = {"busy", "wake", "index"}
        return all(same(v, b.__dict__[k]) for k, v in a.__dict__.items() if k not in derived)
    if isinstance(a, Map) and isinstance(b, Map):
        return len(a) == len(b) and all(k in b and same(v, b[k]) for k, v in a.items())
    return a == b


def check(twin: Twin) -> None:
    assert twin.digests > 0, "the journal encodings were compared"


def test_every_input_a_change_decides_as_the_full_path() -> None:
    twin = Twin()
    step_bench.churn(6_000, stepper=twin)
    check(twin)
    assert twin.passed_over > 0


def test_a_fleet_at_rest_decides_as_the_full_path() -> None:
    twin = Twin()
    step_bench.rest(20_000, stepper=twin)
    check(twin)
    assert twin.shortcuts > 10_000, "most of a fleet at rest changes nothing"
    assert twin.passed_over > 500, "recovered services wait out stable_for unvisited"


PHASES = (
    Phase("Warming", "probes.api_ready.ok && !probes.api_ready.healthy", alert_after=5.0),
    Phase("Serving", "probes.api_ready.healthy"),
)


def grouped() -> GoalSet:
    """Probes a failover group times and phases read, beside plain ones."""
    fast = policy(backoff_initial=0.5, stable_for=5)
    group = FailoverGroup(
        "db", (Member("primary", service="pg"), Member("replica", probes=("replica_hz",))),
        switch_after=2, effects=(Effect("file", path="/run/route"),),
    )  # fmt: skip
    return GoalSet(
        services=(
            service("pg", probes=("pg_hz",), restart=fast),
            service("api", probes=("api_hz",), phases=PHASES, restart=fast, depends_on=("pg",)),
            service("web", probes=("web_hz",), restart=fast),
        ),
        probes=(
            http_probe("pg_hz", failures=2, latency_budget=0.05),
            http_probe("replica_hz", failures=1, latency_budget=0.05),
            http_probe("api_hz", failures=2, start_period=1),
            http_probe("api_ready", successes=2),
            http_probe("web_hz", failures=2, successes=2),
        ),
        groups=(group,),
        digest="grouped",
    )


UNITS = ("pg.service", "api.service", "web.service")
VIEWS = (("active", "running"), ("failed", "failed"), ("activating", "start"))


def mixed(rng: random.Random, n: int) -> list[Input]:
    """Mostly steady checks and repeated views, with failures, slow answers and Ticks."""
    known = dict.fromkeys(UNITS, ("active", "running"))
    out: list[Input] = []
    t = 1.0
    for _ in range(n):
        t += rng.choice((0.01, 0.1, 0.5, 1.0))
        r = rng.random()
        if r < 0.5:
            probe = rng.choice(("pg_hz", "replica_hz", "api_hz", "api_ready", "web_hz"))
            ok = rng.random() < 0.85
            out.append(ProbeResult(probe, ok, rng.choice((0.01, 0.01, 0.2)), t, "" if ok else "x"))
        elif r < 0.8:
            unit = rng.choice(UNITS)
            if rng.random() < 0.2:
                known[unit] = rng.choice(VIEWS)
            out.append(UnitObserved(unit, *known[unit], t, main_pid=UNITS.index(unit) + 10))
        else:
            out.append(Tick(t))
    return out


def test_groups_and_phases_decide_as_the_full_path() -> None:
    twin, rng = Twin(), random.Random(13)
    state, _ = twin(State(), GoalsLoaded(grouped(), 0.0))
    for inp in mixed(rng, 6_000):
        state, actions = twin(state, inp)
        for action in actions:
            if is_tracked(action):  # route effects fail now and then
                done = ActionCompleted(action.id, rng.random() < 0.9, input_time(inp))
                state, _ = twin(state, done)
    check(twin)
    assert twin.shortcuts > 500 and twin.passed_over > 0
