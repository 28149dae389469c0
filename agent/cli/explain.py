"""CLI: `setpoint explain`: causal chains read from journal entries, in plain words.

    12:04:01.003 web's main process killed by SIGKILL → restart job #17 → done 12:04:01.015
    → active again 12:04:01.022, 19 ms; restarts 2/5 in the window

An incident of a service opens when its unit goes down or the agent decides to act on it, and
closes when the unit is active again or the agent gives up; a domain's opens when its goal
breaks and closes when it holds again; an action's chain runs from the entry that decided it to
its result (and, for a unit job, to the unit being active again). Functions here only read the
rows they are given (oldest first).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agent.core.actions import Action, Log, RunEffect, SendAlert, UnitJob
from agent.core.inputs import ActionCompleted, OperatorCommand, UnitObserved
from agent.core.state import State
from agent.journal.reports import (
    DOWN,
    HistoryRow,
    clock,
    downed,
    local_iso,
    say_action,
    say_command,
    say_input,
    span,
)

LATE = 0.05
"""A decision this long after its cause shows its own time (a backoff, a wait for a tick)."""
_COUNT = re.compile(r"restarting \((\d+)/(\d+)\)")


@dataclass
class Chain:
    """One incident: when it began, the links after its cause, and whether it is over."""

    start: float
    links: list[str] = field(default_factory=list)
    ids: set[int] = field(default_factory=set)
    note: str = ""
    closed: bool = False

    def text(self) -> str:
        """The chain on one line, `→` between links."""
        body = f"{clock(self.start)} " + " → ".join(self.links)
        tail = "" if self.closed else " → (not over yet)"
        return body + tail + (f"; {self.note}" if self.note else "")


def service(state: State, name: str, rows: Sequence[HistoryRow], last: int) -> str:
    """The service's current state, then its latest `last` incidents."""
    spec = state.index.services[name]
    chains: list[Chain] = []
    cur: Chain | None = None
    for row in rows:
        cur = _service_row(name, spec.unit, row, cur, chains)
    svc = state.services.get(name)
    head = f"{name} ({spec.unit})"
    if svc is not None:
        head += f": {svc.lifecycle}, health {svc.health}, restarts: {svc.restarts_total} in all"
        head += f", {len(svc.restarts)}/{spec.restart.limit} in the window now"
    return _report(head, chains, last)


def _service_row(
    name: str, unit: str, row: HistoryRow, cur: Chain | None, chains: list[Chain]
) -> Chain | None:
    """Advance the service's incidents by one entry; the open chain afterwards."""
    inp = row.input
    if isinstance(inp, OperatorCommand) and inp.target in ("", name):
        chains.append(Chain(row.at, [say_command(inp)], closed=True))
    if isinstance(inp, UnitObserved) and inp.unit == unit:
        if inp.active in DOWN and (cur is None or cur.closed):
            cur = Chain(inp.changed_at or row.at, [f"{name}'s {downed(inp)}"])
            chains.append(cur)
        elif inp.active == "active" and cur is not None and not cur.closed and cur.ids:
            cur.links.append(f"active again {clock(row.at)}, {span(row.at - cur.start)}")
            cur.closed = True
    if isinstance(inp, ActionCompleted) and cur is not None and inp.action_id in cur.ids:
        _completed(cur, inp, row.at)
    for action in row.actions:
        cur = _service_action(name, row, action, cur, chains)
    return cur


def _completed(chain: Chain, done: ActionCompleted, at: float) -> None:
    if not (chain.closed and done.ok):  # after "active again", "done" says nothing new
        chain.links.append(f"#{done.action_id} {_result(done)} {clock(at)}")


def _service_action(
    name: str, row: HistoryRow, action: Action, cur: Chain | None, chains: list[Chain]
) -> Chain | None:
    if isinstance(action, UnitJob) and action.service == name:
        if cur is None or cur.closed:
            cur = Chain(row.at, [say_input(row.input)])
            chains.append(cur)
        late = row.at - cur.start
        when = f" at {clock(row.at)} (after {span(late)})" if late >= LATE else ""
        cur.links.append(f"{action.op} job #{action.id}{when}")
        cur.ids.add(action.id)
    elif isinstance(action, Log) and action.subject == name and cur is not None:
        if found := _COUNT.search(action.message):
            cur.note = f"restarts {found[1]}/{found[2]} in the window"
        elif action.message.startswith("giving up"):
            cur.links.append(f"{action.message} {clock(row.at)}")
            cur.closed = True
    return cur


def domain(state: State, name: str, rows: Sequence[HistoryRow], last: int) -> str:
    """The domain's current state, then its latest `last` broken-goal episodes."""
    chains: list[Chain] = []
    cur: Chain | None = None
    for row in rows:
        cur = _domain_row(name, row, cur, chains)
    dom = state.domains.get(name)
    head = name
    if dom is not None:
        values = ", ".join(f"{k}={v}" for k, v in sorted(dom.values.items()))
        head += f": goal {'holds' if dom.satisfied else 'BROKEN'} ({values})"
        head += f"; paused: {dom.error}" if dom.error else ""
    return _report(head, chains, last)


def _domain_row(name: str, row: HistoryRow, cur: Chain | None, chains: list[Chain]) -> Chain | None:
    inp = row.input
    if isinstance(inp, ActionCompleted) and cur is not None and inp.action_id in cur.ids:
        cur.links.append(f"#{inp.action_id} {_result(inp)} {clock(row.at)}")
    said = [a.message for a in row.actions if isinstance(a, Log) and a.subject == name]
    if "goal broken" in said:  # opens the chain the rest of this entry belongs to
        cur = Chain(row.at, [f"goal broken ({say_input(inp)})"])
        chains.append(cur)
    if cur is None or cur.closed:
        return cur
    for action in row.actions:
        if isinstance(action, RunEffect) and action.owner.name == name:
            cur.links.append(say_action(action))
            cur.ids.add(action.id)
    for message in said:
        if message.startswith("transition"):
            cur.links.append(message.split(": actions")[0])
        elif message == "goal holds":
            cur.links.append(f"goal holds again {clock(row.at)}, {span(row.at - cur.start)}")
            cur.closed = True
    return cur


def action(action_id: int, rows: Sequence[HistoryRow]) -> str:
    """Why action `action_id` was decided, and what became of it."""
    decided = next((r for r in rows if any(_is(a, action_id) for a in r.actions)), None)
    if decided is None:
        return f"action #{action_id} is not in the journal (pruned, or not decided yet)"
    act = next(a for a in decided.actions if _is(a, action_id))
    why = [say_action(a) for a in decided.actions if isinstance(a, Log) and a.level != "debug"]
    chain = Chain(decided.at, [say_input(decided.input), *why, say_action(act)])
    down = _went_down(act.unit, rows, decided.seq) if isinstance(act, UnitJob) else None
    if down is not None and down.seq < decided.seq:
        chain = Chain(down.at, [say_input(down.input), *chain.links[1:]])
        chain.links.insert(1, f"decided {clock(decided.at)} (after {span(decided.at - down.at)})")
    after = [r for r in rows if r.seq > decided.seq]
    done = next((r for r in after if _completes(r, action_id)), None)
    events: list[tuple[float, str]] = []
    if done is not None and isinstance(done.input, ActionCompleted):
        events.append((done.at, f"{_result(done.input)} {clock(done.at)}"))
    if isinstance(act, UnitJob) and (up := next((r for r in after if _up(r, act.unit)), None)):
        events.append((up.at, f"active again {clock(up.at)}"))
    chain.links += [f"{text}, {span(at - chain.start)}" for at, text in sorted(events)]
    chain.closed = done is not None
    return f"action #{action_id} ({local_iso(decided.at)}, entry #{decided.seq})\n{chain.text()}"


def _went_down(unit: str, rows: Sequence[HistoryRow], before: int) -> HistoryRow | None:
    """The observation of `unit` going down that a job decided at entry `before` answers."""
    for row in reversed([r for r in rows if r.seq <= before]):
        if isinstance(row.input, UnitObserved) and row.input.unit == unit:
            return row if row.input.active in DOWN else None
    return None


def _completes(row: HistoryRow, action_id: int) -> bool:
    return isinstance(row.input, ActionCompleted) and row.input.action_id == action_id


def _up(row: HistoryRow, unit: str) -> bool:
    inp = row.input
    return isinstance(inp, UnitObserved) and inp.unit == unit and inp.active == "active"


def _is(action: Action, action_id: int) -> bool:
    return isinstance(action, UnitJob | RunEffect | SendAlert) and action.id == action_id


def _result(done: ActionCompleted) -> str:
    if done.ok:
        return "done"
    return f"failed ({done.detail[:120]})" if done.detail else "failed"


def _report(head: str, chains: Iterable[Chain], last: int) -> str:
    shown = list(chains)[-last:]
    if not shown:
        return f"{head}\nnothing happened to it in the journal"
    day = ""
    lines = [head]
    for chain in shown:
        if (date := local_iso(chain.start)[:10]) != day:
            day = date
            lines.append(f"{day} (local time)")
        lines.append("  " + chain.text())
    return "\n".join(lines)
