"""Journal: What `history`, `explain` and the status page say of journal entries: plain words,
local times to the millisecond, latencies in ms; the JSON form; and the one UTC timestamp format.

An entry as text (`history`), its input then one line per action:

    2024-05-01T14:00:00.250+02:00 #42 web.service is failed/failed (main process killed by SIGKILL)
        → [web] main process killed by SIGKILL; restarting (1/5)
        → restart job #7 for web.service

As JSON (`history --json`), every field, with "time" (UTC) beside "at".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.core.actions import Action, Log, Resync, RunEffect, SendAlert, UnitJob
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
from agent.core.lifecycle import exit_reason
from agent.journal import codec

DOWN = ("failed", "inactive")


def utc_iso(at: float, *, z: bool = False) -> str:
    """`at` (seconds since the epoch) in ISO 8601, UTC, to the millisecond:
    `1970-01-01T00:00:00.000+00:00`, or `...000Z` with `z` (RFC 3339 as Alertmanager wants it)."""
    text = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z") if z else text


def local_iso(at: float) -> str:
    """`at` in local ISO 8601 to the millisecond, with the offset."""
    return datetime.fromtimestamp(at).astimezone().isoformat(timespec="milliseconds")


def clock(at: float) -> str:
    """`at` as local `HH:MM:SS.mmm`."""
    return datetime.fromtimestamp(at).astimezone().strftime("%H:%M:%S.%f")[:-3]


def span(seconds: float) -> str:
    """A duration for people: `19 ms`, `2.35 s`, `4.0 min`, `1.5 h`."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def latency(seconds: float) -> str:
    """A latency in milliseconds (`3.2 ms`, `250 ms`)."""
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


@dataclass(frozen=True)
class HistoryRow:
    """An entry as `history` returns it."""

    seq: int
    at: float
    input: Input
    actions: tuple[Action, ...]
    completed: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly: every field, dataclasses as dicts with a "type"."""
        return {
            "seq": self.seq,
            "at": self.at,
            "time": utc_iso(self.at),
            "input": codec.plain(self.input),
            "actions": codec.plain(self.actions),
            "completed": list(self.completed),
        }

    def __str__(self) -> str:
        lines = [f"{local_iso(self.at)} #{self.seq} {say_input(self.input)}"]
        lines += [f"    → {say_action(a)}" for a in self.actions if not _debug(a)]
        return "\n".join(lines)


def story(row: HistoryRow) -> str:
    """What an entry changed, in one line of plain words; "" when it changed nothing worth
    telling (a probe result that moved no verdict, a tick that only kept time)."""
    said = [say_action(a) for a in row.actions if not _debug(a)]
    told = ActionCompleted | UnitObserved | GoalsRejected
    if isinstance(row.input, OperatorCommand) or (said and isinstance(row.input, told)):
        said.insert(0, say_input(row.input))
    return "; ".join(dict.fromkeys(said))


def say_input(inp: Input) -> str:
    """An input in plain words."""
    match inp:
        case UnitObserved():
            return _observed(inp)
        case ProbeResult():
            verdict = "ok" if inp.ok else "failed"
            detail = f": {inp.detail}" if inp.detail and not inp.ok else ""
            return f"probe {inp.probe} {verdict} in {latency(inp.latency)}{detail}"
        case Tick():
            return "time passed"
        case ActionCompleted():
            how = "done" if inp.ok else ("not permitted" if inp.denied else "failed")
            detail = f": {inp.detail[:200]}" if inp.detail and not inp.ok else ""
            return f"action #{inp.action_id} {how}{detail}"
        case OperatorCommand():
            return say_command(inp)
        case GoalsLoaded():
            goals = inp.goals
            return f"goals loaded: {len(goals.services)} services, {len(goals.domains)} domains"
        case GoalsRejected():
            return f"goals rejected ({len(inp.problems)} problems); the last good ones stay"
        case ManagerStarted() if inp.stopping:
            return f"the system is shutting down ({inp.stopping}): observing only, no new jobs"
        case ManagerStarted():
            return f"systemd manager started at {local_iso(inp.started)}"
        case JournalGap():
            return (f"journal gap: {inp.inputs} inputs decided on without a record since "
                    f"{local_iso(inp.began)} ({inp.error})")  # fmt: skip
        case ClusterObserved():
            link = "healthy" if inp.healthy else "unreachable"
            return f"cluster {link}; leader {inp.leader or 'none'}"
        case ClusterAdopted():
            return f"cluster state adopted as leader (fence {inp.fence})"


def say_command(cmd: OperatorCommand) -> str:
    """`operator (by X): maintenance on for web`."""
    what = cmd.command.replace("_", " ")
    target = f" for {cmd.target}" if cmd.target else (" (whole agent)" if "mainten" in what else "")
    by = f" by {cmd.by}" if cmd.by else ""
    return f"operator{by}: {what}{target}"


def say_action(action: Action) -> str:
    """An action in plain words."""
    match action:
        case UnitJob():
            return f"{action.op} job #{action.id} for {action.unit}"
        case RunEffect():
            target = f" → {action.target}" if action.target else ""
            what = " ".join(action.effect.argv) or action.effect.summary or action.effect.url
            what = f" ({what})" if what else ""
            owner = f"{action.owner} {action.reason}"
            return f"{action.effect.kind} effect #{action.id} for {owner}{target}{what}"
        case SendAlert():
            state = "firing" if action.alert.firing else "resolved"
            return f"alert {action.alert.name} {state} to {action.sink} (#{action.id})"
        case Log():
            return f"[{action.subject}] {action.message}" if action.subject else action.message
        case Resync():
            return "full resync with systemd"


def _observed(obs: UnitObserved) -> str:
    state = f"{obs.active}/{obs.sub}" if obs.sub else obs.active
    why = f" ({downed(obs)})" if obs.active in DOWN and obs.exit_code else ""
    pid = f", main pid {obs.main_pid}" if obs.main_pid and obs.active == "active" else ""
    return f"{obs.unit} is {state}{why}{pid}"


def downed(obs: UnitObserved) -> str:
    """How a unit went down: `main process was killed (signal SIGKILL)`."""
    why = exit_reason(obs.result, obs.exit_code, obs.exit_status)
    if obs.exit_code in (2, 3):
        return f"main process was killed ({why})"
    if obs.exit_code == 1:
        return f"main process exited ({why})" if why else "main process exited"
    return f"unit is {obs.active}" + (f" ({why})" if why else "")


def _debug(action: Action) -> bool:
    return isinstance(action, Log) and action.level == "debug"


def brief(obj: object) -> str:
    """`Name field=value ...`: the fields that differ from their defaults, values shortened."""
    fields = json.loads(codec.encode(obj))
    kind = fields.pop("_t", type(obj).__name__)
    return " ".join([kind, *(f"{k}={short(v)}" for k, v in fields.items())])


def short(value: Any, limit: int = 60) -> str:
    """A field value in at most `limit` characters; a nested dataclass as `Name(...)`."""
    if isinstance(value, dict) and "_t" in value:
        return f"{value['_t']}(...)"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
