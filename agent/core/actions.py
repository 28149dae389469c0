"""Core: Actions `step` returns. Tracked ones live in the state until their result comes back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeGuard

from agent.core.spec import Effect, Severity

JobOp = Literal["start", "stop", "restart", "kill"]
LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True)
class UnitJob:
    """Start, stop or restart a systemd unit, or kill its main process with SIGKILL (lane
    `systemd`)."""

    id: int
    unit: str
    op: JobOp
    service: str

    @property
    def lane(self) -> str:
        return "systemd"


@dataclass(frozen=True)
class Owner:
    """Whose effect it is: a domain's transition or a failover group's route change."""

    kind: Literal["domain", "group"]
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class RunEffect:
    """Run a goal-defined effect for a domain transition or a route change (lane = effect kind)."""

    id: int
    effect: Effect
    owner: Owner
    reason: str
    target: str = ""
    fence: int = 0
    """The leader's fencing token for an effect of a cluster domain (0: local)."""

    @property
    def lane(self) -> str:
        return self.effect.kind

    def fill(self, text: str) -> str:
        """`text` with `{target}` replaced by the route target (empty outside routes)."""
        return text.replace("{target}", self.target)


@dataclass(frozen=True)
class Alert:
    """An alert's content; `fingerprint` identifies it across firing and resolved."""

    fingerprint: str
    name: str
    labels: tuple[tuple[str, str], ...]
    summary: str
    severity: Severity
    firing: bool
    starts_at: float
    ends_at: float = 0.0

    @property
    def subject(self) -> str:
        """What the alert is about (its `subject` label)."""
        return dict(self.labels).get("subject", "")


@dataclass(frozen=True)
class SendAlert:
    """Deliver an alert (firing or resolved) to one sink (lane `alert:<sink>`)."""

    id: int
    sink: str
    alert: Alert

    @property
    def lane(self) -> str:
        return f"alert:{self.sink}"


TrackedAction = UnitJob | RunEffect | SendAlert


@dataclass(frozen=True)
class Log:
    """A log line (untracked)."""

    level: LogLevel
    message: str
    subject: str = ""


@dataclass(frozen=True)
class Resync:
    """Ask the observers for a full resync (untracked)."""


UntrackedAction = Log | Resync
Action = TrackedAction | UntrackedAction
TRACKED = (UnitJob, RunEffect, SendAlert)


def is_tracked(action: Action) -> TypeGuard[TrackedAction]:
    """True for actions whose result must come back as an input."""
    return isinstance(action, TRACKED)
