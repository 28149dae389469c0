"""Core: The validated goal model the core works on: frozen, plain data, no I/O.

`agent.goals` builds a `GoalSet` from YAML; the core never sees YAML or pydantic.
Durations are seconds (float). Names are unique within their kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Desired = Literal["running", "stopped", "unmanaged"]
OnUnhealthy = Literal["restart", "alert", "none"]
ProbeKind = Literal["http", "tcp", "exec", "jsonrpc"]
VarType = Literal["string", "bool", "int", "double"]
Scalar = str | bool | int | float
Severity = Literal["critical", "warning", "info"]


Scope = Literal["local", "cluster"]


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff; give up after `limit` restarts in `window`; reset after `stable_for`."""

    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    backoff_factor: float = 2.0
    limit: int = 5
    window: float = 300.0
    stable_for: float = 120.0


@dataclass(frozen=True)
class AlertThresholds:
    """Seed 000's alert rules; each service may override any of them."""

    error_for: float = 300.0
    starting_for: float = 600.0
    stopping_for: float = 120.0
    thrash_transitions: int = 10
    thrash_window: float = 600.0


@dataclass(frozen=True)
class ProbeSpec:
    """A health check. Only the fields of its `kind` are meaningful to the probe adapter."""

    name: str
    kind: ProbeKind
    interval: float = 10.0
    timeout: float = 2.0
    latency_budget: float | None = None
    failures: int = 3
    successes: int = 1
    start_period: float = 0.0
    url: str = ""
    method: str = "GET"
    expect_status: tuple[int, ...] = (200,)
    body_contains: str = ""
    json_field: str = ""
    json_equals: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    tls_verify: bool = True
    host: str = ""
    port: int = 0
    argv: tuple[str, ...] = ()
    expect_exit: tuple[int, ...] = (0,)
    rpc_method: str = ""
    rpc_params: str = "[]"
    """The JSON-RPC call's `params`, as JSON text."""


@dataclass(frozen=True)
class Phase:
    """Seed 000's service-specific sub-state: named, held while `when` (CEL) is the first of
    the service's phases to hold; `alert_after` (0: never) fires ServicePhaseTooLong."""

    name: str
    when: str
    alert_after: float = 0.0


@dataclass(frozen=True)
class ServiceSpec:
    """A systemd unit under management."""

    name: str
    unit: str
    desired: Desired = "running"
    probes: tuple[str, ...] = ()
    on_unhealthy: OnUnhealthy = "restart"
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    depends_on: tuple[str, ...] = ()
    alerts: AlertThresholds = field(default_factory=AlertThresholds)
    restart_with: tuple[str, ...] = ()
    """Dependencies (of `depends_on`) whose restart restarts this service once they run again."""
    stop_grace: float = 0.0
    """How long the agent's stop or restart may take before it kills the main process (0: off)."""
    phases: tuple[Phase, ...] = ()
    """Ordered sub-states within Starting and Running (see agent/core/phases.py)."""


@dataclass(frozen=True)
class Effect:
    """Something a transition or route change makes happen; `kind` selects the lane.

    exec: `argv` (never a shell string), `env`, `timeout`. alert: `sink` (empty = all),
    `severity`, `summary`. systemd: `unit`, `operation`. http: `url`, `method`, `body`.
    mqtt: `topic`, `payload`. file: `path` (written atomically with the target).
    Route effects receive the target: `{target}` in argv, url, body and payload is replaced.
    """

    kind: Literal["exec", "alert", "systemd", "http", "mqtt", "file"]
    argv: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    timeout: float = 30.0
    sink: str = ""
    severity: Severity = "warning"
    summary: str = ""
    unit: str = ""
    operation: Literal["start", "stop", "restart", ""] = ""
    url: str = ""
    method: str = "POST"
    body: str = ""
    topic: str = ""
    payload: str = ""
    path: str = ""


@dataclass(frozen=True)
class StateVar:
    """A typed domain variable; `bind` (CEL over facts) makes it derived instead of assigned."""

    name: str
    type: VarType
    default: Scalar
    bind: str = ""


@dataclass(frozen=True)
class Transition:
    """A guarded step of a domain: when `guard` holds, run `effects`; on success apply `assign`."""

    name: str
    guard: str
    effects: tuple[Effect, ...] = ()
    assign: tuple[tuple[str, Scalar], ...] = ()
    retry_after: float = 5.0


@dataclass(frozen=True)
class DomainSpec:
    """Seed 001: state variables, a goal predicate, independent transitions."""

    name: str
    variables: tuple[StateVar, ...]
    goal: str
    transitions: tuple[Transition, ...]
    scope: Scope = "local"
    """`cluster`: decided by the one leader of the cluster, over facts from every node."""
    digest: str = field(default="", compare=False)
    """sha256 of the domain's definition; nodes compare it before the leader acts on it."""
    origins: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    """Where each expression is written: (expression text, `file:line:col`); not in the digest."""

    @property
    def expressions(self) -> tuple[str, ...]:
        """Every CEL text of the domain: the goal, the guards, the bindings."""
        binds = (v.bind for v in self.variables if v.bind)
        return (self.goal, *(t.guard for t in self.transitions), *binds)

    def origin(self, text: str) -> str:
        """The `file:line:col` of an expression of this domain, or its name when unknown."""
        return next((where for t, where in self.origins if t == text), f"domain {self.name}")


@dataclass(frozen=True)
class Member:
    """A failover group member: a service or a plain endpoint, judged by its probes."""

    name: str
    service: str = ""
    probes: tuple[str, ...] = ()
    node: str = ""
    """In a cluster group: the node whose published verdicts judge this member."""


@dataclass(frozen=True)
class FailoverGroup:
    """Seed 002: route to the preferred healthy member within budget, else the fastest one."""

    name: str
    members: tuple[Member, ...]
    switch_after: int = 3
    auto_restore: bool = True
    effects: tuple[Effect, ...] = ()
    scope: Scope = "local"
    """`cluster`: routed by the one leader of the cluster, over the members' nodes' facts."""
    digest: str = field(default="", compare=False)


@dataclass(frozen=True)
class AlertSink:
    """Where alerts go: Alertmanager API v2, MQTT, or a webhook."""

    name: str
    kind: Literal["alertmanager", "mqtt", "webhook"]
    url: str = ""
    topic: str = ""
    secret_env: str = ""
    repeat_interval: float = 3600.0


@dataclass(frozen=True)
class GoalSet:
    """Everything the goal files define, validated and cross-checked."""

    services: tuple[ServiceSpec, ...] = ()
    probes: tuple[ProbeSpec, ...] = ()
    domains: tuple[DomainSpec, ...] = ()
    groups: tuple[FailoverGroup, ...] = ()
    sinks: tuple[AlertSink, ...] = ()
    digest: str = ""
