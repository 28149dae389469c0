"""Core: The state-transition function and restore. Pure: same state + same input = same output.

    step(state, input) -> (state', actions)     never raises on odd input; it logs instead
    restore(state)     -> pending tracked actions, to re-emit after a crash

`step` returns the very same State object when an input changes nothing, so the runtime can
skip journaling it. Most of what a fleet at rest sends changes nothing (a probe confirming its
verdict, a unit observed as it was known): `step` finds that out before it makes a Draft.
"""

from __future__ import annotations

from typing import assert_never

from immutables import Map

from agent.core import alerts, cluster, domains, due, groups, phases, probes, services
from agent.core.actions import Action, Resync, RunEffect, SendAlert, TrackedAction, UnitJob
from agent.core.alerts import Builtin, fingerprint
from agent.core.draft import Draft, evolve
from agent.core.expr import references
from agent.core.inputs import (
    ActionCompleted,
    ClusterAdopted,
    ClusterObserved,
    GoalsLoaded,
    GoalsRejected,
    Input,
    JournalGap,
    ManagerStarted,
    OperatorCommand,
    ProbeResult,
    Tick,
    UnitObserved,
)
from agent.core.spec import GoalSet
from agent.core.state import DomainState, Index, ProbeState, ServiceState, State

ROUTINE = (UnitObserved, ProbeResult, Tick, ActionCompleted, JournalGap)
"""Inputs that touch only the services they name (or none): they wake no other."""


def step(state: State, inp: Input) -> tuple[State, tuple[Action, ...]]:
    """Apply one input. Pure."""
    if type(inp) is ProbeResult and probes.steady(state, inp):
        return state, ()  # most of what a fleet at rest sends: a check confirming what is known
    if type(inp) is UnitObserved and services.repeats(state, inp):
        return state, ()  # a resync, or a signal for properties the agent does not read
    return full_step(state, inp)


def full_step(state: State, inp: Input) -> tuple[State, tuple[Action, ...]]:
    """`step` without its shortcuts for inputs that change nothing: every input goes through
    a Draft. Pure; tests check that both decide the same (tests/core/test_shortcuts.py)."""
    draft = Draft(state)
    match inp:
        case UnitObserved():
            _unit_observed(draft, inp)
        case ProbeResult():
            _probe_result(draft, inp)
        case Tick():
            _tick(draft, inp.now)
        case ActionCompleted():
            _action_completed(draft, inp)
        case OperatorCommand():
            _command(draft, inp)
        case GoalsLoaded():
            _goals_loaded(draft, inp.goals, inp.at)
            alerts.set_alert(draft, "GoalsInvalid", "goals", False, "warning", "", inp.at)
        case ManagerStarted():
            services.manager_started(draft, inp.started, inp.at)
            services.system_stopping(draft, inp.stopping, inp.at)
        case ClusterObserved():
            cluster.observed(draft, inp)
            _cluster_domains(draft, inp.at)
        case ClusterAdopted():
            cluster.adopt(draft, inp)
            _cluster_domains(draft, inp.at)
        case GoalsRejected():
            summary = f"goal reload rejected: {inp.problems[0] if inp.problems else '?'}"
            alerts.set_alert(draft, "GoalsInvalid", "goals", True, "warning", summary, inp.at)
        case JournalGap():
            pass  # the journal replaces the state at a gap by the snapshot stored with it
    if not isinstance(inp, ROUTINE):
        draft.wake_all()  # goals, commands, the manager, the cluster: every service may move
    if isinstance(inp, Tick):  # reminders and retries fall due with time
        alerts.deliver(draft, inp.now)
    elif draft.alerts is not state.alerts:  # news for the sinks goes out at once
        alerts.deliver(draft, inp.at)
    return draft.finish(), tuple(draft.actions)


def _cluster_domains(draft: Draft, at: float) -> None:
    for spec in cluster.scoped(draft):
        if spec.name in draft.domains:
            domains.evaluate_domain(draft, spec.name, at)
    for group in cluster.scoped_groups(draft):
        groups.evaluate(draft, group.name, at)


def restore(state: State) -> tuple[TrackedAction, ...]:
    """Every pending tracked action, in id order. Pure."""
    return tuple(state.pending[i] for i in sorted(state.pending.keys()))


def _unit_observed(draft: Draft, obs: UnitObserved) -> None:
    name = draft.index.unit_to_service.get(obs.unit)
    if name is None:
        return
    old = draft.services[name]
    svc = services.observe(draft, name, obs, obs.at)
    if svc is old or svc == old:
        return
    draft.set_service(name, svc)
    _after_service_change(draft, name, old, obs.at)


def _after_service_change(draft: Draft, name: str, old: ServiceState, now: float) -> None:
    """Reconcile the service, then whatever depends on or watches it."""
    services.reconcile(draft, name, now)
    phases.update(draft, name, now)
    new = draft.services[name]
    if new.lifecycle != old.lifecycle:
        services.follow(draft, name, old, now)
        for dependant in draft.index.dependants.get(name, ()):
            services.reconcile(draft, dependant, now)
    if _facts(new) != _facts(old):
        for dom in draft.index.service_to_domains.get(name, ()):
            domains.evaluate_domain(draft, dom, now)


def _facts(svc: ServiceState) -> tuple[object, ...]:
    """What domains see of a service (a job in flight hides it, see domains.facts)."""
    return (svc.lifecycle, svc.health, svc.active, svc.sub, svc.job is None)


def _probe_result(draft: Draft, res: ProbeResult) -> None:
    spec = draft.probe_spec(res.probe)
    if spec is None:
        return
    owners = draft.index.probe_to_services.get(res.probe, ())
    in_groups = draft.index.probe_to_groups.get(res.probe, ())
    changed = probes.apply(draft, res, spec, owners, timed=bool(in_groups))
    for name in draft.index.probe_to_phased.get(res.probe, ()):
        phases.update(draft, name, res.at)
    for group in in_groups:
        groups.evaluate(draft, group, res.at)
    if not changed:
        return
    for name in owners:
        old = draft.services[name]
        health = services.health_of(draft, draft.service_spec(name))
        svc = services.refresh(draft, name, evolve(old, health=health), res.at)
        draft.set_service(name, svc)
        _after_service_change(draft, name, old, res.at)
    for dom in draft.index.probe_to_domains.get(res.probe, ()):
        domains.evaluate_domain(draft, dom, res.at)


def _tick(draft: Draft, now: float) -> None:
    for name in due.visit(draft, now):
        if name not in draft.services:
            draft.busy = draft.busy.delete(name)
            due.forget(draft, name)
            continue
        services.escalate(draft, name, now)
        services.settle(draft, name, now)
        before = draft.services[name].lifecycle
        services.reconcile(draft, name, now)
        if draft.services[name].lifecycle != before:
            phases.update(draft, name, now)
        alerts.service_rules(draft, name, draft.services[name], now)
        phases.rule(draft, name, now)
        due.rest(draft, name, now)
    for name, dom in draft.domains.items():
        if not dom.satisfied:
            domains.evaluate_domain(draft, name, now)
        if not dom.satisfied or fingerprint(Builtin.GOAL_BROKEN, name) in draft.alerts:
            alerts.domain_rule(draft, name, now)
    if draft.cluster.fence:  # the leader re-judges: a node waited for may now count as down
        _cluster_domains(draft, now)
    groups.tick(draft, now)


def _action_completed(draft: Draft, done: ActionCompleted) -> None:
    action = draft.pending.get(done.action_id)
    if action is None or (isinstance(action, RunEffect) and action.fence != done.fence):
        draft.log("debug", f"result for unknown or finished action {done.action_id} ignored")
        return
    draft.pending = draft.pending.delete(done.action_id)
    if isinstance(action, UnitJob):
        name = draft.index.unit_to_service.get(action.unit)
        if name is not None and draft.services[name].job == action.id:
            old = draft.services[name]
            services.job_done(
                draft, name, done.ok, done.permanent, done.detail, done.at, done.denied
            )
            _after_service_change(draft, name, old, done.at)
    elif isinstance(action, SendAlert):
        alerts.delivered(draft, action, done.ok, done.at)
    elif isinstance(action, RunEffect) and action.owner.kind == "group":
        groups.effect_done(draft, action.owner.name, action.id, done.ok, done.at)
    elif isinstance(action, RunEffect):
        domains.effect_done(draft, action.owner.name, action.reason, action.id, done.ok, done.at)
    if not done.ok:
        draft.log("warning", f"action {done.action_id} failed: {done.detail[:200]}")


def _command(draft: Draft, cmd: OperatorCommand) -> None:
    if cmd.target and cmd.target not in draft.services:
        draft.log("error", f"command {cmd.command}: no service named {cmd.target!r}")
        return
    match cmd.command:
        case "resync":
            draft.actions.append(Resync())
        case "reset":
            for name in [cmd.target] if cmd.target else list(draft.services.keys()):
                services.reset(draft, name, cmd.at)
                services.reconcile(draft, name, cmd.at)
        case "maintenance_on" | "maintenance_off":
            _maintenance(draft, cmd.target, cmd.command == "maintenance_on", cmd.at)
        case _:
            assert_never(cmd.command)
    draft.log("info", f"operator command {cmd.command} {cmd.target}".strip())


def _maintenance(draft: Draft, target: str, on: bool, at: float) -> None:
    """Observe only, never act: one service (`target`) or the whole agent."""
    if target:
        draft.set_service(target, evolve(draft.services[target], maintenance=on))
        services.reconcile(draft, target, at)
    else:
        draft.maintenance = on
        _tick(draft, at)


def _retry_denied(draft: Draft, at: float) -> None:
    """A reload is how an operator says the polkit rule was regenerated: try those again."""
    for name, svc in list(draft.services.items()):
        if svc.denied:
            draft.log("info", "goals reloaded: trying the unit that was not permitted again", name)
            services.reset(draft, name, at)
            services.reconcile(draft, name, at)


def build_index(goals: GoalSet) -> Index:
    """Lookups from the goals. Pure."""
    probe_owners: dict[str, list[str]] = {}
    for svc in goals.services:
        for probe in svc.probes:
            probe_owners.setdefault(probe, []).append(svc.name)
    dependants: dict[str, list[str]] = {}
    phased: dict[str, list[str]] = {}
    for svc in goals.services:
        for probe in phases.probes_read(svc):
            phased.setdefault(probe, []).append(svc.name)
        for dep in svc.depends_on:
            dependants.setdefault(dep, []).append(svc.name)
    svc_doms: dict[str, list[str]] = {}
    probe_doms: dict[str, list[str]] = {}
    for dom in goals.domains:
        for text in dom.expressions:
            for kind, name in references(text):
                target = svc_doms if kind == "services" else probe_doms
                if dom.name not in target.setdefault(name, []):
                    target[name].append(dom.name)
    specs = {s.name: s for s in goals.services}
    members = {
        g.name: tuple(
            (m.name, m.probes or (specs[m.service].probes if m.service in specs else ()))
            for m in g.members
        )
        for g in goals.groups
    }  # a service member is judged by its service's probes
    probe_groups: dict[str, list[str]] = {}
    local = {g.name for g in goals.groups if g.scope == "local"}
    for group, judged in members.items():
        if group not in local:
            continue  # a cluster group is judged by its nodes' facts, not by local results
        for _, checks in judged:
            for probe in checks:
                probe_groups.setdefault(probe, []).append(group)
    plain = {p.name: (p, tuple(probe_owners.get(p.name, ()))) for p in goals.probes
             if p.name not in probe_groups and p.name not in phased}  # fmt: skip
    return Index(
        plain_probes=Map(plain),
        groups=Map({g.name: g for g in goals.groups}),
        members=Map(members),
        probe_to_groups=Map({k: tuple(dict.fromkeys(v)) for k, v in probe_groups.items()}),
        services=Map(specs),
        probes=Map({p.name: p for p in goals.probes}),
        domains=Map({d.name: d for d in goals.domains}),
        decls=Map(
            {d.name: tuple(sorted((v.name, v.type) for v in d.variables)) for d in goals.domains}
        ),
        unit_to_service=Map({s.unit: s.name for s in goals.services}),
        probe_to_services=Map({k: tuple(v) for k, v in probe_owners.items()}),
        service_to_domains=Map({k: tuple(v) for k, v in svc_doms.items()}),
        probe_to_domains=Map({k: tuple(v) for k, v in probe_doms.items()}),
        dependants=Map({k: tuple(v) for k, v in dependants.items()}),
        probe_to_phased=Map({k: tuple(v) for k, v in phased.items()}),
    )


def _goals_loaded(draft: Draft, goals: GoalSet, at: float) -> None:
    if goals.digest and goals.digest == draft.goals.digest:
        _retry_denied(draft, at)
        return
    old_index = draft.index
    draft.goals, draft.index = goals, build_index(goals)
    busy = {a.unit: a.id for a in draft.pending.values() if isinstance(a, UnitJob)}
    svcs: dict[str, ServiceState] = {}
    for spec in goals.services:
        prev = draft.services.get(spec.name)
        before = old_index.services.get(spec.name)
        if prev is None or before is None or before.unit != spec.unit:
            svcs[spec.name] = ServiceState(since=at, job=busy.get(spec.unit))
        elif before != spec:
            svcs[spec.name] = evolve(
                prev, restarts=(), gave_up=False, denied=False, next_attempt=0.0
            )
        else:
            svcs[spec.name] = prev
    draft.services = Map(svcs)
    draft.probes = Map({p.name: draft.probes.get(p.name, ProbeState()) for p in goals.probes})
    doms: dict[str, DomainState] = {}
    for dom in goals.domains:
        prev_dom = draft.domains.get(dom.name)
        same = prev_dom is not None and old_index.domains.get(dom.name) == dom
        doms[dom.name] = prev_dom if same and prev_dom else domains.initial(dom, prev_dom)
    draft.domains = Map(doms)
    draft.groups = Map(
        {g.name: draft.groups[g.name] for g in goals.groups if g.name in draft.groups}
    )
    draft.log("info", f"goals loaded: {len(goals.services)} services, {len(goals.domains)} domains")
    for name in draft.services:
        services.reconcile(draft, name, at)
        phases.update(draft, name, at)
    for name in draft.domains:
        domains.evaluate_domain(draft, name, at)
    alerts.release_orphans(draft, at)


def completes(state: State, inp: Input) -> tuple[int, ...]:
    """The tracked id `inp` completes, as the journal records it: the id of an ActionCompleted
    whose action is pending in `state` (the state before `inp`); () for anything else. Pure."""
    if isinstance(inp, ActionCompleted) and inp.action_id in state.pending:
        return (inp.action_id,)
    return ()
