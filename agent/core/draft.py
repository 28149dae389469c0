"""Core: A step's scratchpad: persistent maps reassigned in place, folded back into a new State."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from immutables import Map

from agent.core.actions import Action, Log, LogLevel, TrackedAction
from agent.core.spec import DomainSpec, ProbeSpec, ServiceSpec
from agent.core.state import DomainState, ProbeState, ServiceState, State

T = TypeVar("T")


class Draft:
    """Mutable only for the duration of one `step`; the input State is never modified."""

    __slots__ = ("actions", "alerts", "base", "busy", "cluster", "domains", "goals", "groups",
                 "index", "maintenance", "manager_started", "next_id", "pending", "probes",
                 "services", "stopping", "wake")  # fmt: skip

    def __init__(self, state: State) -> None:
        self.base = state
        self.index = state.index
        self.services = state.services
        self.busy = state.busy
        self.wake = state.wake
        self.probes = state.probes
        self.domains = state.domains
        self.pending = state.pending
        self.alerts = state.alerts
        self.groups = state.groups
        self.next_id = state.next_id
        self.maintenance = state.maintenance
        self.cluster = state.cluster
        self.manager_started = state.manager_started
        self.stopping = state.stopping
        self.actions: list[Action] = []
        self.goals = state.goals

    def service_spec(self, name: str) -> ServiceSpec:
        return self.index.services[name]

    def probe_spec(self, name: str) -> ProbeSpec | None:
        return self.index.probes.get(name)

    def domain_spec(self, name: str) -> DomainSpec:
        return self.index.domains[name]

    def track(self, make: Callable[[int], TrackedAction]) -> int:
        """Store a tracked action under the next id, then emit it."""
        action_id = self.next_id
        action = make(action_id)
        self.next_id += 1
        self.pending = self.pending.set(action_id, action)
        self.actions.append(action)
        return action_id

    def track_cluster(self, make: Callable[[int], TrackedAction]) -> int:
        """`track` with an id from the cluster's counter (kept in etcd across leaders)."""
        action_id = self.cluster.next_id
        self.cluster = evolve(self.cluster, next_id=action_id + 1)
        action = make(action_id)
        self.pending = self.pending.set(action_id, action)
        self.actions.append(action)
        return action_id

    def log(self, level: LogLevel, message: str, subject: str = "") -> None:
        self.actions.append(Log(level, message, subject))

    def set_service(self, name: str, svc: ServiceState) -> None:
        self.services = self.services.set(name, svc)
        if name not in self.busy:
            self.busy = self.busy.set(name, True)
        elif name in self.wake:
            self.wake = self.wake.delete(name)

    def wake_all(self) -> None:
        """Every service is busy again: the next Tick visits each (see due.py)."""
        if any(name not in self.busy for name in self.services):
            self.busy = Map((name, True) for name in self.services)
        if self.wake:
            self.wake = Map()

    def set_probe(self, name: str, probe: ProbeState) -> None:
        self.probes = self.probes.set(name, probe)

    def set_domain(self, name: str, dom: DomainState) -> None:
        self.domains = self.domains.set(name, dom)

    def finish(self) -> State:
        """The new State, or the very same object when nothing changed."""
        base = self.base
        if (
            self.services is base.services
            and self.busy is base.busy
            and self.wake is base.wake
            and self.probes is base.probes
            and self.domains is base.domains
            and self.pending is base.pending
            and self.alerts is base.alerts
            and self.groups is base.groups
            and self.next_id == base.next_id
            and self.maintenance == base.maintenance
            and self.goals is base.goals
            and self.cluster is base.cluster
            and self.manager_started == base.manager_started
            and self.stopping == base.stopping
        ):
            return base
        return evolve(
            base,
            goals=self.goals,
            index=self.index,
            services=self.services,
            busy=self.busy,
            wake=self.wake,
            probes=self.probes,
            domains=self.domains,
            pending=self.pending,
            alerts=self.alerts,
            groups=self.groups,
            next_id=self.next_id,
            maintenance=self.maintenance,
            cluster=self.cluster,
            manager_started=self.manager_started,
            stopping=self.stopping,
        )


DUE = ("busy", "wake")
"""State's fields that say what a Tick visits (see due.py): derived, never compared."""


def unchanged(old: State, new: State) -> bool:
    """True when `new` is `old` but for `busy` and `wake` (see due.py): nothing to journal. A
    replay that visits a service more often reaches the same states."""
    if new is old:
        return True
    mine = new.__dict__
    return all(mine[key] is value for key, value in old.__dict__.items() if key not in DUE)


def evolve(obj: T, **changes: object) -> T:
    """`dataclasses.replace` for frozen dataclasses without __post_init__, several times faster."""
    new = object.__new__(type(obj))
    fields = new.__dict__
    fields.update(obj.__dict__, **changes)
    if len(fields) != len(obj.__dict__):  # a name that is not a field was added
        unknown = sorted(changes.keys() - obj.__dataclass_fields__.keys())  # type: ignore[attr-defined]
        raise TypeError(f"{type(obj).__name__} has no field {unknown}")
    return new
