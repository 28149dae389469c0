"""`step` throughput with 1,000 services and 100 domains (target: 100,000 inputs/s, one core).

Two mixes, each timed in CPU time (process_time) on one core, printed side by side:

- **every input a change** (`churn`, the original mix): 60% UnitObserved drawn at random among
  active, failed and activating, so nearly every one is a real state change and a failure
  restarts the unit; 40% ProbeResult, 80% ok; one Tick per 1,000 inputs. Every service changes
  between two Ticks and keeps restart counters, so each Tick visits nearly the whole fleet and
  issues the restarts now due. A worst case, not a fleet anyone runs.
- **a fleet at rest** (`rest`): what 1,000 healthy services send. Each is probed once a second,
  so probe results are the bulk: 86% of inputs are successes that confirm a verdict, 3% single
  failed checks below the `failures` threshold (a streak moves, the verdict does not). 10% are
  unit observations that repeat what is known: systemd's PropertiesChanged for properties the
  agent does not read, and resyncs. 1% start an incident: the unit fails, the agent restarts it
  (a job and its result), it comes back (activating, then active with a new main PID) and a
  probe proves it healthy again. In all about 11% of the inputs change the state, 5% a
  service's. Time advances 1 ms per input (the 1,000/s the probes make), so the Tick, once a
  second as the runtime sends it, comes once every 1,000 inputs. That is still a rough fleet
  (each service fails every 100 s or so); a real one at rest changes far less.

Job results are inputs too, and counted: in `churn` each comes back at once, in `rest` once its
unit is seen active again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import replace

from agent.core.actions import Action, UnitJob
from agent.core.inputs import ActionCompleted, GoalsLoaded, Input, ProbeResult, Tick, UnitObserved
from agent.core.spec import GoalSet
from agent.core.state import State
from agent.core.step import step
from tests.corekit import http_probe, policy, routing_domain, service

SERVICES = 1000
DOMAINS = 100
TARGET = 100_000
Step = Callable[[State, Input], tuple[State, tuple[Action, ...]]]


def goals() -> GoalSet:
    svcs = tuple(
        service(f"svc{i}", probes=(f"p{i}",), restart=policy(limit=10**6, backoff_initial=0))
        for i in range(SERVICES)
    )
    probes = tuple(http_probe(f"p{i}", failures=2) for i in range(SERVICES))
    doms = tuple(replace(routing_domain(f"svc{i}"), name=f"route{i}") for i in range(DOMAINS))
    return GoalSet(services=svcs, probes=probes, domains=doms, digest="bench")


def workload(n: int, seed: int = 1) -> list[Input]:
    """Every input a change (see the module docstring)."""
    rng = random.Random(seed)
    states = [("active", "running"), ("failed", "failed"), ("activating", "start")]
    out: list[Input] = []
    t = 1.0
    for k in range(n):
        t += 0.001
        i = rng.randrange(SERVICES)
        if k % 1000 == 0:
            out.append(Tick(t))
        elif rng.random() < 0.6:
            active, sub = rng.choice(states)
            out.append(UnitObserved(f"svc{i}.service", active, sub, t))
        else:
            out.append(ProbeResult(f"p{i}", rng.random() < 0.8, 0.01, t))
    return out


def resting(n: int, seed: int = 1) -> list[Input]:
    """A fleet at rest with a few percent of real changes (see the module docstring)."""
    rng = random.Random(seed)
    pid = [1000 + i for i in range(SERVICES)]
    later: dict[int, list[Input]] = {}  # input number -> what an incident sends then
    out: list[Input] = []
    t = 1.0
    for k in range(n):
        t += 0.001
        i = rng.randrange(SERVICES)
        r = rng.random()
        unit = f"svc{i}.service"
        if k in later:
            out.extend(later.pop(k))
        elif k % 1000 == 0:
            out.append(Tick(t))
        elif r < 0.86:
            out.append(ProbeResult(f"p{i}", True, rng.uniform(0.001, 0.02), t))
        elif r < 0.89:
            out.append(ProbeResult(f"p{i}", False, 2.0, t, "timed out"))
        elif r < 0.99:
            out.append(UnitObserved(unit, "active", "running", t, main_pid=pid[i]))
        else:
            out.append(UnitObserved(unit, "failed", "failed", t, result="exit-code"))
            pid[i] += SERVICES
            back = t + 0.2
            later.setdefault(k + 200, []).append(UnitObserved(unit, "activating", "start", back))
            later.setdefault(k + 300, []).append(
                UnitObserved(unit, "active", "running", back + 0.1, main_pid=pid[i])
            )
    return out


def _loaded(at_rest: bool) -> State:
    """The fleet after its goals loaded and each unit was seen running (and, `at_rest`, with
    its main PID and a first successful probe result)."""
    state, _ = step(State(), GoalsLoaded(goals(), 0.0))
    for i in range(SERVICES):
        pid = 1000 + i if at_rest else 0
        state, _ = step(
            state, UnitObserved(f"svc{i}.service", "active", "running", 0.5, main_pid=pid)
        )
        if at_rest:
            state, _ = step(state, ProbeResult(f"p{i}", True, 0.01, 0.6))
    return state


def churn(n: int = 200_000, stepper: Step = step) -> dict[str, float]:
    """Every input a change; a job's result comes back at once, dated 0 as this bench always
    did (so the agent reconsiders the unit at its next observation, not in the same breath)."""
    state = _loaded(at_rest=False)
    inputs = workload(n)
    started = time.process_time()
    jobs = 0
    for inp in inputs:
        state, actions = stepper(state, inp)
        for action in actions:
            if isinstance(action, UnitJob):
                state, _ = stepper(state, ActionCompleted(action.id, True, 0.0))
                jobs += 1
    return _figures(len(inputs) + jobs, time.process_time() - started, jobs)


def rest(n: int = 200_000, stepper: Step = step) -> dict[str, float]:
    """A fleet at rest; a start job's result comes back once its unit is seen active."""
    state = _loaded(at_rest=True)
    inputs = resting(n)
    started = time.process_time()
    jobs: dict[str, int] = {}  # unit -> its job in flight
    done = 0
    for inp in inputs:
        state, actions = stepper(state, inp)
        if isinstance(inp, UnitObserved) and inp.active == "active" and inp.unit in jobs:
            state, more = stepper(state, ActionCompleted(jobs.pop(inp.unit), True, inp.at))
            actions += more
            done += 1
        jobs.update((a.unit, a.id) for a in actions if isinstance(a, UnitJob))
    return _figures(len(inputs) + done, time.process_time() - started, done)


def _figures(inputs: int, seconds: float, jobs: int) -> dict[str, float]:
    return {"inputs": inputs, "seconds": seconds, "inputs_per_s": inputs / seconds, "jobs": jobs}


def main() -> None:
    for label, bench in (("every input a change", churn), ("a fleet at rest", rest)):
        result = bench()
        print(
            f"step, {label}: {result['inputs']:.0f} inputs (1,000 services, 100 domains) in "
            f"{result['seconds']:.2f} s CPU = {result['inputs_per_s']:,.0f} inputs/s "
            f"(incl. {result['jobs']:.0f} job results); target >= {TARGET:,}/s"
        )


if __name__ == "__main__":
    main()
