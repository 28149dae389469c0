"""Core: Probe results: streaks that add up to health, with a start period. Pure."""

from __future__ import annotations

from agent.core.draft import Draft
from agent.core.inputs import ProbeResult
from agent.core.spec import ProbeSpec
from agent.core.state import ProbeState, State

FRESH = ProbeState()
"""A probe without a result yet."""


def _in_grace(draft: Draft | State, owners: tuple[str, ...], spec: ProbeSpec, at: float) -> bool:
    """Failures within the start period of a service that just came up do not count."""
    return any(
        draft.services[s].active_since + spec.start_period > at
        for s in owners
        if s in draft.services and draft.services[s].active_since
    )


def apply(
    draft: Draft, result: ProbeResult, spec: ProbeSpec, owners: tuple[str, ...], timed: bool
) -> bool:
    """Fold one result into the probe's state; True when its health verdict changed."""
    old = draft.probes.get(result.probe, ProbeState())
    if not result.ok and _in_grace(draft, owners, spec, result.at):
        return False
    new = fold(old, result, spec, timed)
    if new is old:
        return False
    draft.set_probe(result.probe, new)
    if new.healthy != old.healthy and new.healthy is not None:
        _log_verdict(draft, result.probe, spec, new)
    return new.healthy != old.healthy


def steady(state: State, result: ProbeResult) -> bool:
    """True when `result` changes nothing at all: `step` may return the state as it is. Only
    for a probe no failover group times and no phase reads (those re-judge on every result)."""
    plain = state.index.plain_probes.get(result.probe)
    if plain is None:
        return result.probe not in state.index.probes
    spec, owners = plain
    if not result.ok and _in_grace(state, owners, spec, result.at):
        return True
    old = state.probes.get(result.probe, FRESH)
    return fold(old, result, spec, False) is old


def fold(old: ProbeState, result: ProbeResult, spec: ProbeSpec, timed: bool) -> ProbeState:
    """The probe's state after `result`: `old` itself when that changes nothing. Pure."""
    if result.ok:
        ok_streak = min(old.ok_streak + 1, spec.successes)
        fail_streak = 0
        healthy = True if ok_streak >= spec.successes else old.healthy
    else:
        ok_streak = 0
        fail_streak = min(old.fail_streak + 1, spec.failures)
        healthy = False if fail_streak >= spec.failures else old.healthy
    budget = spec.latency_budget
    new = (  # ProbeState's fields, in order: compared before a ProbeState is made
        healthy,
        ok_streak,
        fail_streak,
        result.ok and budget is not None and result.latency > budget,
        round(result.latency, 4) if timed else old.latency,
        "" if result.ok else result.detail[:200],
        result.result if result.ok else "",
    )
    if new == (old.healthy, old.ok_streak, old.fail_streak, old.over_budget, old.latency,
               old.detail, old.result):  # fmt: skip
        return old
    return ProbeState(*new)


def _log_verdict(draft: Draft, name: str, spec: ProbeSpec, new: ProbeState) -> None:
    """One line per health verdict change, with the evidence."""
    if new.healthy:
        draft.log("info", f"probe healthy after {new.ok_streak} success(es)", name)
    else:
        failures = f"{new.fail_streak} failure(s)"
        draft.log("warning", f"probe unhealthy after {failures}: {new.detail or 'failed'}", name)
