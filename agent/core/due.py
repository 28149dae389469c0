"""Core: what a Tick must visit. Time-driven work (backoff, stop grace, stable_for, the seed-000
alert rules, phase alerts) costs what is due, not what exists: a service is dropped from
`State.busy` once a Tick would change nothing for it until an input does, and any change to it
(`Draft.set_service`) makes it busy again. Rare inputs that touch every service (goals, operator
commands, the manager, the cluster) wake them all.

A busy service whose only time-driven work is a deadline (its restart counters reset after
`stable_for`, a Starting/Stopping/Error alert threshold, a phase's `alert_after`) is passed over
until shortly before that deadline (`State.wake`): a fleet that just recovered from a burst of
restarts costs a Tick little for the next `stable_for`. Any change to the service, and every rare
input, forgets its entry, so it is visited again at the next Tick.
"""

from __future__ import annotations

from agent.core import alerts, services
from agent.core.draft import Draft
from agent.core.state import ServiceState

SETTLED = ("Running", "Stopped")
EARLY = 0.001
"""A service is visited this much before its deadline: rounding never makes a Tick miss it."""


def idle(draft: Draft, name: str) -> bool:
    """True when nothing time-driven is left for `name` (conservative: False when unsure)."""
    svc = draft.services.get(name)
    if svc is None:
        return True
    spec = draft.service_spec(name)
    if svc.lifecycle not in SETTLED or svc.job is not None or svc.killed:
        return False
    if svc.restarts or svc.gave_up or svc.next_attempt or svc.denied:
        return False  # settle() forgets them after stable_for; the restart limit may apply
    if services.wanted_job(spec, svc) is not None:
        return False  # backoff, dependencies or the unit's own Restart= may hold it back
    if len(svc.recent) >= spec.alerts.thrash_transitions or alerts.any_for(draft, name):
        return False
    return not any(p.alert_after for p in spec.phases if p.name == svc.phase)


def deadline(draft: Draft, name: str, now: float) -> float:
    """The earliest time after `now` a Tick could change `name` while no input does (`now`
    when unsure: then every Tick visits it). Asked right after a Tick at `now` visited it.

    Only time moves then, forward: no job (escalate), none wanted (reconcile: backoff,
    dependencies, the unit's own restart), no give-up or refusal, too few failure cycles for
    the thrash rule. What is left are thresholds that cross once as time goes on: settle() at
    `since + stable_for` while Running, the lifecycle's alert threshold, the phase alert.
    """
    svc = draft.services[name]
    spec = draft.service_spec(name)
    if svc.job is not None or svc.killed or svc.gave_up or svc.denied:
        return now
    if len(svc.recent) >= spec.alerts.thrash_transitions:
        return now
    if services.wanted_job(spec, svc) is not None:
        return now
    return min(_ahead(draft, name, svc, now), default=float("inf")) - EARLY


def _ahead(draft: Draft, name: str, svc: ServiceState, now: float) -> list[float]:
    """The thresholds settle(), the service rules and the phase rule have not crossed at `now`
    (judged as they judge them), as times."""
    spec = draft.service_spec(name)
    times = []
    stable = spec.restart.stable_for
    settling = (svc.restarts or svc.next_attempt) and svc.lifecycle == "Running"
    if settling and now - svc.since < stable:
        times.append(svc.since + stable)
    held = {"Error": spec.alerts.error_for, "Starting": spec.alerts.starting_for,
            "Stopping": spec.alerts.stopping_for}.get(svc.lifecycle)  # fmt: skip
    if held is not None and now - svc.since < held:
        times.append(svc.since + held)
    limit = next((p.alert_after for p in spec.phases if p.name == svc.phase), 0.0)
    if limit and svc.phase and now - svc.phase_since < limit:
        times.append(svc.phase_since + limit)
    return times


def visit(draft: Draft, now: float) -> tuple[str, ...]:
    """The services this Tick visits: the busy ones, but those passed over until later."""
    wake = draft.wake
    if not wake:
        return tuple(draft.busy.keys())
    return tuple(name for name in draft.busy if not _asleep(wake.get(name), now))


def _asleep(span: tuple[float, float] | None, now: float) -> bool:
    """Within the span a visit found quiet: not before that visit (time that went back may
    undo what it decided), and not from the deadline on."""
    return span is not None and span[0] <= now < span[1]


def rest(draft: Draft, name: str, now: float) -> None:
    """After a Tick at `now` visited `name`: drop it from the busy set if it is idle now, else
    note until when later Ticks may pass it over."""
    if name not in draft.busy:
        return
    if idle(draft, name):
        draft.busy = draft.busy.delete(name)
        forget(draft, name)
        return
    until = deadline(draft, name, now)
    if until > now:
        draft.wake = draft.wake.set(name, (now, until))
    else:
        forget(draft, name)


def forget(draft: Draft, name: str) -> None:
    """Visit `name` at the next Tick again."""
    if name in draft.wake:
        draft.wake = draft.wake.delete(name)
