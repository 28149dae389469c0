"""Core: Built-in alert rules (seed 000 and the agent's own) and their delivery bookkeeping. Pure.

An alert is identified by its fingerprint (name + subject). Each configured sink receives every
change (firing, resolved) as a tracked SendAlert; a failed delivery is retried later, so a sink
that is down gets what it missed once it is back, across restarts. While firing, reminders go
out every `repeat_interval` (at most a minute for Alertmanager, whose clients must re-send).

A domain transition's alert effect is first delivered as the transition's own effect (its
success gates the assignments). Then its alert stands for the state the transition set: it is
kept firing like a built-in one until one of those assignments no longer holds (a later
transition reset it, the goals changed), and then resolved. A transition that assigns nothing
sends a one-off alert, which expires on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import StrEnum
from functools import lru_cache

from immutables import Map

from agent.core.actions import Alert, Owner, RunEffect, SendAlert
from agent.core.draft import Draft, evolve
from agent.core.lifecycle import UP
from agent.core.spec import AlertSink, DomainSpec, Scalar, Severity, Transition
from agent.core.state import AlertState, Delivery, ServiceState


class Builtin(StrEnum):
    """The agent's own alert names; goal files may not reuse them (a transition named like one
    would make the built-in alert flap)."""

    SERVICE_ERROR = "ServiceError"
    SERVICE_STARTING_TOO_LONG = "ServiceStartingTooLong"
    SERVICE_STOPPING_TOO_LONG = "ServiceStoppingTooLong"
    SERVICE_THRASHING = "ServiceThrashing"
    RESTART_LIMIT_REACHED = "RestartLimitReached"
    SERVICE_UNHEALTHY = "ServiceUnhealthy"
    SERVICE_PHASE_TOO_LONG = "ServicePhaseTooLong"
    UNIT_NOT_PERMITTED = "UnitNotPermitted"
    GOAL_BROKEN = "GoalBroken"
    GOALS_INVALID = "GoalsInvalid"
    EXPRESSION_FAILED = "ExpressionFailed"
    ALL_MEMBERS_DOWN = "AllMembersDown"
    FAILOVER_ACTIVE = "FailoverActive"
    ROUTE_CHANGED = "RouteChanged"
    CLUSTER_UNAVAILABLE = "ClusterUnavailable"
    CLUSTER_GOALS_DIFFER = "ClusterGoalsDiffer"
    JOURNAL_DEGRADED = "JournalDegraded"


def fingerprint(name: str, subject: str) -> str:
    """What identifies an alert across firing and resolved: its name and subject."""
    return f"{name}:{subject}"


RETRY_AFTER = 30.0
GOAL_BROKEN_FOR = 300.0
ALERTMANAGER_RESEND = 60.0
EXPIRY = 4 * ALERTMANAGER_RESEND
"""A firing alert without a future end (an effect, or one restored late) ends after this."""


def service_rules(draft: Draft, name: str, svc: ServiceState, now: float) -> None:
    """Seed 000's rules for one service, plus the restart limit and unhealthy-with-alert."""
    service = draft.service_spec(name)
    spec = service.alerts
    quiet = svc.lifecycle == "Running" and not svc.gave_up
    held_any = _any_for(draft, name)
    if quiet and len(svc.recent) < spec.thrash_transitions and not held_any:
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
        ("RestartLimitReached", svc.gave_up and not svc.denied, "critical"),
        ("UnitNotPermitted", svc.denied, "critical"),
        ("ServiceUnhealthy", unhealthy and svc.active in UP, "warning"),
    )  # fmt: skip
    for rule, active, severity in rules:
        if (active or held_any) and news(draft, fingerprint(rule, name), active):
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
        return f"{name}: {thrash} failure cycles in {window:g}s"
    return f"{name}: {svc.reason}"


_SERVICE_RULES = (
    "ServiceError", "ServiceStartingTooLong", "ServiceStoppingTooLong", "ServiceThrashing",
    "RestartLimitReached", "ServiceUnhealthy", "UnitNotPermitted", "ServicePhaseTooLong",
)  # fmt: skip


def any_for(draft: Draft, subject: str) -> bool:
    """Whether a built-in service alert about `subject` is held (firing or being resolved)."""
    return _any_for(draft, subject)


def _any_for(draft: Draft, subject: str) -> bool:
    alerts = draft.alerts
    return bool(alerts) and any(key in alerts for key in _service_keys(subject))


@lru_cache(maxsize=8192)
def _service_keys(subject: str) -> tuple[str, ...]:
    """The fingerprints of the built-in service alerts about `subject`."""
    return tuple(fingerprint(r, subject) for r in _SERVICE_RULES)


def domain_rule(draft: Draft, name: str, now: float) -> None:
    """A domain whose goal stays broken too long."""
    dom = draft.domains[name]
    broken = not dom.satisfied and now - dom.since >= GOAL_BROKEN_FOR
    if news(draft, fingerprint("GoalBroken", name), broken):
        summary = f"goal of domain {name} broken for {now - dom.since:.0f}s"
        set_alert(draft, "GoalBroken", name, broken, "warning", summary, now)


def set_alert(
    draft: Draft, rule: str, subject: str, active: bool, severity: Severity, summary: str,
    now: float,
) -> None:  # fmt: skip
    """Fire or resolve an alert; only changes reach the sinks."""
    key = fingerprint(rule, subject)
    if not news(draft, key, active):
        return
    old = draft.alerts.get(key)
    labels = (("alertname", rule), ("severity", severity), ("subject", subject))
    if active:
        alert = Alert(key, rule, labels, summary, severity, True, now)
    else:
        assert old is not None
        alert = evolve(old.alert, firing=False, ends_at=now)
    _announce(draft, alert, subject, (s.name for s in draft.goals.sinks), now)


def news(draft: Draft, key: str, active: bool) -> bool:
    """Whether firing (`active`) or resolving the alert `key` changes what is held."""
    old = draft.alerts.get(key)
    return active if old is None else old.alert.firing != active


def _announce(draft: Draft, alert: Alert, subject: str, sinks: Iterable[str], now: float) -> None:
    """Record a changed alert and make it due at `sinks` now (after what is in flight)."""
    _record(draft, alert, {n: now for n in sinks})
    state = "firing" if alert.firing else "resolved"
    draft.log("warning" if alert.firing else "info", f"alert {alert.name} {state}", subject)


def effect_alert(action: RunEffect, now: float) -> Alert:
    """The alert an alert effect announces, firing; it expires unless kept firing."""
    subject = action.owner.name
    name = Builtin.ROUTE_CHANGED.value if action.owner.kind == "group" else action.reason
    labels = [("alertname", name), ("severity", action.effect.severity), ("subject", subject)]
    if action.target:
        labels.append(("target", action.target))
    summary = action.fill(action.effect.summary)
    severity = action.effect.severity
    key = fingerprint(name, subject)
    return Alert(key, name, tuple(labels), summary, severity, True, now, now + EXPIRY)


def hold_effect_alert(draft: Draft, domain: str, tr: Transition, now: float) -> None:
    """A transition completed: keep its alert firing while its assignments hold.

    Its sinks already have it (the effect delivered it), so reminders are what is due next;
    a delivery still in flight (say, the resolution of an earlier page) is waited for.
    With several alert effects, the first one's text stands for the transition.
    """
    if not _holding(tr):
        return
    names = {fx.sink for fx in tr.effects if fx.kind == "alert"}
    sinks = [s for s in draft.goals.sinks if s.name in names or "" in names]
    if not sinks:
        return
    effect = next(fx for fx in tr.effects if fx.kind == "alert")
    alert = effect_alert(RunEffect(0, effect, Owner("domain", domain), tr.name), now)
    _record(draft, alert, {s.name: now + _repeat(s) for s in sinks})


def _record(draft: Draft, alert: Alert, due: dict[str, float]) -> None:
    """Store `alert` with a delivery per sink due then, after any still in flight."""
    old = draft.alerts.get(alert.fingerprint)
    pending = old.deliveries if old is not None else Map()
    deliveries = Map({n: Delivery(action=pending[n].action if n in pending else None, due=at)
                      for n, at in due.items()})  # fmt: skip
    draft.alerts = draft.alerts.set(alert.fingerprint, AlertState(alert, deliveries))


def _holding(tr: Transition) -> bool:
    """Whether a transition's alert stands for something: it has one, and assignments."""
    return bool(tr.assign) and any(fx.kind == "alert" for fx in tr.effects)


def release_effect_alerts(draft: Draft, domain: str, spec: DomainSpec, now: float) -> None:
    """Resolve the alerts of transitions whose assignments no longer hold."""
    if not draft.alerts:
        return
    values = draft.domains[domain].values
    for tr in spec.transitions:
        held = draft.alerts.get(fingerprint(tr.name, domain))
        if held is None or not held.alert.firing:
            continue
        if not _holding(tr) or not _holds(tr.assign, values):
            _resolve(draft, held, domain, now)


def _holds(assign: tuple[tuple[str, Scalar], ...], values: Map[str, Scalar]) -> bool:
    return all(name in values and values[name] == value for name, value in assign)


def _resolve(draft: Draft, held: AlertState, subject: str, now: float) -> None:
    alert = evolve(held.alert, firing=False, ends_at=now)
    _announce(draft, alert, subject, held.deliveries.keys(), now)


def release_orphans(draft: Draft, now: float) -> None:
    """After a goal reload: resolve firing alerts whose subject or transition is gone."""
    for held in list(draft.alerts.values()):
        if held.alert.firing and not _still_meant(draft, held.alert):
            _resolve(draft, held, held.alert.subject, now)


def _still_meant(draft: Draft, alert: Alert) -> bool:
    subject = alert.subject
    if alert.name in _SERVICE_RULES:
        return subject in draft.services
    if alert.name in ("AllMembersDown", "FailoverActive"):
        return subject in draft.index.groups
    if alert.name == Builtin.CLUSTER_UNAVAILABLE:
        return any(d.scope == "cluster" for d in draft.goals.domains)
    if alert.name in ("GoalBroken", "GoalsInvalid", Builtin.EXPRESSION_FAILED,
                      Builtin.CLUSTER_GOALS_DIFFER):  # fmt: skip
        return alert.name == "GoalsInvalid" or subject in draft.domains
    spec = draft.index.domains.get(subject)
    return spec is not None and any(t.name == alert.name for t in spec.transitions)


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
