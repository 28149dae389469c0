"""CLI: the `setpoint` command.

Exit status: 0 fine, 1 runtime error, 2 bad usage or invalid goals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from agent import __version__
from agent.adapters.cluster import bridge as cluster_options
from agent.adapters.mqtt import config as mqtt_config
from agent.adapters.systemd import unitlog
from agent.adapters.systemd.bus import SystemdAdapter
from agent.cli import explain
from agent.core.actions import TrackedAction, is_tracked
from agent.core.inputs import GoalsLoaded, Input, Tick
from agent.core.state import State
from agent.core.step import step
from agent.errors import ConfigError, JournalError, Problem, SetpointError
from agent.goals.durations import parse_duration
from agent.interfaces import control, logs
from agent.interfaces.views import describe, status_dict, status_text
from agent.journal.reports import HistoryRow
from agent.journal.statedir import DB_NAME
from agent.journal.store import Journal

DEFAULT_GOALS = Path("/etc/setpoint/goals.d")
DEFAULT_STATE = Path("/var/lib/setpoint")


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="setpoint", description=__doc__)
    top.add_argument("--version", action="version", version=f"setpoint {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent")
    _goals_arg(run)
    _state_arg(run)
    run.add_argument("--bus", choices=["system", "user", "none"], default="system")
    run.add_argument("--tick", type=_seconds, default=1.0, help="timer resolution (default 1s)")
    run.add_argument("--shutdown-timeout", type=_seconds, default=30.0)
    run.add_argument(
        "--listen",
        type=_address,
        default=("127.0.0.1", 9477),
        metavar="HOST:PORT",
        help="metrics, /healthz and /api/v1/status (default 127.0.0.1:9477)",
    )
    run.add_argument(
        "--page-actions",
        action="store_true",
        help="operator actions on the status page and its API (needs --page-token-file)",
    )
    run.add_argument("--page-token-file", type=Path, metavar="FILE", help="the actions' token")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    run.add_argument("--log-format", choices=["auto", "text", "journald", "json"], default="auto")
    mqtt_config.add_arguments(run)
    unitlog.add_arguments(run)
    cluster_options.add_arguments(run)

    val = sub.add_parser("validate", help="check goal files; exit 2 when invalid")
    val.add_argument("paths", nargs="+", type=Path, metavar="FILE|DIR")

    plan = sub.add_parser("plan", help="what the agent would do now; nothing is executed")
    _goals_arg(plan)
    _state_arg(plan)
    plan.add_argument(
        "--bus",
        choices=["system", "user", "none"],
        default="system",
        help="where to observe the units now (none: use what the journal last saw)",
    )

    _readers(sub)
    sub.add_parser("schema", help="JSON Schema of the goal files")

    rule = sub.add_parser("polkit-rule", help="the polkit rule for the units the goals manage")
    _goals_arg(rule)
    rule.add_argument("--user", default="setpoint", help="the agent's user (default setpoint)")
    rule.add_argument("-o", "--output", type=Path, help="write here instead of stdout")

    maint = sub.add_parser("maintenance", help="observe only, never act (whole agent or a service)")
    maint.add_argument("mode", choices=["on", "off"])
    maint.add_argument("service", nargs="?", default="")
    _state_arg(maint)
    reset = sub.add_parser("reset", help="clear a service's give-up and restart counters")
    reset.add_argument("service", nargs="?", default="")
    _state_arg(reset)
    resync = sub.add_parser("resync", help="ask the agent for a full resync with systemd")
    _state_arg(resync)

    journal = sub.add_parser("journal", help="journal maintenance")
    jsub = journal.add_subparsers(dest="journal_command", required=True, metavar="ACTION")
    verify = jsub.add_parser("verify", help="replay the journal and compare every recorded state")
    _state_arg(verify)
    return top


def _readers(sub: Any) -> None:
    """The commands that read the journal: status, history, explain."""
    status = sub.add_parser("status", help="current state from the journal")
    _state_arg(status)
    status.add_argument("--json", action="store_true")

    hist = sub.add_parser("history", help="inputs and actions from the journal, newest first")
    _state_arg(hist)
    hist.add_argument("--service", help="only entries about this service, unit, probe or domain")
    hist.add_argument("--since", type=_when, help="e.g. 10m (ago), a UNIX time or ISO 8601")
    hist.add_argument("--until", type=_when)
    hist.add_argument("--limit", type=_positive, default=50)
    hist.add_argument("--json", action="store_true")

    why = sub.add_parser("explain", help="why: the causal chain of a service, domain or action")
    why.add_argument("subject", metavar="SERVICE|DOMAIN|ACTION-ID")
    why.add_argument("--last", type=_positive, default=5, help="incidents shown (default 5)")
    _state_arg(why)


def _goals_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--goals",
        type=Path,
        action="append",
        metavar="FILE|DIR",
        help=f"goal files or directories (default {DEFAULT_GOALS})",
    )


def _state_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE, help=f"default {DEFAULT_STATE}")


def _seconds(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    return value


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9477)")
    return host.strip("[]"), int(port)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _when(text: str) -> float:
    """A moment: `10m` means ten minutes ago; also a UNIX time or ISO 8601."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        pass
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use a duration ago (10m), a UNIX time or ISO 8601"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `setpoint` console script."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    except SetpointError as err:
        print(f"setpoint: {err}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:  # a supervised task of `run` failed
        leaves = _leaves(group)
        if not all(isinstance(leaf, SetpointError) for leaf in leaves):
            raise
        for leaf in leaves:
            print(f"setpoint: {leaf}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `setpoint history | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The non-group exceptions inside a (nested) exception group."""
    found: list[BaseException] = []
    for err in group.exceptions:
        found += _leaves(err) if isinstance(err, BaseExceptionGroup) else [err]
    return found


def _dispatch(args: argparse.Namespace) -> int:
    match args.command:
        case "run":
            return _run(args)
        case "validate":
            return _validate(args.paths)
        case "schema":
            from agent.goals import goals_schema  # noqa: PLC0415 - pydantic only where needed

            print(json.dumps(goals_schema(), indent=2))
            return 0
        case "polkit-rule":
            return _polkit_rule(args)
        case "maintenance" | "reset" | "resync":
            return asyncio.run(_command(args))
        case "plan":
            return asyncio.run(_plan(args))
        case "status":
            return asyncio.run(_status(args))
        case "history":
            return asyncio.run(_history(args))
        case "explain":
            return asyncio.run(_explain(args))
        case _:
            return asyncio.run(_verify(args.state_dir))


def _goal_paths(args: argparse.Namespace) -> tuple[Path, ...]:
    return tuple(args.goals or [DEFAULT_GOALS])


def _run(args: argparse.Namespace) -> int:
    from agent.app import Daemon, Options  # noqa: PLC0415 - keeps `validate` quick to start

    logs.setup(args.log_level, args.log_format)
    try:
        mqtt = mqtt_config.from_args(args)
        cluster = cluster_options.from_args(args)
        unit_logs = unitlog.from_args(args)
        token = _page_token(args.page_actions, args.page_token_file)
    except ValueError as err:
        print(f"setpoint run: {err}", file=sys.stderr)
        return 2
    opts = Options(
        goals=_goal_paths(args),
        state_dir=args.state_dir,
        bus=args.bus,
        tick=args.tick,
        shutdown_timeout=args.shutdown_timeout,
        http_host=args.listen[0],
        http_port=args.listen[1],
        page_token=token,
        mqtt=mqtt,
        hostname=args.hostname,
        cluster=cluster,
        unit_logs=unit_logs,
    )
    return asyncio.run(Daemon(opts).serve())


def _page_token(actions: bool, path: Path | None) -> str:
    """The status page's token: only with --page-actions, from a file only its owner reads."""
    if not actions:
        if path is not None:
            raise ValueError("--page-token-file is only used with --page-actions")
        return ""
    if path is None:
        raise ValueError("--page-actions needs --page-token-file FILE (the operators' token)")
    try:
        if path.stat().st_mode & 0o077:
            raise ValueError(f"{path}: readable by others; chmod 600 it")
        token = path.read_text().strip()
    except OSError as err:
        raise ValueError(f"{path}: {err.strerror}") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ValueError(f"{path}: the token must be one word of at least 16 characters")
    return token


def _validate(paths: Sequence[Path]) -> int:
    from agent.goals import load_goals  # noqa: PLC0415 - pydantic only where needed

    warnings: list[Problem] = []
    try:
        goals = load_goals(paths, warnings=warnings)
    except ConfigError as err:
        print(err, file=sys.stderr)
        count = len(err.problems)
        print(f"{count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(warning, file=sys.stderr)
    print(
        f"ok: {len(goals.services)} services, {len(goals.probes)} probes, "
        f"{len(goals.domains)} domains, {len(goals.groups)} groups, {len(goals.sinks)} sinks"
    )
    return 0


def _polkit_rule(args: argparse.Namespace) -> int:
    from agent.adapters.systemd import polkit  # noqa: PLC0415
    from agent.goals import load_goals  # noqa: PLC0415 - pydantic only where needed

    paths = _goal_paths(args)
    goals = load_goals(paths)
    where = ", ".join(map(str, paths))
    text = polkit.rule(polkit.managed_units(goals), args.user, where, polkit.killable_units(goals))
    if args.output is None:
        print(text, end="")
    else:
        args.output.write_text(text)
    return 0


async def _command(args: argparse.Namespace) -> int:
    name = f"maintenance_{args.mode}" if args.command == "maintenance" else args.command
    reply = await control.send(args.state_dir, name, getattr(args, "service", ""))
    print(f"accepted: {reply['accepted']} {reply.get('service', '')}".rstrip())
    return 0


async def _load_state(state_dir: Path) -> State:
    path = state_dir / DB_NAME
    try:
        if not path.exists():
            return State()
    except OSError as err:
        raise JournalError(f"{path}: {err.strerror}") from None
    journal = await Journal.open(state_dir, readonly=True)
    try:
        state, _ = await journal.load()
    finally:
        await journal.close()
    return state


async def _plan(args: argparse.Namespace) -> int:
    from agent.goals import load_goals  # noqa: PLC0415 - pydantic only where needed

    goals = load_goals(_goal_paths(args))
    state = await _load_state(args.state_dir)
    now = time.time()
    inputs: list[Input] = [GoalsLoaded(goals, now)]
    if args.bus != "none":
        inputs += await _observe(args.bus, [s.unit for s in goals.services])
    in_flight = len(state.pending)
    planned: list[TrackedAction] = []
    for inp in (*inputs, Tick(now)):
        state, out = step(state, inp)
        planned += [a for a in out if is_tracked(a)]
    if in_flight:
        print(f"note: {in_flight} actions already pending in the journal (see `setpoint status`)")
    for name, svc in sorted(state.services.items()):
        if svc.load in ("not-found", "masked"):
            print(f"problem: service {name}: unit {state.index.services[name].unit} is {svc.load}")
        elif svc.active == "unknown":
            print(f"note: service {name}: not observed; nothing planned for it")
    unseen = any(s.active == "unknown" for s in state.services.values())
    idle = "nothing planned for what was observed" if unseen else "nothing to do: every goal holds"
    print("\n".join(describe(a) for a in planned) or idle)
    return 0


async def _observe(bus: Literal["system", "user"], units: list[str]) -> list[Input]:
    """One resync of `units` from systemd; [] (with a note) when the bus is unreachable."""
    seen: list[Input] = []
    adapter = SystemdAdapter(seen.append, bus=bus)
    adapter.watch(units)
    task = asyncio.create_task(adapter.run(), name="plan-observe")
    try:
        async with asyncio.timeout(3):
            await adapter.wait_ready()
    except TimeoutError:
        print(f"note: systemd ({bus} bus) not reachable; planning from journaled observations")
    finally:
        await adapter.close()
        await task
    return seen


async def _status(args: argparse.Namespace) -> int:
    """The running agent's live state; the journal's when no agent answers."""
    doc = await control.live_status(args.state_dir)
    if doc is None:
        doc = status_dict(await _load_state(args.state_dir), time.time())
        doc["source"] = "journal"
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    journal = doc.get("journal", {})
    if journal.get("degraded"):
        print(f"JOURNAL DEGRADED for {journal['for_seconds']:.0f}s: {journal['error']}\n"
              f"  supervising without a record: {journal['unrecorded_inputs']} inputs so far, "
              f"{journal['held_effects']} effects held until it can write")  # fmt: skip
    print(status_text(doc))
    return 0


async def _history(args: argparse.Namespace) -> int:
    journal = await Journal.open(args.state_dir, readonly=True)
    try:
        rows = await journal.history(
            subject=args.service, since=args.since, until=args.until, limit=args.limit
        )
    finally:
        await journal.close()
    for row in rows:
        print(json.dumps(row.as_dict()) if args.json else str(row))
    return 0


EXPLAIN_ROWS = 100_000
"""How far back `explain` reads (the journal keeps less once snapshots prune it)."""


async def _explain(args: argparse.Namespace) -> int:
    subject: str = args.subject
    state = await _load_state(args.state_dir)
    number = subject.removeprefix("#")
    if number.isdigit():
        text = explain.action(int(number), await _rows(args.state_dir, None))
    elif subject in state.index.services:
        rows = await _rows(args.state_dir, subject)
        text = explain.service(state, subject, rows, args.last)
    elif subject in state.index.domains:
        text = explain.domain(state, subject, await _rows(args.state_dir, subject), args.last)
    else:
        known = sorted([*state.index.services.keys(), *state.index.domains.keys()])
        print(
            f"setpoint explain: no service, domain or action id {subject!r} "
            f"(known: {', '.join(known) or 'none'})",
            file=sys.stderr,
        )
        return 2
    print(text)
    return 0


async def _rows(state_dir: Path, subject: str | None) -> list[HistoryRow]:
    """Journal entries (about `subject`), oldest first."""
    journal = await Journal.open(state_dir, readonly=True)
    try:
        rows = await journal.history(subject=subject, limit=EXPLAIN_ROWS)
    finally:
        await journal.close()
    return rows[::-1]


async def _verify(state_dir: Path) -> int:
    journal = await Journal.open(state_dir, readonly=True)
    try:
        problems = await journal.verify()
    finally:
        await journal.close()
    for problem in problems:
        print(problem)
    if problems:
        print(f"journal verify: {len(problems)} mismatches", file=sys.stderr)
        return 1
    print("journal verified: replay matches every recorded state")
    return 0
