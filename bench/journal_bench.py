"""Journal throughput and restore time, plus the codec on a large state.

    group commit    batches of 256 UnitObserved inputs, one UnitJob each, synchronous=FULL
                    (target >= 5,000 inputs/s); one input per commit for contrast
    restore         Journal.open + load() of a state with 10,000 pending jobs and 999 entries
                    after the last snapshot to replay (target <= 1 s)
    codec           encode + decode of a State with 1,000 and 10,000 services, and a commit's
                    state digest after one change (with and without codec._Lineage)

Files go to a temporary directory under $SETPOINT_BENCH_DIR (default: the system's), so fsync
costs what that file system makes it cost.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from immutables import Map

from agent.core.actions import UnitJob
from agent.core.inputs import GoalsLoaded, Input, UnitObserved
from agent.core.spec import GoalSet, ServiceSpec
from agent.core.state import State
from agent.core.step import step
from agent.journal import codec
from agent.journal.store import Entry, Journal

BATCH = 256
GROUPED = 20_000
SINGLE = 1_000
PENDING = 10_000
REPLAY = 999
CODEC_SIZES = (1_000, 10_000)


def goals(n: int) -> GoalSet:
    return GoalSet(
        services=tuple(ServiceSpec(f"svc{i}", f"svc{i}.service") for i in range(n)), digest=str(n)
    )


def loaded(n: int) -> State:
    """A state that knows `n` running services."""
    state, _ = step(State(), GoalsLoaded(goals(n), 0.0))
    for i in range(n):
        state, _ = step(state, UnitObserved(f"svc{i}.service", "active", "running", 0.5))
    return state


def job_entries(state: State, count: int, t0: float) -> tuple[list[Entry], State]:
    """`count` failure observations, each with the restart job it caused."""
    entries, pending, next_id = [], {}, state.next_id
    for k in range(count):
        i = k % len(state.services)
        inp = UnitObserved(
            f"svc{i}.service", "failed", "failed", t0 + k * 0.001, result="exit-code"
        )
        job = UnitJob(next_id, inp.unit, "restart", f"svc{i}")
        entries.append(Entry(inp.at, inp, (job,)))
        pending[next_id] = job
        next_id += 1
    return entries, replace(state, pending=Map(pending), next_id=next_id)


async def commit_rate(directory: Path, state: State, total: int, batch: int) -> float:
    """Inputs per second committed in batches of `batch` (synchronous=FULL)."""
    async with await Journal.open(directory) as journal:
        work = []
        for start in range(0, total, batch):
            entries, state = job_entries(state, batch, float(start))
            work.append((entries, state))
        started = time.perf_counter()
        for entries, after in work:
            await journal.commit(entries, after)
        return total / (time.perf_counter() - started)


async def prepare_restore(directory: Path) -> int:
    """A journal whose state has PENDING tracked jobs and REPLAY entries after its snapshot."""
    start: list[Input] = [GoalsLoaded(goals(PENDING), 0.0)]
    start += [UnitObserved(f"svc{i}.service", "inactive", "dead", 1.0) for i in range(PENDING)]
    later = [UnitObserved(f"svc{i}.service", "activating", "start", 2.0) for i in range(REPLAY)]
    async with await Journal.open(directory, synchronous="OFF") as journal:
        state = await _feed(journal, State(), start, 1000)
        await journal.snapshot(state)
        state = await _feed(journal, state, later, 111)
    return len(state.pending)


async def _feed(journal: Journal, state: State, inputs: Sequence[Input], batch: int) -> State:
    for start in range(0, len(inputs), batch):
        entries = []
        for inp in inputs[start : start + batch]:
            state, out = step(state, inp)
            entries.append(Entry(1.0, inp, out))
        await journal.commit(entries, state)
    return state


async def restore_time(directory: Path) -> tuple[float, int, int]:
    started = time.perf_counter()
    async with await Journal.open(directory) as journal:
        state, seq = await journal.load()
        return time.perf_counter() - started, len(state.pending), seq


def codec_figures(n: int) -> dict[str, float]:
    state = loaded(n)
    started = time.perf_counter()
    data = codec.encode(state)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    assert codec.decode(data) == state
    decoded = time.perf_counter() - started
    warm, fresh = commit_digest(state, fresh=False), commit_digest(state, fresh=True)
    return {"bytes": len(data), "cold": cold, "decode": decoded, "warm": warm, "fresh": fresh}


def commit_digest(state: State, *, fresh: bool, rounds: int = 21) -> float:
    """Median seconds of a commit's state digest after one service changed; `fresh`: without
    the services map's previous version (codec._Lineage), as before it existed."""
    times = []
    for k in range(rounds):
        i = k * 7 % len(state.services)
        state, _ = step(state, UnitObserved(f"svc{i}.service", "failed", "failed", 9.0 + k))
        if fresh:
            codec._lineages.clear()
        started = time.perf_counter()
        codec.digest(state)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def run() -> dict[str, float]:
    base = os.environ.get("SETPOINT_BENCH_DIR")
    with tempfile.TemporaryDirectory(dir=base, prefix="journal-bench-") as tmp:
        root = Path(tmp)
        state = loaded(1000)
        grouped = await commit_rate(root / "grouped", state, GROUPED, BATCH)
        single = await commit_rate(root / "single", state, SINGLE, 1)
        pending = await prepare_restore(root / "restore")
        seconds, restored, seq = await restore_time(root / "restore")
        assert restored == pending == PENDING, (restored, pending)
    return {"grouped": grouped, "single": single, "restore": seconds, "seq": seq}


def main() -> None:
    figures = asyncio.run(run())
    print(
        f"journal: group commit ({BATCH}/batch, synchronous=FULL, 1,000 services): "
        f"{figures['grouped']:,.0f} inputs/s (target >= 5,000/s); "
        f"one input per commit: {figures['single']:,.0f} inputs/s"
    )
    print(
        f"journal: restore of {PENDING:,} pending actions (snapshot + {REPLAY} entries replayed, "
        f"seq {figures['seq']:.0f}): {figures['restore'] * 1000:.0f} ms (target <= 1,000 ms)"
    )
    for n in CODEC_SIZES:
        c = codec_figures(n)
        print(
            f"codec: State with {n:,} services, {c['bytes'] / 1e6:.2f} MB: "
            f"encode {c['cold'] * 1000:.1f} ms cold, decode {c['decode'] * 1000:.1f} ms; "
            f"a commit's digest after one change {c['warm'] * 1000:.2f} ms "
            f"({c['fresh'] * 1000:.2f} ms re-sorting the services map: "
            f"{c['fresh'] / c['warm']:.1f}x)"
        )


if __name__ == "__main__":
    main()
