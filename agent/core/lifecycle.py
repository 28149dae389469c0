"""Core: Seed 000's service lifecycle, derived from systemd's view plus health. Pure."""

from __future__ import annotations

from agent.core.state import Health, Lifecycle

ALLOWED: frozenset[tuple[Lifecycle, Lifecycle]] = frozenset(
    {
        ("Stopped", "Starting"),
        ("Starting", "Running"),
        ("Starting", "Error"),
        ("Running", "Stopping"),
        ("Running", "Error"),
        ("Stopping", "Stopped"),
        ("Stopping", "Error"),
        ("Error", "Stopped"),
        ("Error", "Starting"),
        ("Running", "Restarting"),
        ("Restarting", "Starting"),
    }
)

UP = frozenset({"active", "reloading", "refreshing"})
"""ActiveStates in which the unit's processes run."""


def derive(
    active: str, sub: str, load: str, health: Health, job: str | None = None
) -> tuple[Lifecycle, str]:
    """The lifecycle state and, for Error, the reason; `job` is the agent's job in flight. Pure.

    A unit the agent is starting is Starting from the moment the job is issued (seed 000's
    restart() takes Error to Starting), not Stopped or Error until systemd reports it up. The
    agent restarts a unit only when it is unhealthy, that is from Error: Starting too.
    """
    if load in ("not-found", "masked", "bad-setting", "error"):
        return "Error", f"unit is {load}"
    if job == "restart" and health == "unhealthy":
        return "Starting", ""
    if active in UP:
        if health == "unhealthy":
            return "Error", "unhealthy"
        return ("Starting", "") if health == "unknown" else ("Running", "")
    if active == "activating":
        return ("Restarting", "") if job == "restart" or sub == "auto-restart" else ("Starting", "")
    if active == "deactivating":
        return ("Restarting", "") if job == "restart" else ("Stopping", "")
    if job == "restart" and active in ("inactive", "maintenance"):
        return "Restarting", ""
    if job in ("start", "restart") and active in ("inactive", "maintenance", "failed"):
        return "Starting", ""
    if active in ("inactive", "maintenance"):
        return "Stopped", ""
    if active == "failed":
        return "Error", f"unit failed ({sub or 'failed'})"
    return "Error", f"unknown ActiveState {active!r}"


_SIGNALS = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS",
            8: "SIGFPE", 9: "SIGKILL", 11: "SIGSEGV", 13: "SIGPIPE", 14: "SIGALRM",
            15: "SIGTERM"}  # fmt: skip


def exit_reason(result: str, code: int, status: int) -> str:
    """How a unit went down, in words, from Result, ExecMainCode and ExecMainStatus. Pure."""
    if code in (2, 3):
        signal = _SIGNALS.get(status, f"signal {status}")
        return f"main process killed by {signal}" + (" (core dumped)" if code == 3 else "")
    if code == 1 and status:
        return f"main process exited with status {status}"
    if result and result != "success":
        return f"unit failed ({result})"
    return "main process exited" if code == 1 else ""


def allowed(old: Lifecycle, new: Lifecycle) -> bool:
    """True when seed 000's diagram has the edge old -> new."""
    return (old, new) in ALLOWED


def backoff(attempts: int, initial: float, factor: float, cap: float) -> float:
    """Delay before the next attempt after `attempts` attempts in the window. Pure."""
    if attempts <= 0:
        return 0.0
    return float(min(cap, initial * factor ** (attempts - 1)))
