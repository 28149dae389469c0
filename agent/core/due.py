"""Core: what a Tick must visit. Time-driven work (backoff, stop grace, stable_for, the seed-000
alert rules, phase alerts) costs what is due, not what exists: a service is dropped from
`State.busy` once a Tick would change nothing for it until an input does, and any change to it
(`Draft.set_service`) makes it busy again. Rare inputs that touch every service (goals, operator
commands, the manager, the cluster) wake them all."""

from __future__ import annotations

from agent.core import alerts, services
from agent.core.draft import Draft

SETTLED = ("Running", "Stopped")


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


def visit(draft: Draft) -> tuple[str, ...]:
    """The services this Tick visits."""
    return tuple(draft.busy.keys())


def rest(draft: Draft, name: str) -> None:
    """After a Tick visited `name`: drop it from the busy set if it is idle now."""
    if name in draft.busy and idle(draft, name):
        draft.busy = draft.busy.delete(name)
