"""Core: the agent's state: frozen dataclasses over persistent maps; steps copy what changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from immutables import Map

from agent.core.actions import Alert, RunEffect, TrackedAction
from agent.core.spec import (
    DomainSpec,
    FailoverGroup,
    GoalSet,
    ProbeSpec,
    Scalar,
    ServiceSpec,
    VarType,
)

Lifecycle = Literal["Stopped", "Starting", "Running", "Stopping", "Error", "Restarting"]
Health = Literal["healthy", "unhealthy", "unknown"]


@dataclass(frozen=True)
class ProbeState:
    """Consecutive results of one probe and the health they add up to."""

    healthy: bool | None = None
    ok_streak: int = 0
    fail_streak: int = 0
    over_budget: bool = False
    latency: float = 0.0
    detail: str = ""
    result: str = ""
    """The last result's JSON value as text (a JSON-RPC `result`), "" when it carried none."""


@dataclass(frozen=True)
class ServiceState:
    """What is known of one service: systemd's view, its lifecycle and restart bookkeeping."""

    lifecycle: Lifecycle = "Stopped"
    since: float = 0.0
    active: str = "unknown"
    sub: str = ""
    load: str = ""
    active_since: float = 0.0
    health: Health = "unknown"
    transitions: int = 0
    irregular: int = 0
    recent: tuple[float, ...] = ()
    """Times of the latest failure cycles within the thrash window (at most thrash_transitions):
    entries into Error and systemd's own restarts (auto-restart)."""
    errors: int = 0
    failures: int = 0
    """Failure cycles ever (what `recent` counts within the window): the thrash rule's unit."""
    job: int | None = None
    restarts: tuple[float, ...] = ()
    restarts_total: int = 0
    next_attempt: float = 0.0
    gave_up: bool = False
    denied: bool = False
    """The manager refused the agent's job (polkit): given up until a reload or a reset."""
    reason: str = ""
    exit: str = ""
    """How the unit last went down, with systemd's reason ("unit failed: signal SIGKILL")."""
    maintenance: bool = False
    main_pid: int = 0
    stop_done: bool = False
    own_restart_until: float = 0.0
    """The unit went down and its own Restart= restarts it: left to systemd until then."""
    killed: bool = False
    """The agent killed the main process of this job's stop (its stop grace ran out)."""
    """The agent's restart in flight has seen the old processes go: it reads Starting now."""
    phase: str = ""
    """The declared phase it is in ("" none, or unknown when `phase_error` says why)."""
    phase_since: float = 0.0
    phase_error: str = ""


@dataclass(frozen=True)
class InFlight:
    """A domain transition whose effects are running; `done` holds the ids that succeeded."""

    actions: tuple[int, ...]
    done: tuple[int, ...] = ()


@dataclass(frozen=True)
class DomainState:
    """A domain's variables, whether its goal holds, and its transitions in flight."""

    values: Map[str, Scalar] = field(default_factory=Map)
    satisfied: bool = True
    since: float = 0.0
    in_flight: Map[str, InFlight] = field(default_factory=Map)
    retry_at: Map[str, float] = field(default_factory=Map)
    error: str = ""


@dataclass(frozen=True)
class GroupState:
    """A failover group: the decided route, the applied one, and the switch in progress."""

    route: str = ""
    applied: str = ""
    candidate: str = ""
    streak: int = 0
    switches: int = 0
    target: str = ""
    in_flight: tuple[int, ...] = ()
    done: tuple[int, ...] = ()
    retry_at: float = 0.0


@dataclass(frozen=True)
class Delivery:
    """One sink's view of an alert: the SendAlert in flight, or when to send next (None: done)."""

    action: int | None = None
    due: float | None = None


@dataclass(frozen=True)
class AlertState:
    """An alert as last decided, and its delivery to each sink."""

    alert: Alert
    deliveries: Map[str, Delivery] = field(default_factory=Map)


CLUSTER_IDS = 1 << 40
"""Ids of cluster actions start here: they live in etcd across leaders, apart from local ids."""


@dataclass(frozen=True)
class ClusterState:
    """What the link says of the cluster, and this node's leadership (`fence` 0: follower)."""

    healthy: bool = False
    leader: str = ""
    fence: int = 0
    adopted: int = 0
    """The fence whose record from etcd this leader has loaded; it acts only once equal."""
    members: tuple[str, ...] = ()
    facts: Map[str, Map[str, str]] = field(default_factory=Map)
    """node -> fact name (`probe/<p>`, `service/<s>`, `digest/<domain>`) -> value."""
    settled_at: float = 0.0
    """From then on, a node that is neither a member nor publishing reads as down."""
    next_id: int = CLUSTER_IDS


@dataclass(frozen=True)
class ClusterRecord:
    """The authoritative state of the cluster domains, kept in etcd by fenced writes."""

    domains: Map[str, DomainState] = field(default_factory=Map)
    pending: tuple[RunEffect, ...] = ()
    next_id: int = CLUSTER_IDS
    groups: Map[str, GroupState] = field(default_factory=Map)


@dataclass(frozen=True)
class Index:
    """Lookups derived from the goals once per load: a step touches only what an input affects."""

    services: Map[str, ServiceSpec] = field(default_factory=Map)
    probes: Map[str, ProbeSpec] = field(default_factory=Map)
    domains: Map[str, DomainSpec] = field(default_factory=Map)
    decls: Map[str, tuple[tuple[str, VarType], ...]] = field(default_factory=Map)
    groups: Map[str, FailoverGroup] = field(default_factory=Map)
    members: Map[str, tuple[tuple[str, tuple[str, ...]], ...]] = field(default_factory=Map)
    probe_to_groups: Map[str, tuple[str, ...]] = field(default_factory=Map)
    unit_to_service: Map[str, str] = field(default_factory=Map)
    probe_to_services: Map[str, tuple[str, ...]] = field(default_factory=Map)
    service_to_domains: Map[str, tuple[str, ...]] = field(default_factory=Map)
    probe_to_domains: Map[str, tuple[str, ...]] = field(default_factory=Map)
    dependants: Map[str, tuple[str, ...]] = field(default_factory=Map)
    probe_to_phased: Map[str, tuple[str, ...]] = field(default_factory=Map)
    """Probe -> the services whose phases read it."""
    plain_probes: Map[str, tuple[ProbeSpec, tuple[str, ...]]] = field(default_factory=Map)
    """Probe -> its spec and owners, for the probes no failover group times and no phase
    reads: a result that changes nothing of such a probe changes nothing at all."""


@dataclass(frozen=True)
class State:
    """Everything `step` needs and nothing it does not."""

    goals: GoalSet = field(default_factory=GoalSet)
    index: Index = field(default_factory=Index, metadata={"derived": True})
    """Derived from `goals` (build_index): never stored, rebuilt when a state is decoded."""
    busy: Map[str, bool] = field(default_factory=Map, metadata={"derived": True}, compare=False)
    """Services a Tick must visit (see due.py): those not known to be idle. Never stored; a
    decoded state has every service in it."""
    wake: Map[str, tuple[float, float]] = field(
        default_factory=Map, metadata={"derived": True}, compare=False
    )
    """Busy services Ticks may pass over (see due.py): (from, until) when nothing time-driven
    is due for them unless an input changes them first. Never stored; without an entry a busy
    service is visited by every Tick."""
    services: Map[str, ServiceState] = field(default_factory=Map)
    probes: Map[str, ProbeState] = field(default_factory=Map)
    domains: Map[str, DomainState] = field(default_factory=Map)
    pending: Map[int, TrackedAction] = field(default_factory=Map)
    alerts: Map[str, AlertState] = field(default_factory=Map)
    groups: Map[str, GroupState] = field(default_factory=Map)
    next_id: int = 1
    maintenance: bool = False
    manager_started: float = 0.0
    """When the watched systemd manager started (see ManagerStarted)."""
    stopping: str = ""
    """Why the system is shutting down (see ManagerStarted); while set, the agent only observes."""
    cluster: ClusterState = field(default_factory=ClusterState)
