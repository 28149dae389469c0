"""Adapters / effects: The exec effect: an argv list (never a shell string), a timeout, a bounded
capture of output."""

from __future__ import annotations

import asyncio
import contextlib
import os

from agent.core.actions import RunEffect, TrackedAction
from agent.errors import PermanentError, TransientError

OUTPUT_LIMIT = 4096
"""Bytes of combined stdout/stderr kept (the tail), so the journal stays bounded."""


def argv_for(action: RunEffect) -> list[str]:
    """The effect's argv with `{target}` replaced by the route target, if any."""
    return [action.fill(arg) for arg in action.effect.argv]


async def run_exec(action: TrackedAction) -> str:
    """Run an exec effect; exit 0 is success, anything else a TransientError with the output.

    The program gets SETPOINT_ACTION_ID (stable across a crash and restore), so it can make
    itself idempotent, SETPOINT_TARGET for route effects, and SETPOINT_FENCE (the leader's
    fencing token, growing across leaders) for cluster domains: refuse a smaller one.
    """
    if not isinstance(action, RunEffect) or not action.effect.argv:
        raise PermanentError(f"action {action.id} is not an exec effect")
    argv = argv_for(action)
    env = {**os.environ, **dict(action.effect.env), "SETPOINT_ACTION_ID": str(action.id)}
    if action.target:
        env["SETPOINT_TARGET"] = action.target
    if action.fence:
        env["SETPOINT_FENCE"] = str(action.fence)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as err:
        raise PermanentError(f"cannot run {argv[0]!r}: {err.strerror}") from None
    output = await _collect(proc, action.effect.timeout, argv[0])
    if proc.returncode != 0:
        raise TransientError(f"{argv[0]} exited with {proc.returncode}: {output}")
    return output


async def _collect(proc: asyncio.subprocess.Process, timeout: float, name: str) -> str:
    """Read output keeping only the tail; kill the process group on timeout."""
    assert proc.stdout is not None
    tail = bytearray()

    async def pump() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            tail.extend(chunk)
            del tail[:-OUTPUT_LIMIT]
        await proc.wait()

    try:
        await asyncio.wait_for(pump(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()
        raise TransientError(f"{name} timed out after {timeout:g}s") from None
    return tail.decode("utf-8", "replace").strip()
