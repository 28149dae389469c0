"""Helpers for driving the pure core in tests: goal builders and a stepping harness."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.core.actions import Action, RunEffect, TrackedAction, UnitJob, is_tracked
from agent.core.inputs import GoalsLoaded, Input, UnitObserved
from agent.core.spec import (
    DomainSpec,
    Effect,
    GoalSet,
    ProbeSpec,
    RestartPolicy,
    ServiceSpec,
    StateVar,
    Transition,
)
from agent.core.state import State
from agent.core.step import step

ROUTING_GOAL = (
    '(primary_status == "healthy" && active_route == "primary") || '
    '(primary_status == "failed" && active_route == "replica" && alert_sent == true)'
)


def routing_domain(primary: str = "db-primary") -> DomainSpec:
    """Seed 001's DatabaseRouting domain, bound to a service's health."""
    bind = f'services["{primary}"].healthy ? "healthy" : "failed"'
    return DomainSpec(
        name="DatabaseRouting",
        variables=(
            StateVar("primary_status", "string", "healthy", bind=bind),
            StateVar("active_route", "string", "primary"),
            StateVar("alert_sent", "bool", False),
        ),
        goal=ROUTING_GOAL,
        transitions=(
            Transition(
                "ExecuteFailover",
                'primary_status == "failed" && active_route == "primary"',
                (Effect("exec", argv=("update-dns", "replica")),),
                (("active_route", "replica"),),
            ),
            Transition(
                "TriggerPagerDuty",
                'primary_status == "failed" && alert_sent == false',
                (Effect("alert", summary="Primary DB Down", severity="critical"),),
                (("alert_sent", True),),
            ),
            Transition(
                "AutoRestore",
                'primary_status == "healthy" && active_route == "replica"',
                (Effect("exec", argv=("update-dns", "primary")),),
                (("active_route", "primary"), ("alert_sent", False)),
            ),
        ),
    )


def service(name: str, **kw: object) -> ServiceSpec:
    """A service spec for unit `<name>.service`."""
    return ServiceSpec(name=name, unit=f"{name}.service", **kw)  # type: ignore[arg-type]


def policy(**kw: float) -> RestartPolicy:
    return RestartPolicy(**kw)  # type: ignore[arg-type]


def http_probe(name: str, **kw: object) -> ProbeSpec:
    return ProbeSpec(name=name, kind="http", url="http://127.0.0.1:1/", **kw)  # type: ignore[arg-type]


@dataclass
class Harness:
    """Steps inputs through the core, remembering every action it emitted."""

    state: State = field(default_factory=State)
    emitted: list[Action] = field(default_factory=list)

    def feed(self, inp: Input) -> list[Action]:
        self.state, actions = step(self.state, inp)
        self.emitted.extend(actions)
        return list(actions)

    def tracked(self, inp: Input) -> list[TrackedAction]:
        return [a for a in self.feed(inp) if is_tracked(a)]

    def lifecycle(self, name: str) -> str:
        return self.state.services[name].lifecycle

    def load(self, goals: GoalSet, at: float = 0.0) -> list[TrackedAction]:
        return self.tracked(GoalsLoaded(goals, at))

    def observe(self, unit: str, active: str, sub: str, at: float) -> list[TrackedAction]:
        return self.tracked(UnitObserved(unit, active, sub, at))


def jobs(actions: list[TrackedAction]) -> list[tuple[str, str]]:
    """(op, unit) of the unit jobs among `actions`."""
    return [(a.op, a.unit) for a in actions if isinstance(a, UnitJob)]


def effects(actions: list[TrackedAction]) -> list[str]:
    """`transition` names of the domain effects among `actions`."""
    return [a.reason for a in actions if isinstance(a, RunEffect)]
