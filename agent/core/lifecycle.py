"""Core: Seed 000's service lifecycle, derived from systemd's view plus health. Pure.

Every ActiveState/SubState combination maps to a lifecycle state on purpose (`derive`; the
README has the table). systemd's signals are samples of the unit's state, so one state in
between may pass unseen: an observed change is in the lifecycle when the diagram (seed 000's
edges plus the few below) leads from the old state to the new one in at most two edges.
"""

from __future__ import annotations

from agent.core.state import Health, Lifecycle

SEED: frozenset[tuple[Lifecycle, Lifecycle]] = frozenset(
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
"""Seed 000's diagram."""

EXTRA: frozenset[tuple[Lifecycle, Lifecycle]] = frozenset(
    {
        ("Error", "Restarting"),  # restart() of a unit whose processes still run (unhealthy)
        ("Restarting", "Error"),  # the restart's stop or start failed
        ("Stopping", "Restarting"),  # systemd's own Restart= after a crashed unit's stop-post
        ("Starting", "Stopped"),  # a oneshot's run ended, or a start was cancelled
    }
)
"""Edges real units take that the seed does not draw."""

ALLOWED = SEED | EXTRA

UP = frozenset({"active", "reloading", "refreshing"})
"""ActiveStates in which the unit's processes run."""
BROKEN = frozenset({"not-found", "masked", "bad-setting", "error"})
"""LoadStates of a unit that cannot be started."""
AT_REST = frozenset({"inactive", "failed", "maintenance"})
"""ActiveStates without processes and without a job of systemd's own."""


def derive(
    active: str, sub: str, load: str, health: Health, job: str | None = None
) -> tuple[Lifecycle, str]:
    """The lifecycle state and, for Error, the reason. Pure.

    `job` is the agent's job in flight: "start", "stop", or "restart" while its stop has not
    completed (once it has, the caller passes "start"). A unit the agent starts is Starting from
    the moment the job is issued; one it restarts is Restarting until the old processes are gone.
    """
    if load in BROKEN:
        return "Error", f"unit is {load}"
    if active in UP:  # active/running, exited (RemainAfterExit), waiting, elapsed; reloading
        if job == "restart":
            return "Restarting", ""
        if health == "unhealthy":
            return "Error", "unhealthy"
        return ("Starting", "") if health == "unknown" else ("Running", "")
    if active == "activating":  # start-pre, start, start-post, condition; auto-restart
        return ("Restarting", "") if sub == "auto-restart" else ("Starting", "")
    if active == "deactivating":  # stop, stop-sigterm, stop-sigkill, stop-post, final-*
        return ("Restarting", "") if job == "restart" else ("Stopping", "")
    if active in AT_REST and job in ("start", "restart"):
        return "Starting", ""
    if active in ("inactive", "maintenance"):
        return "Stopped", ""
    if active == "failed":
        return "Error", f"unit failed ({sub or 'failed'})"
    return "Error", f"unknown ActiveState {active!r}"


_SIGNALS = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS",
            8: "SIGFPE", 9: "SIGKILL", 11: "SIGSEGV", 13: "SIGPIPE", 14: "SIGALRM",
            15: "SIGTERM"}  # fmt: skip
_STATUSES = {1: "FAILURE", 2: "INVALIDARGUMENT", 3: "NOTIMPLEMENTED", 4: "NOPERMISSION",
             5: "NOTINSTALLED", 6: "NOTCONFIGURED", 7: "NOTRUNNING", 200: "CHDIR", 201: "NICE",
             202: "FDS", 203: "EXEC", 204: "MEMORY", 205: "LIMITS", 208: "STDIN", 209: "STDOUT",
             210: "CHROOT", 214: "SETSCHEDULER", 216: "GROUP", 217: "USER",
             218: "CAPABILITIES", 219: "CGROUP", 222: "STDERR", 224: "PAM", 225: "NETWORK",
             226: "NAMESPACE", 228: "SECCOMP", 233: "RUNTIME_DIRECTORY",
             238: "STATE_DIRECTORY", 243: "CREDENTIALS"}  # fmt: skip
"""systemd's names of exit statuses, as `systemctl status` shows them (status=203/EXEC)."""


def exit_reason(result: str, code: int, status: int) -> str:
    """systemd's own account of how a unit went down, from Result, ExecMainCode and
    ExecMainStatus: "exit-code, status 203/EXEC", "signal SIGKILL", "timeout". Pure."""
    parts = [result] if result and result not in ("success", "signal") else []
    if code in (2, 3):
        parts.append(f"signal {_SIGNALS.get(status, status)}")
    elif code == 1 and status:
        name = _STATUSES.get(status)
        parts.append(f"status {status}/{name}" if name else f"status {status}")
    return ", ".join(parts)


_OWN_RESTART = {
    "on-success": frozenset({"success"}),
    "on-abnormal": frozenset({"signal", "core-dump", "timeout", "watchdog"}),
    "on-abort": frozenset({"signal", "core-dump"}),
    "on-watchdog": frozenset({"watchdog"}),
}


def systemd_restarts(mode: str, result: str) -> bool:
    """Whether a unit with Restart=`mode` that went down with Result=`result` is restarted by
    systemd itself (systemd 252 shows such a unit `failed` a moment before `auto-restart`). Pure."""
    if result == "start-limit-hit":
        return False
    if mode == "always":
        return True
    if mode == "on-failure":
        return result != "success"
    return result in _OWN_RESTART.get(mode, ())


def allowed(old: Lifecycle, new: Lifecycle) -> bool:
    """True when the diagram leads from `old` to `new` in one edge, or two (one unseen state)."""
    if (old, new) in ALLOWED:
        return True
    return any((old, mid) in ALLOWED and (mid, new) in ALLOWED for _, mid in ALLOWED)


def backoff(attempts: int, initial: float, factor: float, cap: float) -> float:
    """Delay before the next attempt after `attempts` attempts in the window. Pure."""
    if attempts <= 0:
        return 0.0
    return float(min(cap, initial * factor ** (attempts - 1)))
