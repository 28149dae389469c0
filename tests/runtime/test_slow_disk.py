"""A slow disk: every commit takes seconds (a test-only journal subclass stands in for an fsync
that stalls; production code has no such hook). Observation and effects already durable go on;
inputs back up in the mailbox, bounded, and go in with the next commit."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path

from agent.core.actions import TrackedAction
from agent.core.inputs import GoalsLoaded, OperatorCommand, Tick
from agent.core.state import State
from agent.interfaces.metrics import Metrics
from agent.journal.store import Entry, Journal
from agent.runtime.loop import Runtime
from tests.agentproc import wait_until_async
from tests.system.test_agent import fan_out_goals


class SlowDisk(Journal):
    """Each commit waits `delay` seconds before it writes, as behind a stalled fsync."""

    delay = 0.0
    commits = 0
    stalled = False

    async def commit(self, entries: Sequence[Entry], state: State) -> None:
        if entries:
            SlowDisk.commits += 1
            SlowDisk.stalled = True
            await asyncio.sleep(SlowDisk.delay)
            SlowDisk.stalled = False
        await super().commit(entries, state)


def backlog(metrics: Metrics) -> float:
    found = re.search(r"^setpoint_runtime_backlog (\S+)$", metrics.render().decode(), re.M)
    assert found
    return float(found.group(1))


async def test_a_stalled_commit_holds_up_neither_effects_nor_observation(tmp_path: Path) -> None:
    journal = await SlowDisk.open(tmp_path / "state")
    metrics = Metrics(State)
    rt = Runtime(journal, State(), metrics=metrics)
    metrics.watch_runtime(lambda: rt.degraded is not None, rt.mailbox.qsize)
    ran_during_stall: list[bool] = []
    go = asyncio.Event()

    async def effect(_action: TrackedAction) -> str:
        await go.wait()
        ran_during_stall.append(SlowDisk.stalled)
        return "ran"

    rt.lanes.register("exec", effect)
    loop = asyncio.create_task(rt.run())
    try:
        rt.submit(GoalsLoaded(fan_out_goals(1), 1.0))
        await wait_until_async(lambda: rt.lanes.running == 1, 5, "the durable effect running")
        SlowDisk.delay, before = 2.0, SlowDisk.commits
        rt.submit(OperatorCommand("maintenance_on", 2.0))  # changes the state: a (slow) commit
        await wait_until_async(lambda: SlowDisk.stalled, 5, "the commit stalled")
        go.set()  # the effect, durable before the stall, finishes during it
        for n in range(100):  # and observation goes on: it queues, nothing blocks
            rt.submit(Tick(3.0 + n / 100))
        rt.submit(OperatorCommand("maintenance_off", 4.0))
        await wait_until_async(lambda: bool(ran_during_stall), 5, "the effect to finish")
        assert ran_during_stall == [True]
        assert "setpoint_runtime_backlog 10" in metrics.render().decode()  # 100 ticks, 2 more
        SlowDisk.delay = 0.0
        await wait_until_async(lambda: rt.mailbox.empty() and not rt.state.pending, 10, "caught up")
        assert SlowDisk.commits - before == 2  # the stalled one, then the whole backlog in one
        assert backlog(metrics) == 0
        inputs = rt.stats.inputs
    finally:
        rt.stop()
        await loop
    assert inputs == 5  # goals, maintenance on, then one batch: completion, 1 tick (of 100), off
    await journal.close()
