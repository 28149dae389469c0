"""Core: Services: lifecycle bookkeeping and the restart policy. Pure."""

from __future__ import annotations

from agent.core.actions import UnitJob
from agent.core.draft import Draft, evolve
from agent.core.inputs import UnitObserved
from agent.core.lifecycle import (
    AT_REST,
    UP,
    allowed,
    backoff,
    derive,
    exit_reason,
    systemd_restarts,
)
from agent.core.spec import ServiceSpec
from agent.core.state import Health, Lifecycle, ProbeState, ServiceState, State

DOWN = frozenset({"inactive", "failed"})
OWN_RESTART_SLACK = 5.0
"""How long after its RestartSec= a unit systemd said it would restart is left to systemd."""
POLKIT_HINT = (
    "the polkit rule does not cover this unit: regenerate it with `setpoint polkit-rule --goals "
    "DIR -o /etc/polkit-1/rules.d/50-setpoint.rules`, then `systemctl reload setpoint`"
)


def health_of(draft: Draft, spec: ServiceSpec) -> Health:
    """All probes healthy: healthy; any unhealthy: unhealthy; otherwise unknown. Pure."""
    if not spec.probes:
        return "healthy"
    verdicts = [draft.probes[p].healthy if p in draft.probes else None for p in spec.probes]
    if False in verdicts:
        return "unhealthy"
    return "healthy" if all(verdicts) else "unknown"


def _job_op(draft: Draft | State, svc: ServiceState) -> str | None:
    """The operation of the agent's job on this unit, while one is in flight; a restart whose
    stop has completed is a start from then on."""
    job = draft.pending.get(svc.job) if svc.job is not None else None
    if not isinstance(job, UnitJob):
        return None
    return "start" if job.op == "restart" and svc.stop_done else job.op


def refresh(draft: Draft, name: str, svc: ServiceState, at: float) -> ServiceState:
    """Re-derive the lifecycle from what is known and count the transition, if any."""
    lifecycle, reason = _derived(draft, name, svc)
    if lifecycle != svc.lifecycle:
        return _enter(draft, name, draft.service_spec(name), svc, lifecycle, reason, at)
    return svc if _kept(svc, lifecycle, reason) else evolve(svc, reason=reason)


def _kept(svc: ServiceState, lifecycle: Lifecycle, reason: str) -> bool:
    """Whether `svc` already says what `_derived` found: refresh keeps it as it is."""
    return lifecycle == svc.lifecycle and (reason == svc.reason or lifecycle != "Error")


def _derived(view: Draft | State, name: str, svc: ServiceState) -> tuple[Lifecycle, str]:
    """The lifecycle and reason `svc` reads as, with the agent's job and its probes."""
    spec = view.index.services[name]
    lifecycle, reason = derive(svc.active, svc.sub, svc.load, svc.health, _job_op(view, svc))
    if svc.gave_up and lifecycle in ("Stopped", "Error") and spec.desired == "running":
        lifecycle, reason = "Error", svc.reason or reason
    if lifecycle == "Error" and reason == "unhealthy":
        reason = "unhealthy: " + _probe_detail(view, spec)
    elif lifecycle == "Error" and reason.startswith("unit failed") and svc.exit:
        reason = svc.exit if svc.exit.startswith("unit failed") else reason
    return lifecycle, reason


def _recovering_from(old: Lifecycle, new: Lifecycle, reason: str) -> str:
    """While the agent restarts or starts a unit out of Error (or after its dependency), the
    reason says why."""
    recovering = old in ("Error", "Restarting", "Running") and new in ("Starting", "Restarting")
    return reason if recovering else ""


def _probe_detail(draft: Draft | State, spec: ServiceSpec) -> str:
    failing = [
        f"{p}: {draft.probes[p].detail}"
        for p in spec.probes
        if p in draft.probes and draft.probes[p].healthy is False
    ]
    return "; ".join(failing) or "probe failing"


def _enter(
    draft: Draft,
    name: str,
    spec: ServiceSpec,
    svc: ServiceState,
    new: Lifecycle,
    reason: str,
    at: float,
) -> ServiceState:
    old = svc.lifecycle
    irregular = svc.active != "unknown" and svc.transitions > 0 and not allowed(old, new)
    if irregular:
        draft.log("info", f"observed jump {old} -> {new} (not in the lifecycle diagram)", name)
    recent = _failures(spec, svc, old, new, at)
    return evolve(
        svc,
        lifecycle=new,
        since=at,
        reason=reason if new == "Error" else _recovering_from(old, new, svc.reason),
        transitions=svc.transitions + 1,
        irregular=svc.irregular + irregular,
        recent=recent,
        errors=svc.errors + (new == "Error"),
        failures=svc.failures + (recent is not svc.recent),
    )


def _failures(
    spec: ServiceSpec, svc: ServiceState, old: Lifecycle, new: Lifecycle, at: float
) -> tuple[float, ...]:
    """The thrash rule's failure cycles: each entry into Error, and each restart systemd makes
    on its own (auto-restart) that did not come out of an Error already counted."""
    auto = new == "Restarting" and svc.sub == "auto-restart" and old != "Error"
    if new != "Error" and not auto:
        return svc.recent
    keep = spec.alerts.thrash_transitions - 1  # the thrash rule needs no more than that
    horizon = at - spec.alerts.thrash_window
    return (*(t for t in svc.recent[-keep:] if t > horizon), at) if keep > 0 else (at,)


def observe(draft: Draft, name: str, obs: UnitObserved, at: float) -> ServiceState:
    """Apply systemd's view of the unit; a unit coming up starts its probes afresh."""
    svc = draft.services[name]
    at = _dated(svc, obs, at)
    health = svc.health
    if _came_up(svc, obs):
        for probe in draft.service_spec(name).probes:
            if probe in draft.probes:
                draft.set_probe(probe, ProbeState())
        health = health_of(draft, draft.service_spec(name))
    seen = _seen(svc, obs, at, health)
    if seen != _known(svc):
        svc = evolve(svc, **dict(zip(_SEEN, seen, strict=True)))
    return refresh(draft, name, svc, at)


def repeats(state: State, obs: UnitObserved) -> bool:
    """True when `obs` says nothing new: `step` would change nothing (observe keeps the very
    ServiceState, and refresh finds it says what it derives). Pure."""
    name = state.index.unit_to_service.get(obs.unit)
    if name is None:
        return True
    svc = state.services[name]
    if _came_up(svc, obs):
        return False
    if _seen(svc, obs, _dated(svc, obs, obs.at), svc.health) != _known(svc):
        return False
    return _kept(svc, *_derived(state, name, svc))


def _dated(svc: ServiceState, obs: UnitObserved, at: float) -> float:
    """A state entered is dated by systemd's clock when that is known and newer than what we
    knew: after a restart of the agent, a unit failed for an hour has been in Error an hour."""
    if 0 < obs.changed_at <= at and (svc.active == "unknown" or obs.changed_at > svc.since):
        return obs.changed_at
    return at


def _came_up(svc: ServiceState, obs: UnitObserved) -> bool:
    return obs.active in UP and (svc.active not in UP or _new_process(svc, obs))


_SEEN = ("active", "sub", "load", "health", "active_since", "exit", "main_pid", "stop_done",
         "own_restart_until")  # fmt: skip
"""What `observe` takes from systemd's view (a repeated view changes none of them)."""


def _seen(svc: ServiceState, obs: UnitObserved, at: float, health: Health) -> tuple[object, ...]:
    """The `_SEEN` fields after `obs` (dated `at`; `health` after any probes started afresh)."""
    active, sub = obs.active, obs.sub
    went_down = active not in UP and (svc.active in UP or active == "failed")
    waiting = active in DOWN or sub == "auto-restart"  # then inactive/dead, then activating
    exit, own = svc.exit, svc.own_restart_until if waiting else 0.0
    if went_down and systemd_restarts(obs.restart, obs.result):
        own = at + obs.restart_sec + OWN_RESTART_SLACK
    if went_down:
        why = exit_reason(obs.result, obs.exit_code, obs.exit_status)
        exit = f"unit failed: {why}" if why else f"unit went {active}"
    active_since = at if _came_up(svc, obs) else svc.active_since
    stop_done = svc.stop_done or _stop_done(svc, obs)
    return (active, sub, obs.load, health, active_since, exit, obs.main_pid, stop_done, own)


def _known(svc: ServiceState) -> tuple[object, ...]:
    return (svc.active, svc.sub, svc.load, svc.health, svc.active_since, svc.exit,
            svc.main_pid, svc.stop_done, svc.own_restart_until)  # fmt: skip


def _stop_done(svc: ServiceState, obs: UnitObserved) -> bool:
    """The old processes of a unit being restarted are gone: it went down, or it came back
    with another main process before we saw it go."""
    if obs.active in AT_REST or obs.active == "activating":
        return True
    return obs.active in UP and _new_process(svc, obs)


def _new_process(svc: ServiceState, obs: UnitObserved) -> bool:
    return 0 < svc.main_pid != obs.main_pid > 0


def _wants_job(spec: ServiceSpec, svc: ServiceState) -> str | None:
    """The job the desired state calls for, ignoring timing and limits. Pure."""
    if spec.desired == "stopped":
        return "stop" if svc.active in UP or svc.active == "activating" else None
    if svc.load in ("not-found", "masked"):
        return None
    if svc.active in DOWN:
        return "start"
    if svc.active in UP and svc.health == "unhealthy" and spec.on_unhealthy == "restart":
        return "restart"
    return None


wanted_job = _wants_job


def _deps_running(draft: Draft, spec: ServiceSpec) -> bool:
    return all(
        dep in draft.services and draft.services[dep].lifecycle == "Running"
        for dep in spec.depends_on
    )


def reconcile(draft: Draft, name: str, now: float) -> None:
    """Issue the job the goal calls for, within dependencies, backoff and the restart limit."""
    svc = draft.services[name]
    spec = draft.service_spec(name)
    if draft.maintenance or svc.maintenance or spec.desired == "unmanaged" or draft.stopping:
        return
    if svc.job is not None or svc.active == "unknown" or svc.gave_up:
        return
    op = _wants_job(spec, svc)
    if op is None or now < svc.next_attempt:
        return
    if op == "start" and now < svc.own_restart_until:
        return  # the unit's own Restart= is about to act; the agent steps in if it does not
    if op != "stop" and not _deps_running(draft, spec):
        return
    policy = spec.restart
    restarts = _within(svc.restarts, now - policy.window)
    if op != "stop" and len(restarts) >= policy.limit:
        limit = f"restart limit reached: {len(restarts)} in {policy.window:g}s"
        _give_up(draft, name, svc, f"{_cause(draft, spec, svc)}; {limit}".lstrip("; "), now)
        return
    job_op = "restart" if op == "restart" else op
    unit = spec.unit
    job = draft.track(lambda i: UnitJob(i, unit, job_op, name))  # type: ignore[arg-type]
    attempts = len(restarts) + 1
    counted = _is_restart(op, svc)
    _log_job(draft, name, spec, svc, op, f" ({attempts}/{policy.limit})" if counted else "")
    delay = backoff(attempts, policy.backoff_initial, policy.backoff_factor, policy.backoff_max)
    svc = evolve(
        svc,
        job=job,
        restarts=(*restarts, now) if counted else restarts,
        restarts_total=svc.restarts_total + counted,
        next_attempt=now + delay,
        stop_done=False,
        killed=False,
    )
    draft.set_service(name, refresh(draft, name, svc, now))


def _within(times: tuple[float, ...], horizon: float) -> tuple[float, ...]:
    """The times after `horizon`, in order (the very tuple when all are)."""
    if not times or min(times) > horizon:
        return times
    return tuple(t for t in times if t > horizon)


def follow(draft: Draft, dep: str, before: ServiceState, now: float) -> None:
    """`dep` runs again after a restart: restart, once each, the dependants that asked for it
    (`restart_with`) and still run from before its current run began."""
    again = draft.services[dep]
    if again.lifecycle != "Running" or before.lifecycle == "Running" or before.active == "unknown":
        return
    for name in draft.index.dependants.get(dep, ()):
        spec = draft.service_spec(name)
        svc = draft.services[name]
        if dep not in spec.restart_with or not 0 < svc.active_since < again.active_since:
            continue
        if svc.active not in UP or _hands_off(draft, spec, svc) or not _deps_running(draft, spec):
            continue
        unit = spec.unit
        job = draft.track(lambda i: UnitJob(i, unit, "restart", name))  # noqa: B023
        draft.log("info", f"{dep} restarted; restarting", name)
        svc = evolve(svc, job=job, stop_done=False, killed=False, reason=f"{dep} restarted")
        draft.set_service(name, refresh(draft, name, svc, now))


def _hands_off(draft: Draft, spec: ServiceSpec, svc: ServiceState) -> bool:
    """The agent leaves this service alone now: maintenance, shutdown, a job, a give-up."""
    if draft.maintenance or svc.maintenance or draft.stopping or spec.desired != "running":
        return True
    return svc.job is not None or svc.gave_up or svc.active == "unknown"


def _is_restart(op: str, svc: ServiceState) -> bool:
    """A restart, counted against the limit: not the first start of a unit that was simply
    stopped (never seen up by the agent and not failed), and never a stop."""
    return op == "restart" or (op == "start" and (svc.active == "failed" or svc.active_since > 0))


def _cause(draft: Draft, spec: ServiceSpec, svc: ServiceState) -> str:
    """Why the unit needs the agent, as the operator should read it first."""
    if svc.active in DOWN:
        return svc.exit or f"unit {svc.active}"
    if svc.health == "unhealthy":
        return f"unhealthy ({_probe_detail(draft, spec)})"
    return ""


def _log_job(
    draft: Draft, name: str, spec: ServiceSpec, svc: ServiceState, op: str, count: str
) -> None:
    """One line per job the agent starts on a unit, with the reason."""
    if op == "stop":
        draft.log("info", f"unit is {svc.active} but desired stopped; stopping", name)
    elif op == "restart":
        draft.log("warning", f"unhealthy ({_probe_detail(draft, spec)}); restarting{count}", name)
    elif count:
        draft.log("warning", f"{_cause(draft, spec, svc)}; restarting{count}", name)
    else:
        draft.log("info", f"unit is {svc.active}; starting", name)


def _give_up(draft: Draft, name: str, svc: ServiceState, reason: str, now: float) -> None:
    draft.log("warning", f"giving up: {reason}", name)
    svc = evolve(svc, gave_up=True, reason=reason)
    if svc.lifecycle != "Error":
        svc = _enter(draft, name, draft.service_spec(name), svc, "Error", reason, now)
    draft.set_service(name, svc)


def job_done(
    draft: Draft, name: str, ok: bool, permanent: bool, detail: str, at: float,
    denied: bool = False,
) -> None:  # fmt: skip
    """A unit job finished: free the slot; a permanent failure gives up with its reason."""
    svc = evolve(draft.services[name], job=None)
    if denied:
        detail = f"not permitted: {detail}; {POLKIT_HINT}"
    if not ok:
        draft.log("warning" if not permanent else "error", f"job failed: {detail}", name)
    if permanent:
        svc = evolve(svc, gave_up=True, denied=denied, reason=detail)
    draft.set_service(name, refresh(draft, name, svc, at))


def escalate(draft: Draft, name: str, now: float) -> None:
    """The agent's stop or restart outlasted the service's stop grace: kill the main process
    (SIGKILL); systemd's job then finishes the stop, and a restart starts the unit again."""
    svc = draft.services[name]
    spec = draft.service_spec(name)
    grace = spec.stop_grace
    if not grace or svc.job is None or svc.killed or svc.maintenance or draft.maintenance:
        return
    if draft.stopping:
        return
    if svc.lifecycle not in ("Restarting", "Stopping") or now - svc.since < grace:
        return
    unit = spec.unit
    draft.track(lambda i: UnitJob(i, unit, "kill", name))
    what = "restart" if svc.lifecycle == "Restarting" else "stop"
    draft.log("warning", f"{what} still not done after its stop grace ({grace:g}s): "
                         "killing the main process with SIGKILL", name)  # fmt: skip
    draft.set_service(name, evolve(svc, killed=True))


def settle(draft: Draft, name: str, now: float) -> None:
    """Time-driven bookkeeping: forget restarts after a stable period."""
    svc = draft.services[name]
    if not (svc.restarts or svc.gave_up or svc.next_attempt):
        return
    policy = draft.service_spec(name).restart
    if svc.lifecycle == "Running" and now - svc.since >= policy.stable_for:
        draft.log("info", f"stable for {policy.stable_for:g}s: restart counters reset", name)
        draft.set_service(
            name, evolve(svc, restarts=(), gave_up=False, next_attempt=0.0, reason="")
        )


def manager_started(draft: Draft, started: float, at: float) -> None:
    """A new systemd manager (a reboot): what was observed before is history, not a crash.

    Every service starts afresh: unobserved, no restarts counted, no give-up, so the first
    start after a reboot is a start, not a restart (1/limit) of a unit that "went down".
    """
    old, draft.manager_started = draft.manager_started, started
    if not old or started == old:
        return
    for name, svc in list(draft.services.items()):
        fresh = ServiceState(since=at, job=svc.job, maintenance=svc.maintenance,
                             restarts_total=svc.restarts_total)  # fmt: skip
        draft.set_service(name, fresh)
    draft.log("info", "systemd manager restarted (a reboot?): units are observed afresh, "
                      "restart counters reset")  # fmt: skip


def system_stopping(draft: Draft, why: str, at: float) -> None:
    """The system is shutting down (or, `why` empty, no longer): units going down are its
    doing, not failures. From then on the agent only observes; its unit jobs in flight are
    dropped (the journal keeps none for the next boot)."""
    if why == draft.stopping:
        return
    draft.stopping = why
    if not why:
        draft.log("info", "the system is no longer shutting down: acting on units again")
        for name in list(draft.services.keys()):
            reconcile(draft, name, at)
        return
    jobs = [i for i, action in draft.pending.items() if isinstance(action, UnitJob)]
    for action_id in jobs:
        draft.pending = draft.pending.delete(action_id)
    for name, svc in list(draft.services.items()):
        if svc.job is not None:
            draft.set_service(name, refresh(draft, name, evolve(svc, job=None), at))
    draft.log("info", f"the system is shutting down ({why}): observing only, "
                      f"{len(jobs)} unit job(s) dropped")  # fmt: skip


def reset(draft: Draft, name: str, at: float) -> None:
    """Operator reset (seed 000's reset()): clear give-up and counters."""
    svc = evolve(draft.services[name], restarts=(), gave_up=False, denied=False, next_attempt=0.0,
                 reason="")  # fmt: skip
    draft.set_service(name, refresh(draft, name, svc, at))
