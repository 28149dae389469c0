"""Goals: Goal files loaded in a short-lived child process, so that the daemon never imports
YAML, pydantic and the goal models (about 12 MB it would hold for good) for what start-up and
reloads alone need.

    parent  await load_isolated(paths, broker=..., decode=codec.decode) -> GoalSet
            ConfigError: the goals are invalid (every problem, exactly as `load_goals` says)
            LoaderFailed: the child died, gave no answer in time (it is killed) or an unreadable one
    child   python -m agent.cli.goalloader --broker|--no-broker -- PATH...  (`child_main`)

The child runs `load_goals` (YAML, schema, cross checks, CEL type checks) and writes one answer
to stdout, then exits 0:

    setpoint-goals ok\\n<the GoalSet, in the journal's codec>
    setpoint-goals invalid\\n<JSON list of [file, line, col, message]>

The codec is handed in (`encode` to the child, `decode` here): it belongs to the journal, a
layer above this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.core.spec import GoalSet
from agent.errors import ConfigError, JournalCorrupt, Problem, SetpointError

CHILD_MODULE = "agent.cli.goalloader"
TIMEOUT = 60.0
"""How long the child may take (it needs well under a second for the goal sets of a host)."""
MAX_ANSWER = 64 << 20
"""Bytes of answer read at most (a goal set is far smaller): a runaway child is killed."""
OK = b"setpoint-goals ok"
INVALID = b"setpoint-goals invalid"
_TAIL_LINES = 5
_TAIL_CHARS = 2000


class LoaderFailed(SetpointError):
    """The goal loader's child process gave no usable answer: it died, hung or wrote garbage."""


def child_argv(paths: Sequence[str | Path], *, broker: bool) -> list[str]:
    """The arguments after `python -m agent.cli.goalloader`."""
    return ["--broker" if broker else "--no-broker", "--", *(os.fspath(p) for p in paths)]


async def load_isolated(
    paths: Sequence[str | Path],
    *,
    broker: bool,
    decode: Callable[[bytes], object],
    timeout: float = TIMEOUT,
    program: Sequence[str] = (),
) -> GoalSet:
    """Load and validate the goal files in a child process: `load_goals`, out of process.

    `program` (default `python -m agent.cli.goalloader` with this interpreter) is what runs;
    the child's arguments follow it.
    """
    argv = [*(program or (sys.executable, "-m", CHILD_MODULE)), *child_argv(paths, broker=broker)]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as err:
        raise LoaderFailed(f"cannot start the goal loader {argv[0]}: {err}") from None
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(timeout):
            out, errors, status = await asyncio.gather(
                _read(proc, proc.stdout, MAX_ANSWER), _tail_of(proc.stderr), proc.wait()
            )
    except TimeoutError:
        raise LoaderFailed(
            f"the goal loader gave no answer within {timeout:g}s (killed it)"
        ) from None
    finally:
        if proc.returncode is None:  # timed out, or the caller was cancelled
            _kill(proc)
            await proc.wait()
    if out is None:
        raise LoaderFailed(f"the goal loader wrote more than {MAX_ANSWER} bytes (killed it)")
    return answer(status, out, errors, decode)


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def _read(
    proc: asyncio.subprocess.Process, stream: asyncio.StreamReader, limit: int
) -> bytes | None:
    """All of `stream`; None (and the child killed) past `limit` bytes."""
    data = bytearray()
    while chunk := await stream.read(1 << 16):
        data += chunk
        if len(data) > limit:
            _kill(proc)
            return None
    return bytes(data)


async def _tail_of(stream: asyncio.StreamReader) -> bytes:
    """The end of `stream`, read to its end (a chatty child never blocks on a full pipe)."""
    tail = b""
    while chunk := await stream.read(1 << 16):
        tail = (tail + chunk)[-_TAIL_CHARS * 4 :]
    return tail


def answer(status: int, out: bytes, err: bytes, decode: Callable[[bytes], object]) -> GoalSet:
    """The child's answer: the goal set; ConfigError with its problems; or LoaderFailed."""
    if status != 0:
        raise LoaderFailed(f"the goal loader {_ended(status)}{_tail(err)}")
    head, _, body = out.partition(b"\n")
    if head == OK:
        try:
            goals = decode(body)
        except (JournalCorrupt, ValueError, TypeError) as error:
            raise LoaderFailed(f"the goal loader's goal set does not decode: {error}") from None
        if not isinstance(goals, GoalSet):
            raise LoaderFailed(f"the goal loader answered a {type(goals).__name__}, not goals")
        return goals
    if head == INVALID:
        raise ConfigError(_problems(body))
    raise LoaderFailed(f"the goal loader gave no answer (stdout began {out[:60]!r}){_tail(err)}")


def _problems(body: bytes) -> list[Problem]:
    try:
        rows = json.loads(body)
        problems = [Problem(file, line, col, message) for file, line, col, message in rows]
    except (ValueError, TypeError) as error:
        raise LoaderFailed(f"the goal loader's problems do not decode: {error}") from None
    typed = all(
        isinstance(p.file, str) and isinstance(p.message, str)
        and type(p.line) is int and type(p.col) is int
        for p in problems
    )  # fmt: skip
    if not problems or not typed:
        raise LoaderFailed(f"the goal loader's problems are not [file, line, col, message]: {rows}")
    return problems


def _ended(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def _tail(err: bytes) -> str:
    """The last lines the child wrote to stderr (a traceback ends with its error)."""
    lines = err.decode(errors="replace").strip().splitlines()[-_TAIL_LINES:]
    text = "\n".join(lines)[-_TAIL_CHARS:]
    return f":\n{text}" if text else ""


def child_main(argv: Sequence[str], encode: Callable[[GoalSet], bytes]) -> int:
    """The child: load the goal files named in `argv` (see `child_argv`), answer on stdout."""
    if len(argv) < 2 or argv[0] not in ("--broker", "--no-broker") or argv[1] != "--":
        print("usage: python -m agent.cli.goalloader --broker|--no-broker -- PATH...",
              file=sys.stderr)  # fmt: skip
        return 2
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # whatever else prints while loading stays out of the answer
    from agent.goals.loader import load_goals  # noqa: PLC0415 - only the child needs it

    try:
        goals = load_goals(argv[2:], broker=argv[0] == "--broker")
    except ConfigError as err:
        rows = [[p.file, p.line, p.col, p.message] for p in err.problems]
        out.write(INVALID + b"\n" + json.dumps(rows).encode("ascii"))
    else:
        out.write(OK + b"\n" + encode(goals))
    out.flush()
    return 0
