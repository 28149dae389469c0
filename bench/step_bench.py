"""`step` throughput with 1,000 services and 100 domains (target: 50,000 inputs/s, one core)."""

from __future__ import annotations

import random
import time
from dataclasses import replace

from agent.core.actions import UnitJob
from agent.core.inputs import ActionCompleted, GoalsLoaded, Input, ProbeResult, Tick, UnitObserved
from agent.core.spec import GoalSet
from agent.core.state import State
from agent.core.step import step
from tests.corekit import http_probe, policy, routing_domain, service

SERVICES = 1000
DOMAINS = 100


def goals() -> GoalSet:
    svcs = tuple(
        service(f"svc{i}", probes=(f"p{i}",), restart=policy(limit=10**6, backoff_initial=0))
        for i in range(SERVICES)
    )
    probes = tuple(http_probe(f"p{i}", failures=2) for i in range(SERVICES))
    doms = tuple(replace(routing_domain(f"svc{i}"), name=f"route{i}") for i in range(DOMAINS))
    return GoalSet(services=svcs, probes=probes, domains=doms, digest="bench")


def workload(n: int, seed: int = 1) -> list[Input]:
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


def run(n: int = 200_000) -> dict[str, float]:
    state, _ = step(State(), GoalsLoaded(goals(), 0.0))
    for i in range(SERVICES):
        state, _ = step(state, UnitObserved(f"svc{i}.service", "active", "running", 0.5))
    inputs = workload(n)
    started = time.process_time()
    emitted = 0
    for inp in inputs:
        state, actions = step(state, inp)
        for action in actions:
            if isinstance(action, UnitJob):  # complete jobs so restarts keep happening
                state, _ = step(state, ActionCompleted(action.id, True, 0.0))
                emitted += 1
    elapsed = time.process_time() - started
    total = n + emitted
    return {"inputs": total, "seconds": elapsed, "inputs_per_s": total / elapsed, "jobs": emitted}


def main() -> None:
    result = run()
    print(
        f"step: {result['inputs']:.0f} inputs (1,000 services, 100 domains) in "
        f"{result['seconds']:.2f} s CPU = {result['inputs_per_s']:,.0f} inputs/s "
        f"(incl. {result['jobs']:.0f} job results); target >= 50,000/s"
    )


if __name__ == "__main__":
    main()
