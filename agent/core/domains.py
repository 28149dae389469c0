"""Core: Seed 001's domains: rest while the goal holds; when it breaks, fire every enabled
transition.

A transition's effects run as independent tracked actions; its assignments apply only once all
of them succeeded, so a domain never sits half-way. A failed effect makes its transition wait
`retry_after` before it may fire again; other transitions are unaffected. Pure.
"""

from __future__ import annotations

from collections.abc import Callable

from immutables import Map

from agent.core import alerts, cluster
from agent.core.actions import Owner, RunEffect
from agent.core.draft import Draft, evolve
from agent.core.expr import ExprError, evaluate, references
from agent.core.lifecycle import UP
from agent.core.spec import DomainSpec, Effect, Scalar, Transition
from agent.core.state import DomainState, InFlight

MAX_ROUNDS = 16


def facts(draft: Draft, spec: DomainSpec, now: float) -> dict[str, object] | None:
    """The services and probes a domain's expressions name, as CEL maps.

    None while a named service is unobserved, up with its probes' verdict still pending, or
    being started or restarted by the agent (recovery in place comes first, failover when it
    fails, as in Pacemaker), or while a named probe has no verdict yet:
    a domain acts on facts, not on the blind spot right after a start.
    """
    if spec.scope == "cluster":
        return cluster.facts(draft, spec, now)
    services: dict[str, dict[str, object]] = {}
    probes: dict[str, dict[str, object]] = {}
    for text in spec.expressions:
        for kind, name in references(text):
            if kind == "services" and name in draft.services:
                svc = draft.services[name]
                if svc.active == "unknown" or svc.job is not None:
                    return None
                if svc.active in UP and svc.health == "unknown":
                    return None
                services[name] = {
                    "state": svc.lifecycle,
                    "healthy": svc.health == "healthy" and svc.lifecycle == "Running",
                    "health": svc.health,
                    "active": svc.active,
                    "sub": svc.sub,
                    "restarts": svc.restarts_total,
                }
            elif kind == "probes" and name in draft.probes:
                probe = draft.probes[name]
                if probe.healthy is None:
                    return None
                probes[name] = {"healthy": probe.healthy is True, "over_budget": probe.over_budget}
    return {"services": services, "probes": probes}


def initial(spec: DomainSpec, old: DomainState | None) -> DomainState:
    """Fresh variables at their defaults, keeping old values whose type still matches."""
    values: dict[str, Scalar] = {}
    for var in spec.variables:
        prev = old.values.get(var.name) if old else None
        keep = prev is not None and type(prev) is type(var.default)
        values[var.name] = prev if keep and prev is not None else var.default
    base = old or DomainState()
    return evolve(base, values=Map(values), in_flight=Map(), retry_at=Map())


def evaluate_domain(draft: Draft, name: str, now: float) -> None:
    """Bring a domain's bindings and goal up to date; fire transitions while it is broken."""
    spec = draft.domain_spec(name)
    for _ in range(MAX_ROUNDS):
        if not _round(draft, name, spec, now):
            break
    else:
        draft.log("warning", f"domain did not settle within {MAX_ROUNDS} rounds", name)
    alerts.release_effect_alerts(draft, name, spec, now)


def _round(draft: Draft, name: str, spec: DomainSpec, now: float) -> bool:
    """One evaluation; True when an immediate assignment asks for another round.

    An expression that fails (budget exceeded, division by zero, a wrong type...) pauses the
    domain: nothing fires and nothing is stored but the error, until a later input makes every
    expression evaluate again. A failure never reaches the rest of the agent.
    """
    dom = draft.domains[name]
    decls = draft.index.decls[name]
    if spec.scope == "cluster" and _not_ours(draft, name, spec, now):
        return False
    known = facts(draft, spec, now)
    if known is None:
        return False
    try:
        env = dict(known)
        values = dict(dom.values)
        for var in spec.variables:
            if var.bind:
                env.update(values)
                values[var.name] = _eval(spec, var.bind, decls, env, var.type)
        env.update(values)
        satisfied = bool(_eval(spec, spec.goal, decls, env, "bool"))
        enabled: list[Transition] = []
        if not satisfied and not draft.maintenance:
            enabled = [tr for tr in spec.transitions if _ready(dom, tr, now)
                       and _eval(spec, tr.guard, decls, env, "bool")]  # fmt: skip
    except _Failed as failed:
        _pause(draft, name, dom, str(failed), now)
        return False
    fired: dict[str, Scalar] = {}
    in_flight = dom.in_flight
    for tr in enabled:
        in_flight = _fire(draft, name, tr, in_flight, fired)
    values.update(fired)
    _store(draft, name, dom, values, satisfied, in_flight, now)
    return bool(fired)


def _not_ours(draft: Draft, name: str, spec: DomainSpec, now: float) -> bool:
    """A cluster domain this node may not decide now (follower, link down, definitions differ)."""
    why = cluster.acting(draft, spec)
    differs = why.startswith("its definition differs")
    summary = f"cluster domain {name} is not decided: {why}"
    rule = alerts.Builtin.CLUSTER_GOALS_DIFFER.value
    alerts.set_alert(draft, rule, name, differs, "critical", summary, now)
    return bool(why)


def _ready(dom: DomainState, tr: Transition, now: float) -> bool:
    return tr.name not in dom.in_flight and dom.retry_at.get(tr.name, 0.0) <= now


class _Failed(Exception):
    """An expression of the domain failed; the message says where and why."""


def _eval(
    spec: DomainSpec, text: str, decls: tuple[tuple[str, str], ...], env: dict[str, object],
    want: str,
) -> Scalar:  # fmt: skip
    try:
        return evaluate(text, decls, env, want)  # type: ignore[arg-type]
    except ExprError as err:
        raise _Failed(f"{spec.origin(text)}: {err.message}") from None


def _pause(draft: Draft, name: str, dom: DomainState, error: str, now: float) -> None:
    """Hold the domain where it is, with the error as its reason (and an alert)."""
    if error == dom.error:
        return
    draft.log("error", f"expression failed, domain paused: {error}", name)
    draft.set_domain(name, evolve(dom, error=error))
    rule = alerts.Builtin.EXPRESSION_FAILED.value
    alerts.set_alert(draft, rule, name, True, "warning", f"domain {name} paused: {error}", now)


def _fire(
    draft: Draft, name: str, tr: Transition, in_flight: Map[str, InFlight], fired: dict[str, Scalar]
) -> Map[str, InFlight]:
    if not tr.effects:
        fired.update(tr.assign)
        draft.log("info", f"transition {tr.name} applied", name)
        return in_flight
    owner = Owner("domain", name)
    fence = draft.cluster.fence if draft.domain_spec(name).scope == "cluster" else 0
    track = draft.track_cluster if fence else draft.track
    ids = tuple(track(_effect_maker(effect, owner, tr.name, fence)) for effect in tr.effects)
    draft.log("info", f"transition {tr.name} fired: actions {list(ids)}", name)
    return in_flight.set(tr.name, InFlight(ids))


def _effect_maker(
    effect: Effect, owner: Owner, reason: str, fence: int
) -> Callable[[int], RunEffect]:
    return lambda action_id: RunEffect(action_id, effect, owner, reason, fence=fence)


def _store(
    draft: Draft,
    name: str,
    dom: DomainState,
    values: dict[str, Scalar],
    satisfied: bool,
    in_flight: Map[str, InFlight],
    now: float,
) -> None:
    new_values = dom.values if dict(dom.values) == values else Map(values)
    if dom.error:
        draft.log("info", "expressions evaluate again; domain resumed", name)
        rule = alerts.Builtin.EXPRESSION_FAILED.value
        alerts.set_alert(draft, rule, name, False, "warning", "", now)
    if satisfied != dom.satisfied:
        draft.log("info", "goal holds" if satisfied else "goal broken", name)
    since = now if satisfied != dom.satisfied else dom.since
    new = evolve(
        dom, values=new_values, satisfied=satisfied, since=since, in_flight=in_flight, error=""
    )
    if new != dom:
        draft.set_domain(name, new)


def effect_done(
    draft: Draft, name: str, transition: str, action_id: int, ok: bool, at: float
) -> None:
    """An effect of a transition finished; all done applies the assignments, a failure backs off."""
    dom = draft.domains.get(name)
    spec = draft.index.domains.get(name)
    if dom is None or spec is None or transition not in dom.in_flight:
        return
    flight = dom.in_flight[transition]
    if action_id not in flight.actions:
        return
    tr = next(t for t in spec.transitions if t.name == transition)
    if not ok:
        draft.log(
            "warning", f"transition {transition} failed; retry after {tr.retry_after:g}s", name
        )
        dom = evolve(
            dom,
            in_flight=dom.in_flight.delete(transition),
            retry_at=dom.retry_at.set(transition, at + tr.retry_after),
        )
    elif len(flight.done) + 1 < len(flight.actions):
        dom = evolve(
            dom,
            in_flight=dom.in_flight.set(
                transition, InFlight(flight.actions, (*flight.done, action_id))
            ),
        )
    else:
        values = dom.values.update(dict(tr.assign))
        draft.log("info", f"transition {transition} completed", name)
        alerts.hold_effect_alert(draft, name, tr, at)
        dom = evolve(
            dom,
            values=values,
            in_flight=dom.in_flight.delete(transition),
            retry_at=dom.retry_at.delete(transition)
            if transition in dom.retry_at
            else dom.retry_at,
        )
    draft.set_domain(name, dom)
    evaluate_domain(draft, name, at)
