"""Journal: The names an entry is about (services, units, probes, domains, alert labels), stored
with it so that `history --service NAME` finds it.

Stored newline-delimited with a newline at each end ("\\nweb\\nweb.service\\n"), so that SQL
`instr(subjects, "\\nNAME\\n")` matches whole names only; "" when there is none.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.core.actions import Action, RunEffect, SendAlert, UnitJob
from agent.core.inputs import ActionCompleted, Input, OperatorCommand, ProbeResult, UnitObserved
from agent.core.state import State

TRACKED = (UnitJob, RunEffect, SendAlert)
"""The actions an ActionCompleted can name (their subjects are those of the action)."""


def subjects(
    inp: Input,
    actions: Iterable[Action],
    state: State,
    before: State,
    known: dict[int, Action],
) -> str:
    """Names `inp` and its `actions` are about. `state` is the state after the batch (for its
    index), `before` the state before it and `known` the tracked actions emitted earlier in the
    batch (to find the action an ActionCompleted completes)."""
    names: set[str] = set()
    index = state.index
    if isinstance(inp, UnitObserved):
        names.update((inp.unit, index.unit_to_service.get(inp.unit, "")))
    elif isinstance(inp, ProbeResult):
        names.add(inp.probe)
        names.update(index.probe_to_services.get(inp.probe, ()))
    elif isinstance(inp, OperatorCommand):
        names.add(inp.target)
    elif isinstance(inp, ActionCompleted):
        done = known.get(inp.action_id) or before.pending.get(inp.action_id)
        if done is not None:
            names.update(action_subjects(done))
    for action in actions:
        names.update(action_subjects(action))
    names.discard("")
    return "\n" + "\n".join(sorted(names)) + "\n" if names else ""


def action_subjects(action: Action) -> Iterable[str]:
    """Names one action is about ("" entries are dropped by the caller)."""
    if isinstance(action, UnitJob):
        return (action.unit, action.service)
    if isinstance(action, RunEffect):
        return (str(action.owner), action.owner.name, action.target)
    if isinstance(action, SendAlert):
        return (value for _, value in action.alert.labels)
    return (getattr(action, "subject", ""),)
