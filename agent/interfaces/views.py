"""Interfaces: Human and JSON views of the state, for `setpoint status`, `plan` and the HTTP API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.core.actions import Action, RunEffect, SendAlert, TrackedAction, UnitJob
from agent.core.state import AlertState, ServiceState, State


def describe(action: Action) -> str:
    """One line saying what an action does."""
    if isinstance(action, UnitJob):
        return f"#{action.id} systemd {action.op} {action.unit} (service {action.service})"
    if isinstance(action, RunEffect):
        what = " ".join(action.effect.argv) or action.effect.summary or action.effect.kind
        target = f" -> {action.target}" if action.target else ""
        return f"#{action.id} {action.effect.kind} [{action.owner} {action.reason}] {what}{target}"
    if isinstance(action, SendAlert):
        state = "firing" if action.alert.firing else "resolved"
        return f"#{action.id} alert {action.alert.name} {state} to {action.sink}"
    return repr(action)


UnitLogsOf = Callable[[str], dict[str, Any] | None]
"""An alert's fingerprint -> the unit log lines it was sent with (adapters.alerts.unitlogs)."""


def status_dict(state: State, now: float, logs: UnitLogsOf | None = None) -> dict[str, Any]:
    """The state as plain JSON-ready data; firing alerts with their unit's log lines, if any."""
    c = state.cluster
    return {
        "maintenance": state.maintenance,
        "goals_digest": state.goals.digest,
        "cluster": {
            "healthy": c.healthy,
            "leader": c.leader,
            "fence": c.fence,
            "members": list(c.members),
            "domains": sorted(d.name for d in state.goals.domains if d.scope == "cluster"),
        },
        "services": {
            name: {
                "lifecycle": svc.lifecycle,
                "for_seconds": round(max(0.0, now - svc.since), 3),
                "active": svc.active,
                "sub": svc.sub,
                "health": svc.health,
                "reason": svc.reason,
                "restarts": svc.restarts_total,
                "transitions": svc.transitions,
                "gave_up": svc.gave_up,
                "maintenance": svc.maintenance,
                "job": svc.job,
                **_phase(svc, now),
            }
            for name, svc in sorted(state.services.items())
        },
        "domains": {
            name: {
                "satisfied": dom.satisfied,
                "values": dict(sorted(dom.values.items())),
                "in_flight": sorted(dom.in_flight.keys()),
                "error": dom.error,
            }
            for name, dom in sorted(state.domains.items())
        },
        "groups": {
            name: {"route": g.route, "applied": g.applied, "switches": g.switches}
            for name, g in sorted(state.groups.items())
        },
        "alerts": [
            {
                "name": a.alert.name,
                "subject": a.alert.subject,
                "severity": a.alert.severity,
                "summary": a.alert.summary,
                "for_seconds": round(max(0.0, now - a.alert.starts_at), 3),
                **_logs(logs, a),
            }
            for a in firing(state)
        ],
        "pending": [describe(a) for a in pending(state)],
    }


def _phase(svc: ServiceState, now: float) -> dict[str, Any]:
    """Seed 000's phase within the lifecycle: null when none holds (or unknown, with why)."""
    held = round(max(0.0, now - svc.phase_since), 3) if svc.phase else None
    return {"phase": svc.phase or None, "phase_for_seconds": held, "phase_error": svc.phase_error}


def _logs(logs: UnitLogsOf | None, held: AlertState) -> dict[str, Any]:
    found = logs(held.alert.fingerprint) if logs is not None else None
    return {"logs": found} if found is not None else {}


def firing(state: State) -> list[AlertState]:
    """Firing alerts, oldest first."""
    alerts = (a for a in state.alerts.values() if a.alert.firing)
    return sorted(alerts, key=lambda a: (a.alert.starts_at, a.alert.fingerprint))


def pending(state: State) -> list[TrackedAction]:
    """Pending tracked actions in id order."""
    return [state.pending[i] for i in sorted(state.pending.keys())]


def status_text(doc: dict[str, Any]) -> str:
    """A compact table for terminals, from `status_dict`'s document (live or journaled)."""
    lines = ["maintenance mode: ON" if doc["maintenance"] else "maintenance mode: off", ""]
    lines.append(f"{'SERVICE':<24} {'STATE':<11} {'FOR':>8} {'ACTIVE':<20} {'HEALTH':<9} RESTARTS")
    for name, svc in doc["services"].items():
        active = f"{svc['active']}/{svc['sub']}" if svc["sub"] else svc["active"]
        flag = " (maintenance)" if svc["maintenance"] else ""
        reason = f"  {svc['reason']}" if svc["reason"] else ""
        reason += _phase_text(svc)
        lines.append(
            f"{name:<24} {svc['lifecycle']:<11} {_age(svc['for_seconds']):>8} {active:<20} "
            f"{svc['health']:<9} {svc['restarts']}{flag}{reason}"
        )
    for name, dom in doc["domains"].items():
        values = ", ".join(f"{k}={v}" for k, v in dom["values"].items())
        verdict = "goal holds" if dom["satisfied"] else "goal BROKEN"
        busy = f"; in flight: {', '.join(dom['in_flight'])}" if dom["in_flight"] else ""
        lines.append(f"domain {name}: {verdict} ({values}){busy}")
    c = doc["cluster"]
    if c["members"] or c["domains"]:
        lead = f"this node, fence {c['fence']}" if c["fence"] else c["leader"] or "none"
        link = "healthy" if c["healthy"] else "DOWN: cluster domains paused"
        lines.append(f"cluster: {link}; leader {lead}; members {', '.join(c['members']) or '-'}")
    for name, group in doc["groups"].items():
        applied = group["applied"]
        moving = f" (switching from {applied})" if applied != group["route"] else ""
        lines.append(f"group {name}: route {group['route'] or '-'}{moving}; "
                     f"{group['switches']} switches")  # fmt: skip
    lines.append(f"alerts firing: {len(doc['alerts'])}")
    lines.extend(
        f"  {a['severity']:<8} {a['name']} ({a['subject']}) "
        f"for {_age(a['for_seconds'])}: {a['summary']}"
        for a in doc["alerts"]
    )
    lines.append(f"pending actions: {len(doc['pending'])}")
    lines.extend(f"  {p}" for p in doc["pending"])
    return "\n".join(lines)


def _phase_text(svc: dict[str, Any]) -> str:
    """`  phase Syncing for 3.0m`, or why it is unknown; nothing for a service without."""
    if svc.get("phase"):
        return f"  phase {svc['phase']} for {_age(svc['phase_for_seconds'])}"
    return f"  phase unknown: {svc['phase_error']}" if svc.get("phase_error") else ""


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
