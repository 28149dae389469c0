"""The exec effect and the lanes, with real subprocesses and real timing."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from agent.adapters.effects.exec import OUTPUT_LIMIT, run_exec
from agent.core.actions import Owner, RunEffect, TrackedAction
from agent.core.inputs import ActionCompleted, Input
from agent.core.spec import Effect
from agent.errors import PermanentError, TransientError
from agent.runtime.lanes import Lanes, RetryPolicy
from tests.agentproc import wait_until_async


def exec_action(*argv: str, timeout: float = 10.0, target: str = "", **env: str) -> RunEffect:
    effect = Effect("exec", argv=argv, timeout=timeout, env=tuple(env.items()))
    return RunEffect(1, effect, Owner("domain", "test"), "T", target)


async def test_exec_captures_output_and_passes_env_and_target() -> None:
    code = "import os, sys; e = os.environ; "
    code += "print(e['GREETING'], sys.argv[1], e['SETPOINT_ACTION_ID'])"
    out = await run_exec(
        exec_action(sys.executable, "-c", code, "{target}", target="replica", GREETING="route")
    )
    assert out == "route replica 1"


async def test_exec_nonzero_exit_is_transient_with_output() -> None:
    with pytest.raises(TransientError, match=r"exited with 3: boom"):
        await run_exec(exec_action(sys.executable, "-c", "print('boom'); raise SystemExit(3)"))


async def test_exec_missing_program_is_permanent() -> None:
    with pytest.raises(PermanentError, match=r"cannot run '/nonexistent/prog'"):
        await run_exec(exec_action("/nonexistent/prog"))


async def test_exec_timeout_kills_the_process_group() -> None:
    started = time.monotonic()
    code = "import subprocess, time; subprocess.Popen(['sleep', '30']); time.sleep(30)"
    with pytest.raises(TransientError, match=r"timed out after 0\.3s"):
        await run_exec(exec_action(sys.executable, "-c", code, timeout=0.3))
    assert time.monotonic() - started < 5


async def test_exec_output_is_bounded_to_its_tail() -> None:
    code = "import sys; sys.stdout.write('x' * 100000 + 'END')"
    out = await run_exec(exec_action(sys.executable, "-c", code))
    assert len(out) == OUTPUT_LIMIT and out.endswith("END")


class CompletionRecorder:
    """Records the ActionCompleted inputs the lanes submit; lets a test wait for them."""

    def __init__(self) -> None:
        self.results: list[ActionCompleted] = []
        self.event = asyncio.Event()

    def submit(self, inp: Input) -> None:
        assert isinstance(inp, ActionCompleted)
        self.results.append(inp)
        self.event.set()

    async def wait(self, count: int, timeout: float = 30.0) -> None:
        await wait_until_async(
            lambda: len(self.results) >= count, timeout, f"{count} results", wake=self.event
        )


def alert(action_id: int, sink: str = "pager") -> RunEffect:
    return RunEffect(
        action_id, Effect("alert", sink=sink, summary="x"), Owner("domain", "d"), "Page"
    )


FAST = RetryPolicy(attempts=4, initial=0.01, maximum=0.02)


async def test_transient_failures_retry_then_succeed() -> None:
    rec, calls = CompletionRecorder(), []

    async def flaky(action: TrackedAction) -> str:
        calls.append(action.id)
        if len(calls) < 3:
            raise TransientError("connection refused")
        return "delivered"

    retried: list[str] = []
    lanes = Lanes(rec.submit, time.time, on_retry=retried.append)
    lanes.register("alert", flaky, FAST)
    lanes.dispatch(alert(7))
    await rec.wait(1)
    assert (rec.results[0].action_id, rec.results[0].ok, rec.results[0].detail) == (
        7,
        True,
        "delivered",
    )
    assert calls == [7, 7, 7] and lanes.retries == 2 and retried == ["alert", "alert"]


async def test_permanent_failure_is_not_retried_and_exhaustion_reports_failure() -> None:
    rec, calls = CompletionRecorder(), []

    async def broken(action: TrackedAction) -> str:
        calls.append(action.id)
        if action.id == 1:
            raise PermanentError("access denied")
        raise TransientError("still down")

    lanes = Lanes(rec.submit, time.time)
    lanes.register("alert", broken, FAST)
    lanes.dispatch(alert(1))
    lanes.dispatch(alert(2))
    await rec.wait(2)
    by_id = {r.action_id: r for r in rec.results}
    assert (by_id[1].ok, by_id[1].permanent, by_id[1].detail) == (False, True, "access denied")
    assert (by_id[2].ok, by_id[2].permanent) == (False, False)
    assert "gave up after retries: still down" in by_id[2].detail
    assert calls.count(1) == 1 and calls.count(2) == 4


async def test_a_stuck_lane_never_delays_another() -> None:
    rec = CompletionRecorder()
    release = asyncio.Event()

    async def pager(action: TrackedAction) -> str:
        await release.wait()
        return "paged"

    lanes = Lanes(rec.submit, time.time)
    lanes.register("alert", pager, FAST)
    lanes.register("exec", run_exec, FAST)
    lanes.dispatch(alert(1))
    lanes.dispatch(RunEffect(2, Effect("exec", argv=("true",)), Owner("domain", "d"), "Failover"))
    await rec.wait(1)
    assert [r.action_id for r in rec.results] == [2]
    release.set()
    await rec.wait(2)
    assert await lanes.drain(1.0)


async def test_unknown_lane_fails_permanently_and_duplicates_are_ignored() -> None:
    rec = CompletionRecorder()
    lanes = Lanes(rec.submit, time.time)
    lanes.dispatch(RunEffect(5, Effect("mqtt", topic="t"), Owner("domain", "d"), "T"))
    lanes.dispatch(RunEffect(5, Effect("mqtt", topic="t"), Owner("domain", "d"), "T"))
    # The marker: an action dispatched after the duplicate, on the same lane. Tasks run in
    # the order they were created, so a duplicate run would have reported before it.
    lanes.dispatch(RunEffect(6, Effect("mqtt", topic="t"), Owner("domain", "d"), "T"))
    await rec.wait(2)
    assert [r.action_id for r in rec.results] == [5, 6]
    assert rec.results[0].permanent and "no executor for lane 'mqtt'" in rec.results[0].detail


async def test_concurrency_is_bounded_per_lane() -> None:
    rec = CompletionRecorder()
    gate = asyncio.Event()

    async def slow(action: TrackedAction) -> str:
        await gate.wait()
        return "ok"

    async def quick(action: TrackedAction) -> str:
        return "ok"

    lanes = Lanes(rec.submit, time.time, concurrency=1)
    lanes.register("alert", slow, FAST)
    lanes.register("exec", quick, FAST)
    lanes.dispatch(alert(1))
    lanes.dispatch(alert(2))
    lanes.dispatch(RunEffect(3, Effect("exec", argv=("true",)), Owner("domain", "d"), "T"))
    await rec.wait(1)
    assert [r.action_id for r in rec.results] == [3]
    gate.set()
    await rec.wait(3)


async def test_a_crashing_executor_is_reported_not_lost() -> None:
    rec = CompletionRecorder()

    async def buggy(action: TrackedAction) -> str:
        raise KeyError("oops")

    lanes = Lanes(rec.submit, time.time)
    lanes.register("alert", buggy, FAST)
    lanes.dispatch(alert(9))
    await rec.wait(1)
    assert rec.results[0].permanent and rec.results[0].detail == "internal error: KeyError('oops')"
