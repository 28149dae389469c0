"""Core: Inputs to `step`. Every input carries the time it happened; the core reads no clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from immutables import Map

from agent.core.spec import GoalSet
from agent.core.state import ClusterRecord

Command = Literal["maintenance_on", "maintenance_off", "resync", "reset"]


@dataclass(frozen=True)
class GoalsLoaded:
    """A validated goal set replaces the current one (start-up or reload)."""

    goals: GoalSet
    at: float


@dataclass(frozen=True)
class UnitObserved:
    """systemd reported a unit's state (signal or resync); `changed_at` is when the unit entered
    it by systemd's clock (StateChangeTimestamp, 0 when unknown)."""

    unit: str
    active: str
    sub: str
    at: float
    load: str = "loaded"
    result: str = "success"
    main_pid: int = 0
    n_restarts: int = 0
    exit_code: int = 0
    """systemd's ExecMainCode: 1 exited, 2 killed, 3 dumped core (0 unknown)."""
    exit_status: int = 0
    """ExecMainStatus: the exit status, or the signal number when killed."""
    changed_at: float = 0.0
    restart: str = ""
    """The unit's own Restart= setting ("" unknown, "no", "on-failure", "always"...)."""
    restart_sec: float = 0.0
    """Its RestartSec=: how long systemd waits before restarting it."""


@dataclass(frozen=True)
class ProbeResult:
    """One health check finished; `latency` in seconds."""

    probe: str
    ok: bool
    latency: float
    at: float
    detail: str = ""
    result: str = ""
    """The answer's JSON value as compact text (a JSON-RPC `result`, bounded), "" for none."""


@dataclass(frozen=True)
class Tick:
    """Time passed; timers (backoff, alert thresholds, stability) are evaluated against `now`."""

    now: float


@dataclass(frozen=True)
class ActionCompleted:
    """A tracked action finished; `ok` is False once its lane gave up or on a permanent error."""

    action_id: int
    ok: bool
    at: float
    detail: str = ""
    permanent: bool = False
    denied: bool = False
    """The manager refused the action: the agent is not permitted (polkit)."""
    fence: int = 0
    """The fence the action ran under (cluster actions): a result of an older dispatch of a
    re-emitted action says nothing about the current one."""


@dataclass(frozen=True)
class OperatorCommand:
    """An operator's request; `target` is a service name, or empty for the whole agent."""

    command: Command
    at: float
    target: str = ""
    by: str = ""
    """Who asked, as the interface that took it knows them: journaled, never decided on."""


@dataclass(frozen=True)
class GoalsRejected:
    """A reload found invalid goals; the last good ones stay in force."""

    problems: tuple[str, ...]
    at: float


@dataclass(frozen=True)
class ManagerStarted:
    """The systemd manager we watch started at `started` (its UserspaceTimestamp): a newer
    one than before means a reboot (or a new user manager), not a crash of every unit.
    `stopping` says why it is shutting down ("reboot.target queued"), empty while it is not."""

    started: float
    at: float
    stopping: str = ""


@dataclass(frozen=True)
class ClusterObserved:
    """The cluster link's view changed: health, who leads (our `fence`, 0 unless us), facts."""

    at: float
    healthy: bool
    leader: str = ""
    fence: int = 0
    members: tuple[str, ...] = ()
    facts: Map[str, Map[str, str]] = field(default_factory=Map)
    settle: float = 0.0
    """How long after the link comes up a node not seen yet is waited for, not taken as down."""


@dataclass(frozen=True)
class ClusterAdopted:
    """As the new leader (`fence`), the cluster domains' record read from etcd (None: none)."""

    at: float
    fence: int
    record: ClusterRecord | None = None


@dataclass(frozen=True)
class JournalGap:
    """The journal's own marker (never stepped into a change): the journal could not write from
    `began` to `at`; `inputs` inputs were decided on meanwhile without a record, `done` says what
    was done for them, and the snapshot stored with this entry is the state after the gap."""

    began: float
    at: float
    inputs: int
    done: tuple[str, ...]
    error: str


Input = (
    GoalsLoaded
    | GoalsRejected
    | UnitObserved
    | ProbeResult
    | Tick
    | ActionCompleted
    | OperatorCommand
    | ClusterObserved
    | ClusterAdopted
    | ManagerStarted
    | JournalGap
)


def input_time(inp: Input) -> float:
    """When an input happened."""
    return inp.now if isinstance(inp, Tick) else inp.at
