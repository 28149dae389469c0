"""Degraded mode in-process: a real SQLite journal whose writes fail on demand (the real agent
on a really full disk is in tests/system/test_host_trouble.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from agent.core.actions import TrackedAction
from agent.core.inputs import GoalsLoaded, JournalGap, Tick, UnitObserved
from agent.core.spec import GoalSet
from agent.core.state import State
from agent.errors import JournalError
from agent.interfaces.metrics import Metrics
from agent.journal import codec
from agent.journal.store import Entry, Journal
from agent.runtime.loop import Runtime
from tests.agentproc import wait_until_async
from tests.corekit import service
from tests.system.test_agent import fan_out_goals


class Disk(Journal):
    """Every write fails while `full` is set, as on a full disk."""

    full = False

    def _check(self) -> None:
        if Disk.full:
            raise JournalError("database or disk is full (injected)")

    async def commit(self, entries: Sequence[Entry], state: State) -> None:
        if entries:
            self._check()
        await super().commit(entries, state)

    async def mark_gap(self, gap: JournalGap) -> None:
        self._check()
        await super().mark_gap(gap)

    async def close_gap(self, gap: JournalGap, state: State) -> None:
        self._check()
        await super().close_gap(gap, state)


def goals() -> GoalSet:
    return GoalSet(services=(service("web"),), domains=fan_out_goals(1).domains)


async def test_unit_jobs_go_on_effects_wait_and_the_gap_is_recorded(tmp_path: Path) -> None:
    journal = await Disk.open(tmp_path / "state")
    metrics = Metrics(State)
    rt = Runtime(journal, State(), metrics=metrics)
    metrics.watch_runtime(lambda: rt.degraded is not None, rt.mailbox.qsize)
    jobs: list[int] = []
    effects: list[int] = []

    async def job(action: TrackedAction) -> str:
        jobs.append(action.id)
        return "done"

    async def effect(action: TrackedAction) -> str:
        effects.append(action.id)
        return "ran"

    rt.lanes.register("systemd", job)
    rt.lanes.register("exec", effect)
    Disk.full = True
    loop = asyncio.create_task(rt.run())
    try:
        rt.submit(GoalsLoaded(goals(), 1.0))
        rt.submit(UnitObserved("web.service", "inactive", "dead", 2.0))
        await wait_until_async(lambda: bool(jobs), 5, "the start job, journal or not")
        assert rt.degraded is not None and "disk is full" in rt.degraded.error
        for n in range(5):
            rt.submit(Tick(3.0 + n))
            await asyncio.sleep(0.05)
        assert effects == [], "an exec effect ran without its durable record"
        scrape = metrics.render().decode()
        assert "setpoint_journal_degraded 1.0" in scrape
        assert "setpoint_journal_errors_total 1.0" in scrape
        held = list(rt.degraded.held)
        assert len(held) == 1 and held[0] in rt.state.pending
        Disk.full = False
        await wait_until_async(lambda: rt.degraded is None, 10, "the gap closed")
        await wait_until_async(lambda: effects == held, 5, "the held effect released")
        await wait_until_async(lambda: not rt.state.pending, 5, "every action completed")
        assert "setpoint_journal_degraded 0.0" in metrics.render().decode()
    finally:
        rt.stop()
        await loop
    await rt.checkpoint()
    state, _ = await journal.load()
    assert codec.digest(state) == codec.digest(rt.state)
    assert await journal.verify() == []
    gaps = [r for r in await journal.history() if isinstance(r.input, JournalGap)]
    assert len(gaps) == 1
    gap = gaps[0].input
    assert isinstance(gap, JournalGap) and gap.inputs >= 2  # the goals, the observation, ...
    assert gap.done[0].endswith(" unit jobs") and gap.done[1] == "1 effects held for the journal"
    await journal.close()


class Unclosable(Disk):
    """Lets the gap be marked open, never closed."""

    marks = 0

    async def mark_gap(self, gap: JournalGap) -> None:
        await super().mark_gap(gap)
        Unclosable.marks += 1

    async def close_gap(self, gap: JournalGap, state: State) -> None:
        raise JournalError("disk I/O error (injected)")


async def test_an_agent_that_dies_in_a_gap_restarts_from_before_it(tmp_path: Path) -> None:
    journal = await Unclosable.open(tmp_path / "state")
    rt = Runtime(journal, State())
    rt.lanes.register("systemd", lambda _a: asyncio.sleep(0, "done"))
    loop = asyncio.create_task(rt.run())
    rt.submit(GoalsLoaded(goals(), 1.0))
    await wait_until_async(lambda: bool(rt.state.goals.services), 5, "goals committed")
    before = rt.state
    Disk.full = True
    rt.submit(UnitObserved("web.service", "inactive", "dead", 2.0))
    await wait_until_async(lambda: rt.degraded is not None, 5, "degraded")
    Disk.full = False  # the watcher's small write goes through: the gap is marked open ...
    await wait_until_async(lambda: Unclosable.marks > 0, 10, "the gap marked open")
    loop.cancel()  # ... and the agent dies before it closes it
    await asyncio.gather(loop, return_exceptions=True)
    await journal.close()
    again = await Journal.open(tmp_path / "state")
    state, seq = await again.load()
    assert codec.digest(state) == codec.digest(before)
    newest = (await again.history(limit=1))[0]
    assert isinstance(newest.input, JournalGap) and newest.seq == seq
    assert await again.verify() == []
    await again.close()
