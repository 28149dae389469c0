"""Built-in alert rules (seed 000 and the agent's own) and their delivery bookkeeping. Pure.

An alert is identified by its fingerprint (name + subject). Each configured sink receives every
change (firing, resolved) as a tracked SendAlert; a failed delivery is retried later, so a sink
that is down gets what it missed once it is back, across restarts. While firing, reminders go
out every `repeat_interval` (at most a minute for Alertmanager, whose clients must re-send).
"""

from __future__ import annotations

from collections.abc import Callable

from immutables import Map

from agent.core.actions import Alert, SendAlert
from agent.core.draft import Draft, evolve
from agent.core.lifecycle import UP
from agent.core.spec import AlertSink, Severity
from agent.core.state import AlertState, Delivery, ServiceState

RETRY_AFTER = 30.0
GOAL_BROKEN_FOR = 300.0
ALERTMANAGER_RESEND = 60.0


def service_rules(draft: Draft, name: str, svc: ServiceState, now: float) -> None:
    """Seed 000's rules for one service, plus the restart limit and unhealthy-with-alert."""
    service = draft.service_spec(name)
    spec = service.alerts
    quiet = svc.lifecycle == "Running" and not svc.gave_up
    if quiet and len(svc.recent) < spec.thrash_transitions and not _any_for(draft, name):
        return
    held = now - svc.since
    thrash = 0
    if len(svc.recent) >= spec.thrash_transitions:
        thrash = sum(1 for t in svc.recent if t > now - spec.thrash_window)
    unhealthy = svc.health == "unhealthy" and service.on_unhealthy == "alert"
    rules: tuple[tuple[str, bool, Severity], ...] = (
        ("ServiceError", svc.lifecycle == "Error" and held >= spec.error_for, "critical"),
        ("ServiceStartingTooLong", svc.lifecycle == "Starting" and held >= spec.starting_for,
         "warning"),
        ("ServiceStoppingTooLong", svc.lifecycle == "Stopping" and held >= spec.stopping_for,
         "warning"),
        ("ServiceThrashing", thrash >= spec.thrash_transitions, "warning"),
        ("RestartLimitReached", svc.gave_up, "critical"),
        ("ServiceUnhealthy", unhealthy and svc.active in UP, "warning"),
    )  # fmt: skip
    for rule, active, severity in rules:
        if active or f"{rule}:{name}" in draft.alerts:
            summary = _summary(rule, name, svc, held, thrash, spec.thrash_window)
            set_alert(draft, rule, name, active, severity, summary, now)


def _summary(
    rule: str, name: str, svc: ServiceState, held: float, thrash: int, window: float
) -> str:
    """The one-line text of a service alert."""
    if rule == "ServiceError":
        return f"{name} in Error for {held:.0f}s: {svc.reason}"
    if rule in ("ServiceStartingTooLong", "ServiceStoppingTooLong"):
        return f"{name} {svc.lifecycle} for {held:.0f}s"
    if rule == "ServiceThrashing":
        return f"{name}: {thrash} transitions in {window:g}s"
    return f"{name}: {svc.reason}"


_SERVICE_RULES = (
    "ServiceError", "ServiceStartingTooLong", "ServiceStoppingTooLong", "ServiceThrashing",
    "RestartLimitReached", "ServiceUnhealthy",
)  # fmt: skip


def _any_for(draft: Draft, subject: str) -> bool:
    return bool(draft.alerts) and any(f"{r}:{subject}" in draft.alerts for r in _SERVICE_RULES)


def domain_rule(draft: Draft, name: str, now: float) -> None:
    """A domain whose goal stays broken too long."""
    dom = draft.domains[name]
    broken = not dom.satisfied and now - dom.since >= GOAL_BROKEN_FOR
    summary = f"goal of domain {name} broken for {now - dom.since:.0f}s"
    set_alert(draft, "GoalBroken", name, broken, "warning", summary, now)


def set_alert(
    draft: Draft, rule: str, subject: str, active: bool, severity: Severity, summary: str,
    now: float,
) -> None:  # fmt: skip
    """Fire or resolve an alert; only changes reach the sinks."""
    key = f"{rule}:{subject}"
    old = draft.alerts.get(key)
    if old is None and not active:
        return
    if old is not None and old.alert.firing == active:
        return
    labels = (("alertname", rule), ("severity", severity), ("subject", subject))
    if active:
        alert = Alert(key, rule, labels, summary, severity, True, now)
    else:
        assert old is not None
        alert = evolve(old.alert, firing=False, ends_at=now)
    sinks = {s.name: Delivery(due=now) for s in draft.goals.sinks}
    pending = old.deliveries if old is not None else Map()
    deliveries = Map({n: evolve(d, action=pending[n].action) if n in pending else d
                      for n, d in sinks.items()})  # fmt: skip
    draft.alerts = draft.alerts.set(key, AlertState(alert, deliveries))
    draft.log("warning" if active else "info", f"alert {rule} {'firing' if active else 'resolved'}",
              subject)  # fmt: skip


def deliver(draft: Draft, now: float) -> None:
    """Send what is due to each sink; forget resolved alerts once every sink has them."""
    sinks = {s.name: s for s in draft.goals.sinks}
    for key, state in draft.alerts.items():
        deliveries = state.deliveries
        for name, delivery in sorted(state.deliveries.items()):
            sink = sinks.get(name)
            if sink is None or delivery.action is not None or not _due(delivery, now):
                continue
            action = draft.track(_sender(name, _with_expiry(state.alert, sink, now)))
            deliveries = deliveries.set(name, Delivery(action=action, due=None))
        if deliveries is not state.deliveries:
            draft.alerts = draft.alerts.set(key, evolve(state, deliveries=deliveries))


def _due(delivery: Delivery, now: float) -> bool:
    return delivery.due is not None and delivery.due <= now


def _sender(sink: str, alert: Alert) -> Callable[[int], SendAlert]:
    return lambda action_id: SendAlert(action_id, sink, alert)


def _with_expiry(alert: Alert, sink: AlertSink, now: float) -> Alert:
    """A firing alert expires unless re-sent (Alertmanager's client contract)."""
    if not alert.firing:
        return alert
    return evolve(alert, ends_at=now + 4 * _repeat(sink))


def _repeat(sink: AlertSink) -> float:
    if sink.kind == "alertmanager":
        return min(sink.repeat_interval, ALERTMANAGER_RESEND)
    return sink.repeat_interval


def delivered(draft: Draft, action: SendAlert, ok: bool, now: float) -> None:
    """A delivery finished: schedule the reminder, the retry, or forget a resolved alert."""
    key = action.alert.fingerprint
    state = draft.alerts.get(key)
    if state is None or action.sink not in state.deliveries:
        return
    delivery = state.deliveries[action.sink]
    if delivery.action != action.id:
        return
    sink = next((s for s in draft.goals.sinks if s.name == action.sink), None)
    current = action.alert.firing == state.alert.firing
    due: float | None = None
    if not ok:
        due = now + RETRY_AFTER
    elif not current:
        due = now  # the alert changed while this was in flight: send the news
    elif state.alert.firing and sink is not None:
        due = now + _repeat(sink)
    deliveries = state.deliveries.set(action.sink, Delivery(action=None, due=due))
    settled = all(d.due is None and d.action is None for d in deliveries.values())
    done = not state.alert.firing and settled
    draft.alerts = (
        draft.alerts.delete(key)
        if done
        else draft.alerts.set(key, evolve(state, deliveries=deliveries))
    )
