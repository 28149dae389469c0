"""Core: Seed 002's proactive failover: the route follows the best member, with hysteresis. Pure.

A member is *good* when all its probes are healthy and within their latency budget, *degraded*
when healthy but slow, *down* otherwise. The route goes to the preferred (first) member when it
is good and auto-restore is on; it stays where it is while that member is good; otherwise it
goes to the fastest good member, else the fastest degraded one. A switch needs `switch_after`
consecutive evaluations preferring the same candidate, so one slow answer never flaps the
route. With every member down the route stays and a critical alert fires.

Route effects state the target (never a delta), and only one round of them is in flight per
group: a newer decision waits and is applied after, so targets never land out of order.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.core import alerts, cluster
from agent.core.actions import Owner, RunEffect
from agent.core.draft import Draft, evolve
from agent.core.spec import Effect, FailoverGroup
from agent.core.state import GroupState

RETRY_AFTER = 5.0


def _status(draft: Draft, probes: tuple[str, ...]) -> tuple[str, float]:
    """("good" | "degraded" | "down", the slowest probe latency)."""
    states = [draft.probes.get(p) for p in probes]
    if not states or any(s is None or s.healthy is not True for s in states):
        return "down", float("inf")
    latency = max(s.latency for s in states if s is not None)
    slow = any(s.over_budget for s in states if s is not None)
    return ("degraded" if slow else "good"), latency


def _statuses(draft: Draft, group: FailoverGroup, now: float) -> dict[str, tuple[str, float]]:
    """Each member's status and latency; a cluster group's come from its nodes' facts, ranked
    by preference (the facts carry verdicts, not latencies: they change only with a verdict)."""
    judged = draft.index.members[group.name]
    if group.scope != "cluster":
        return {m: _status(draft, probes) for m, probes in judged}
    nodes = {m.name: m.node for m in group.members}
    return {m: (cluster.member_status(draft, nodes[m], probes, now), float(i))
            for i, (m, probes) in enumerate(judged)}  # fmt: skip


def choose(draft: Draft, group: FailoverGroup, current: str, now: float = 0.0) -> str:
    """The member that should have the route now; "" when every member is down. Pure.

    While a cluster group's member is still waited for (`wait`), the route stays."""
    status = _statuses(draft, group, now)
    if any(s == "wait" for s, _ in status.values()):
        return current
    preferred = group.members[0].name
    if group.auto_restore and status[preferred][0] == "good":
        return preferred
    if current in status and status[current][0] == "good":
        return current
    for level in ("good", "degraded"):
        ranked = sorted((lat, i, m) for i, (m, (s, lat)) in enumerate(status.items()) if s == level)
        if ranked:
            return ranked[0][2]
    return ""


def evaluate(draft: Draft, name: str, now: float) -> None:
    """Re-decide a group's route after a probe result."""
    group = draft.index.groups[name]
    if group.scope == "cluster" and cluster.acting(draft, group):
        return  # a follower, or the link is down: the leader routes
    state = draft.groups.get(name, GroupState())
    best = choose(draft, group, state.route, now)
    down = best == ""
    alerts.set_alert(draft, "AllMembersDown", name, down, "critical",
                     f"failover group {name}: every member is down", now)  # fmt: skip
    if down or best == state.route:
        state = evolve(state, candidate="", streak=0)
    elif not state.route:
        state = evolve(state, route=best, candidate="", streak=0)
    else:
        streak = state.streak + 1 if best == state.candidate else 1
        state = evolve(state, candidate=best, streak=streak)
        # a cluster group is re-judged on every fact change and tick, not per probe result:
        # its members' verdicts are already debounced by their probes' failures/successes
        if streak >= (group.switch_after if group.scope == "local" else 1):
            draft.log("warning", f"route {state.route} -> {best}", name)
            state = evolve(state, route=best, candidate="", streak=0, switches=state.switches + 1)
    off_preferred = bool(state.route) and state.route != group.members[0].name
    alerts.set_alert(draft, "FailoverActive", name, off_preferred, "warning",
                     f"failover group {name} routed to {state.route}", now)  # fmt: skip
    _store(draft, name, _apply(draft, name, group, state, now))


def _apply(
    draft: Draft, name: str, group: FailoverGroup, state: GroupState, now: float
) -> GroupState:
    """Emit the route effects when the decided route is not yet the applied one."""
    if state.in_flight or not state.route or state.route == state.applied:
        return state
    if state.retry_at > now:
        return state
    if not group.effects:
        return evolve(state, applied=state.route)
    owner = Owner("group", name)
    fence = draft.cluster.fence if group.scope == "cluster" else 0
    track = draft.track_cluster if fence else draft.track
    ids = tuple(track(_maker(e, owner, state.route, fence)) for e in group.effects)
    return evolve(state, in_flight=ids, target=state.route, done=())


def _maker(effect: Effect, owner: Owner, target: str, fence: int) -> Callable[[int], RunEffect]:
    return lambda action_id: RunEffect(action_id, effect, owner, "route", target, fence)


def _store(draft: Draft, name: str, state: GroupState) -> None:
    if draft.groups.get(name) != state:
        draft.groups = draft.groups.set(name, state)


def effect_done(draft: Draft, name: str, action_id: int, ok: bool, now: float) -> None:
    """A route effect finished; the round completes when all did, or retries after a failure."""
    state = draft.groups.get(name)
    group = draft.index.groups.get(name)
    if state is None or group is None or action_id not in state.in_flight:
        return
    done = (*state.done, action_id)
    if not ok:
        draft.log(
            "warning", f"route effect to {state.target} failed; retry in {RETRY_AFTER:g}s", name
        )
        state = evolve(state, in_flight=(), done=(), retry_at=now + RETRY_AFTER)
    elif len(done) < len(state.in_flight):
        state = evolve(state, done=done)
    else:
        draft.log("info", f"route applied: {state.target}", name)
        state = evolve(state, in_flight=(), done=(), applied=state.target)
    _store(draft, name, _apply(draft, name, group, state, now))


def tick(draft: Draft, now: float) -> None:
    """Retry route effects whose back-off has passed."""
    for name, state in draft.groups.items():
        if state.retry_at and state.retry_at <= now and not state.in_flight:
            group = draft.index.groups[name]
            if group.scope == "cluster" and cluster.acting(draft, group):
                continue
            _store(draft, name, _apply(draft, name, group, evolve(state, retry_at=0.0), now))
