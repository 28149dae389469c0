"""Core: Seed 000's service phases, the sub-states within Starting and Running. Pure.

A service may declare phases, each a CEL condition over the probes it names
(`probes.<name>.ok`: the last result succeeded; `.healthy`: the verdict; `.result`: the last
JSON-RPC result, null when none), the current `phase` and the `lifecycle`. The phase is the
first, in the order written, whose condition holds; when none holds there is none. Phases mean
something only while the lifecycle is Starting or Running; in any other state a service has no
phase (the lifecycle says it all). An expression failing at run time leaves the phase unknown
(`phase_error` says why) and never stops the agent. A phase's `alert_after` fires
ServicePhaseTooLong once the service has been in that phase that long; leaving it resolves it.
"""

from __future__ import annotations

import json
from functools import lru_cache

from agent.core.alerts import Builtin, fingerprint, news, set_alert
from agent.core.draft import Draft, evolve
from agent.core.expr import Decls, ExprError, evaluate, references
from agent.core.spec import ServiceSpec
from agent.core.state import ServiceState

DECLS: Decls = (("lifecycle", "string"), ("phase", "string"))
"""What a phase condition sees besides `probes`."""
ACTIVE = frozenset({"Starting", "Running"})


def probes_read(spec: ServiceSpec) -> tuple[str, ...]:
    """The probes a service's phase conditions name, in order, each once."""
    names = (n for p in spec.phases for kind, n in references(p.when) if kind == "probes")
    return tuple(dict.fromkeys(names))


def update(draft: Draft, name: str, now: float) -> None:
    """Re-evaluate the service's phase; a change is logged, stored and re-judged by the rule."""
    spec = draft.service_spec(name)
    svc = draft.services[name]
    if not spec.phases and not svc.phase and not svc.phase_error:
        return
    phase, error = current(draft, spec, svc) if svc.lifecycle in ACTIVE else ("", "")
    if (phase, error) == (svc.phase, svc.phase_error):
        return
    _log(draft, name, svc, phase, error, now)
    since = svc.phase_since if phase == svc.phase else now
    draft.set_service(name, evolve(svc, phase=phase, phase_since=since, phase_error=error))
    if phase != svc.phase:
        rule(draft, name, now)


def current(draft: Draft, spec: ServiceSpec, svc: ServiceState) -> tuple[str, str]:
    """(phase, "") for the first phase that holds, ("", "") for none, ("", why) when unknown."""
    data = {"probes": _facts(draft, spec), "phase": svc.phase, "lifecycle": svc.lifecycle}
    for phase in spec.phases:
        try:
            if evaluate(phase.when, DECLS, data, "bool"):
                return phase.name, ""
        except ExprError as err:
            return "", f"phase {phase.name}: {err.message}"[:300]
    return "", ""


def _facts(draft: Draft, spec: ServiceSpec) -> dict[str, dict[str, object]]:
    facts: dict[str, dict[str, object]] = {}
    for name in probes_read(spec):
        probe = draft.probes.get(name)
        if probe is not None:
            ok, healthy = probe.ok_streak > 0, probe.healthy is True
            facts[name] = {"ok": ok, "healthy": healthy, "result": _json(probe.result)}
    return facts


@lru_cache(maxsize=1024)
def _json(text: str) -> object:
    """The stored result as a value (null when none); the adapter wrote it, bounded."""
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _log(draft: Draft, name: str, svc: ServiceState, phase: str, error: str, now: float) -> None:
    if error:
        draft.log("warning", f"phase unknown: {error}", name)
        return
    old = svc.phase or ("unknown" if svc.phase_error else "none")
    held = f" after {now - svc.phase_since:.0f}s" if svc.phase else ""
    why = f" ({svc.lifecycle})" if svc.lifecycle not in ACTIVE else ""
    draft.log("info", f"phase {old} -> {phase or 'none'}{held}{why}", name)


def rule(draft: Draft, name: str, now: float) -> None:
    """ServicePhaseTooLong: in one phase longer than its `alert_after`, with the phase said."""
    svc = draft.services[name]
    spec = draft.service_spec(name)
    limit = next((p.alert_after for p in spec.phases if p.name == svc.phase), 0.0)
    rule_name = Builtin.SERVICE_PHASE_TOO_LONG.value  # plain text: journaled as is
    key = fingerprint(rule_name, name)
    if not limit and key not in draft.alerts:
        return
    held = now - svc.phase_since
    active = bool(limit) and svc.phase != "" and held >= limit
    if news(draft, key, active):
        summary = f"{name} in phase {svc.phase} ({svc.lifecycle}) for {held:.0f}s, over {limit:g}s"
        set_alert(draft, rule_name, name, active, "warning", summary, now)
