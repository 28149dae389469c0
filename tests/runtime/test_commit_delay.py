"""Observations that start nothing share commits under load (COMMIT_DELAY); anything that
starts an effect or comes from elsewhere is committed at once, with whatever waited before it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from agent.core.actions import TrackedAction
from agent.core.inputs import GoalsLoaded, ProbeResult, UnitObserved
from agent.core.spec import GoalSet
from agent.core.state import State
from agent.journal.store import Entry, Journal
from agent.runtime.loop import Runtime
from tests.agentproc import wait_until_async
from tests.corekit import http_probe, policy, service


class Counted(Journal):
    """Counts the commits that store something."""

    commits = 0

    async def commit(self, entries: Sequence[Entry], state: State) -> None:
        if entries:
            self.commits += 1
        await super().commit(entries, state)


GOALS = GoalSet(
    services=(service("web", restart=policy(backoff_initial=0)),),
    probes=(http_probe("p", failures=1),),
    digest="delay",
)


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Counted]:
    journal = await Counted.open(tmp_path / "state")
    yield journal
    await journal.close()


async def running(rt: Runtime) -> asyncio.Task[None]:
    task = asyncio.create_task(rt.run())
    rt.submit(GoalsLoaded(GOALS, 1.0))
    rt.submit(UnitObserved("web.service", "active", "running", 1.0))
    await rt.wait_for(lambda s: "web" in s.services and "p" in s.probes, 5)
    return task


async def flap(rt: Runtime, n: int, at: float) -> None:
    """`n` probe results, each a health change, a millisecond or so apart."""
    for k in range(n):
        rt.submit(ProbeResult("p", k % 2 == 1, 0.001, at + k / 1000))
        await asyncio.sleep(0.002)


async def journaled(journal: Journal) -> list[str]:
    return [row.input.__class__.__name__ for row in reversed(await journal.history(limit=1000))]


@pytest.mark.parametrize("delay", [0.0, 0.05])
async def test_a_storm_of_observations_shares_commits(journal: Counted, delay: float) -> None:
    rt = Runtime(journal, State(), commit_delay=delay)
    task = await running(rt)
    before = journal.commits
    await flap(rt, 40, 2.0)
    rt.stop()
    await task
    commits = journal.commits - before
    if delay:
        assert commits <= 6  # ~100 ms of results: a commit per 50 ms, and the one at stop
    else:
        assert commits >= 20  # each batch its own (some arrive together)
    assert (await journaled(journal)).count("ProbeResult") == 40  # nothing lost, in order
    assert rt.state.probes["p"].healthy is True  # the last result (k = 39) was ok


async def test_an_input_that_starts_an_effect_is_committed_at_once(journal: Counted) -> None:
    rt = Runtime(journal, State(), commit_delay=30.0)  # only a flush can end a wait
    started: list[int] = []

    async def start(action: TrackedAction) -> str:
        started.append(action.id)
        return "done"

    rt.lanes.register("systemd", start)
    task = await running(rt)
    before = len(await journaled(journal))
    await flap(rt, 2, 2.0)  # right after a commit: both wait
    await asyncio.sleep(0.2)
    assert len(await journaled(journal)) == before
    rt.submit(UnitObserved("web.service", "failed", "failed", 3.0))  # starts a restart
    await wait_until_async(lambda: bool(started), 2, "the restart started")
    await wait_until_async(lambda: not rt.state.pending, 2, "the restart committed done")
    kinds = await journaled(journal)
    assert kinds[before : before + 3] == ["ProbeResult", "ProbeResult", "UnitObserved"]
    rt.stop()
    await task


async def test_a_unit_job_reaches_the_bus_before_its_batch_is_encoded(tmp_path: Path) -> None:
    """Unit jobs start while their batch commits, and the commit begins by encoding the batch
    and digesting the state (milliseconds at 10,000 services): the job's call, written by a
    task of its own as the systemd adapter does, goes out first."""
    events: list[str] = []

    class Noted(Journal):
        async def commit(self, entries: Sequence[Entry], state: State) -> None:
            if any(getattr(e.input, "active", "") == "failed" for e in entries):
                events.append("encoding")
            await super().commit(entries, state)

    async def start(action: TrackedAction) -> str:
        events.append("lane")

        async def write() -> None:
            events.append("written")

        await asyncio.ensure_future(write())
        return "done"

    journal = await Noted.open(tmp_path / "noted")
    rt = Runtime(journal, State())
    rt.lanes.register("systemd", start)
    task = await running(rt)
    try:
        rt.submit(UnitObserved("web.service", "failed", "failed", 3.0))
        await wait_until_async(lambda: {"encoding", "written"} <= set(events), 2, "the restart")
        assert events[:3] == ["lane", "written", "encoding"]
    finally:
        rt.stop()
        await task
        await journal.close()


async def test_a_lone_observation_waits_for_nothing_and_a_held_one_not_long(
    journal: Counted,
) -> None:
    rt = Runtime(journal, State(), commit_delay=0.5)
    task = await running(rt)
    await asyncio.sleep(0.6)
    rt.submit(ProbeResult("p", False, 0.001, 2.0))  # no commit lately: goes in at once
    await rt.wait_for(lambda s: s.probes["p"].healthy is False, 0.3)
    rt.submit(ProbeResult("p", True, 0.001, 2.1))  # right after a commit: waits
    await asyncio.sleep(0.2)
    assert rt.state.probes["p"].healthy is False  # not committed, so not yet the state
    await rt.wait_for(lambda s: s.probes["p"].healthy is True, 0.6)  # by the deadline
    rt.stop()
    await task


async def test_stop_commits_what_waits(journal: Counted) -> None:
    rt = Runtime(journal, State(), commit_delay=30.0)
    task = await running(rt)
    rt.submit(ProbeResult("p", False, 0.001, 2.0))
    await asyncio.sleep(0.1)
    assert rt.state.probes["p"].healthy is None
    rt.stop()
    await task
    assert rt.state.probes["p"].healthy is False
    assert (await journaled(journal))[-1] == "ProbeResult"
