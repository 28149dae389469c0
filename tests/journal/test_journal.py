"""The journal on real SQLite files: write-ahead batches, snapshots, locking, corruption, verify."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import re
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest
from immutables import Map

from agent.core.actions import Action, Log, UnitJob
from agent.core.draft import unchanged
from agent.core.inputs import ActionCompleted, GoalsLoaded, Input, Tick, UnitObserved
from agent.core.spec import GoalSet
from agent.core.state import ServiceState, State
from agent.errors import JournalCorrupt, JournalError, JournalLocked
from agent.journal import schema, sqlite
from agent.journal.statedir import DB_NAME
from agent.journal.store import Entry, Journal
from agent.journal.verify import StepFn
from tests.agentproc import ROOT
from tests.corekit import service


def fake_step(state: State, inp: Input) -> tuple[State, tuple[Action, ...]]:
    """UnitObserved records the unit and starts a job on it; ActionCompleted finishes the job."""
    if isinstance(inp, UnitObserved):
        name = inp.unit.removesuffix(".service")
        job = UnitJob(state.next_id, inp.unit, "start", name)
        svc = ServiceState(active=inp.active, sub=inp.sub, since=inp.at, job=job.id)
        return replace(
            state,
            services=state.services.set(name, svc),
            pending=state.pending.set(job.id, job),
            next_id=state.next_id + 1,
        ), (job,)
    if isinstance(inp, ActionCompleted) and inp.action_id in state.pending:
        return replace(state, pending=state.pending.delete(inp.action_id)), (
            Log("info", f"done {inp.action_id}"),
        )
    return state, ()


async def run(
    journal: Journal,
    state: State,
    inputs: Sequence[Input],
    batch: int = 4,
    step: StepFn = fake_step,
) -> State:
    """What the runtime does: step a batch, commit it in one transaction."""
    for start in range(0, len(inputs), batch):
        entries = []
        for inp in inputs[start : start + batch]:
            done = (inp.action_id,) if isinstance(inp, ActionCompleted) else ()
            new, out = step(state, inp)
            if not out and unchanged(state, new):
                state = new
                continue
            at = inp.now if isinstance(inp, Tick) else inp.at
            entries.append(Entry(at, inp, out, done if inp_pending(state, inp) else ()))
            state = new
        await journal.commit(entries, state)
    return state


def inp_pending(state: State, inp: Input) -> bool:
    return isinstance(inp, ActionCompleted) and inp.action_id in state.pending


def observations(
    n: int, units: Sequence[str] = ("web", "db"), t0: float = 100.0
) -> list[UnitObserved]:
    return [
        UnitObserved(f"{units[i % len(units)]}.service", "active", "running", t0 + i)
        for i in range(n)
    ]


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = await Journal.open(tmp_path, step=fake_step)
    yield j
    await j.close()


def sql(path: Path, statement: str, *params: object) -> list[tuple[object, ...]]:
    """Run one statement on the journal file behind the agent's back."""
    db = sqlite3.connect(path / DB_NAME, isolation_level=None)
    try:
        return db.execute(statement, params).fetchall()
    finally:
        db.close()


# -- basics ---------------------------------------------------------------------------------------


async def test_new_journal_loads_empty(tmp_path: Path, journal: Journal) -> None:
    assert await journal.load() == (State(), 0)
    assert (tmp_path / DB_NAME).is_file()
    assert (tmp_path / "lock").read_text().strip() == str(os.getpid())
    assert sql(tmp_path, "PRAGMA journal_mode") == [("wal",)]
    assert not (tmp_path / f"{DB_NAME}.new").exists()


async def test_commit_then_reopen_gives_the_same_state(tmp_path: Path, journal: Journal) -> None:
    state = await run(journal, State(), observations(10))
    state = await run(journal, state, [ActionCompleted(3, True, 200.0), Tick(201.0)])
    await journal.close()
    async with await Journal.open(tmp_path, step=fake_step) as again:
        assert await again.load() == (state, 11)


async def test_empty_commit_is_a_no_op(tmp_path: Path, journal: Journal) -> None:
    await journal.commit([], State(next_id=9))
    assert sql(tmp_path, "SELECT count(*) FROM entries") == [(0,)]
    assert await journal.load() == (State(), 0)


async def test_digest_only_on_the_last_entry_of_a_batch(tmp_path: Path, journal: Journal) -> None:
    await run(journal, State(), observations(6), batch=3)
    rows = sql(tmp_path, "SELECT seq, digest IS NOT NULL FROM entries ORDER BY seq")
    assert rows == [(1, 0), (2, 0), (3, 1), (4, 0), (5, 0), (6, 1)]


async def test_replay_after_snapshot(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path, snapshot_every=5, step=fake_step) as j:
        state = await run(j, State(), observations(13), batch=2)
    assert sql(tmp_path, "SELECT seq FROM snapshots ORDER BY seq") == [(6,), (12,)]
    async with await Journal.open(tmp_path, snapshot_every=5, step=fake_step) as j:
        assert await j.load() == (state, 13)
        assert await j.verify() == []


async def test_shutdown_snapshot_leaves_nothing_to_replay(tmp_path: Path, journal: Journal) -> None:
    state = await run(journal, State(), observations(7))
    await journal.snapshot(state)
    calls: list[Input] = []

    def counting(s: State, i: Input) -> tuple[State, tuple[Action, ...]]:
        calls.append(i)
        return fake_step(s, i)

    await journal.close()
    async with await Journal.open(tmp_path, step=counting) as j:
        assert await j.load() == (state, 7)
        assert len(await j.history()) == 7  # one snapshot: history still reaches genesis
    assert calls == []


async def test_entries_are_pruned_only_beyond_keep_snapshots(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path, keep_snapshots=2, step=fake_step) as j:
        state = State()
        for k in range(3):
            state = await run(j, state, observations(3, t0=k * 10.0))
            await j.snapshot(state)
            counts = sql(tmp_path, "SELECT count(*), min(seq) FROM entries")[0]
            assert counts == [(3, 1), (6, 1), (3, 7)][k]
        assert sql(tmp_path, "SELECT seq FROM snapshots") == [(6,), (9,)]
        assert await j.verify() == []


async def test_retention_bounds_the_file(tmp_path: Path) -> None:
    units = [f"s{i}" for i in range(50)]
    state, sizes = State(), []
    for phase in range(3):
        work: list[Input] = []
        for inp in observations(1000, units, t0=phase * 5000.0):  # each job completes
            work += [inp, ActionCompleted(len(work) // 2 + phase * 1000 + 1, True, inp.at + 0.5)]
        async with await Journal.open(
            tmp_path, snapshot_every=100, keep_snapshots=2, synchronous="OFF", step=fake_step
        ) as j:
            state = await run(j, state, work, 50)
        assert state.pending == Map()
        sizes.append((tmp_path / DB_NAME).stat().st_size)
    assert sql(tmp_path, "SELECT seq FROM snapshots ORDER BY seq") == [(5900,), (6000,)]
    assert sql(tmp_path, "SELECT min(seq), count(*) FROM entries") == [(5901, 100)]
    assert sizes[2] <= sizes[0] * 1.1, sizes
    async with await Journal.open(tmp_path, step=fake_step) as j:
        assert await j.load() == (state, 6000)
        assert await j.verify() == []


async def test_load_skips_a_damaged_newest_snapshot(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path, snapshot_every=4, step=fake_step) as j:
        state = await run(j, State(), observations(10), batch=2)
    sql(tmp_path, "UPDATE snapshots SET state = replace(state, 'running', 'stopped') WHERE seq = 8")
    async with await Journal.open(tmp_path, snapshot_every=4, step=fake_step) as j:
        assert await j.load() == (state, 10)
        problems = await j.verify()
    assert problems == ["snapshot 8: content does not match its recorded digest"]


async def test_real_step_round_trip(tmp_path: Path) -> None:
    goals = GoalSet(services=(service("web"), service("db", depends_on=("web",))), digest="g1")
    inputs: list[Input] = [
        GoalsLoaded(goals, 1.0),
        UnitObserved("web.service", "active", "running", 2.0),
        UnitObserved("db.service", "failed", "failed", 3.0),
        Tick(400.0),
    ]
    from agent.core.step import step

    async with await Journal.open(tmp_path) as j:
        state = await run(j, State(), inputs, batch=2, step=step)
        state = await run(
            j, state, [ActionCompleted(a, True, 401.0) for a in state.pending], 3, step
        )
    async with await Journal.open(tmp_path, readonly=True) as j:
        assert (await j.load())[0] == state
        assert await j.verify() == []


# -- locking --------------------------------------------------------------------------------------


async def test_second_open_in_process_is_locked(tmp_path: Path, journal: Journal) -> None:
    with pytest.raises(JournalLocked) as err:
        await Journal.open(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert f"pid {os.getpid()}" in str(err.value)


async def test_lock_is_released_on_close(tmp_path: Path) -> None:
    j = await Journal.open(tmp_path)
    await j.close()
    await j.close()
    async with await Journal.open(tmp_path):
        pass


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from agent.core.inputs import UnitObserved
    from agent.core.actions import UnitJob
    from agent.core.state import State
    from agent.journal.store import Entry, Journal

    async def main() -> None:
        j = await Journal.open(Path(sys.argv[1]), snapshot_every=7)
        for n in range(100000):
            inp = UnitObserved(f"u{n % 5}.service", "active", "running", float(n))
            job = UnitJob(n, inp.unit, "start", "x")
            await j.commit([Entry(float(n), inp, (job,))], State(next_id=n))
            if n == 3:
                print("ready", flush=True)
            await asyncio.sleep(0.002)

    asyncio.run(main())
    """
)


async def test_another_process_holds_the_lock(tmp_path: Path) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        assert line.strip() == b"ready"
        with pytest.raises(JournalLocked, match=f"pid {child.pid}") as err:
            await Journal.open(tmp_path)
        assert str(tmp_path) in str(err.value)
        seen = 0
        for _ in range(20):  # read-only, while the child keeps writing and pruning
            async with await Journal.open(tmp_path, readonly=True, step=lambda s, i: (s, ())) as ro:
                rows = await ro.history(limit=5)
                _, seq = await ro.load()
                assert rows[0].seq >= seq - 5
                seen = max(seen, seq)
            await asyncio.sleep(0.01)
        assert seen > 3
    finally:
        child.kill()
        await child.wait()


async def test_readonly_while_locked_in_process(tmp_path: Path, journal: Journal) -> None:
    state = await run(journal, State(), observations(5))
    async with await Journal.open(tmp_path, readonly=True, step=fake_step) as ro:
        assert await ro.load() == (state, 5)
        with pytest.raises(JournalError, match="read-only"):
            await ro.commit([Entry(1.0, Tick(1.0), ())], state)


async def test_readonly_needs_an_existing_journal(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal at"):
        await Journal.open(tmp_path / "nothing", readonly=True)
    assert not (tmp_path / "nothing").exists()


async def test_busy_database_is_reported_as_locked(
    tmp_path: Path, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    await journal.close()
    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT_MS", 50)
    other = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    try:
        async with await Journal.open(tmp_path, step=fake_step) as j:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(JournalLocked, match=f"{re.escape(DB_NAME)}: still busy"):
                await j.commit([Entry(1.0, Tick(1.0), ())], State())
            other.execute("ROLLBACK")
            await j.commit([Entry(1.0, Tick(1.0), ())], State())
            assert await j.load() == (State(), 1)
    finally:
        other.close()


# -- damaged files --------------------------------------------------------------------------------


async def _refused(tmp_path: Path, match: str) -> None:
    before = (tmp_path / DB_NAME).read_bytes()
    for readonly in (False, True):
        with pytest.raises(JournalError, match=match) as err:
            await Journal.open(tmp_path, readonly=readonly)
        assert str(tmp_path / DB_NAME) in str(err.value)
    assert (tmp_path / DB_NAME).read_bytes() == before


async def test_garbage_file_is_refused_and_untouched(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"these are not the droids " * 400)
    await _refused(tmp_path, "not a database")


async def test_empty_file_is_refused_and_untouched(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"")
    await _refused(tmp_path, "not a setpoint journal")


async def test_foreign_database_is_refused(tmp_path: Path) -> None:
    sql(tmp_path, "CREATE TABLE customers (name TEXT)")
    await _refused(tmp_path, "not a setpoint journal")


async def test_truncated_journal_is_refused_and_untouched(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path, step=fake_step) as j:
        await run(j, State(), observations(3000), batch=500)
    db = tmp_path / DB_NAME
    assert db.stat().st_size > 64 * 1024
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size // 2)
    before = db.read_bytes()
    with pytest.raises(JournalCorrupt) as err:
        await Journal.open(tmp_path, step=fake_step)
    assert str(db) in str(err.value)
    assert db.read_bytes() == before


async def test_future_schema_is_refused(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path):
        pass
    sql(tmp_path, "PRAGMA user_version = 99")
    known = schema.SCHEMA_VERSION
    await _refused(tmp_path, f"{DB_NAME} has schema version 99; this setpoint knows up to {known}")


async def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path):
        pass
    (tmp_path / DB_NAME).chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(JournalError, match=re.escape(DB_NAME)):
            await Journal.open(tmp_path)
        return
    # root reads any file: check as an unprivileged user instead, through the real CLI
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            sys.executable, "-m", "agent", "status", "--state-dir", str(tmp_path)]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    _, err = await proc.communicate()
    assert proc.returncode == 1, err
    assert f"{tmp_path / DB_NAME}" in err.decode() and "Traceback" not in err.decode()


async def test_directory_is_created(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path / "a" / "b") as j:
        assert await j.load() == (State(), 0)


# -- verify ---------------------------------------------------------------------------------------


async def test_verify_clean_journal(journal: Journal) -> None:
    await run(journal, State(), [*observations(9), ActionCompleted(2, True, 300.0)])
    assert await journal.verify() == []


async def test_verify_reports_a_tampered_digest(tmp_path: Path, journal: Journal) -> None:
    await run(journal, State(), observations(12))
    sql(tmp_path, "UPDATE entries SET digest = ? WHERE seq = 8", "0" * 64)
    problems = await journal.verify()
    assert len(problems) == 1
    assert problems[0].startswith("entry 8: recorded state digest 000000000000, replay gives")


async def test_verify_reports_a_tampered_input(tmp_path: Path, journal: Journal) -> None:
    await run(journal, State(), observations(12))
    sql(tmp_path, "UPDATE entries SET input = replace(input, 'running', 'exited') WHERE seq = 7")
    problems = await journal.verify()
    assert "entry 8: recorded state digest" in problems[0]  # 7 is inside the batch 5..8
    assert all(p.startswith("entry") for p in problems)


async def test_verify_reports_tampered_actions_and_gaps(tmp_path: Path, journal: Journal) -> None:
    await run(journal, State(), observations(12))
    sql(tmp_path, "UPDATE entries SET actions = '[]' WHERE seq = 2")
    sql(tmp_path, "DELETE FROM entries WHERE seq = 10")
    problems = await journal.verify()
    assert "entry 2: recorded actions differ from the replayed ones" in problems
    assert "entries 10..10 are missing" in problems


async def test_verify_reports_undecodable_entries(tmp_path: Path, journal: Journal) -> None:
    await run(journal, State(), observations(4))
    sql(tmp_path, """UPDATE entries SET input = '{"_t":"Martian"}' WHERE seq = 3""")
    problems = await journal.verify()
    assert problems[0].startswith("entry 3: unknown type 'Martian'")
    assert problems[-1] == "replay stopped at entry 3"
    with pytest.raises(JournalCorrupt, match="Martian"):
        await journal.load()


async def test_verify_compares_snapshots(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path, snapshot_every=4, step=fake_step) as j:
        state = await run(j, State(), observations(12))
        assert await j.verify() == []
        await j.snapshot(replace(state, next_id=999))
        assert await j.verify() == ["snapshot 12: differs from the state replayed up to it"]


def chatty_step(state: State, inp: Input) -> tuple[State, tuple[Action, ...]]:
    """fake_step, with one more log line per input: what an upgraded core might decide."""
    new, out = fake_step(state, inp)
    return new, (*out, Log("debug", "new logic"))


async def test_an_upgraded_logic_replays_only_its_own_entries(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path, step=fake_step, logic=1) as old:
        state = await run(old, State(), observations(6))
    async with await Journal.open(tmp_path, step=chatty_step, logic=2) as new:
        loaded, seq = await new.load()  # replayed by the new logic; a snapshot marks the border
        assert (loaded, seq) == (state, 6)
        await run(new, loaded, observations(4, t0=200.0), step=chatty_step)
        assert await new.verify() == []  # entries 7..10 checked from snapshot 6
    assert sql(tmp_path, "SELECT first_seq, version FROM logic") == [(1, 1), (7, 2)]
    async with await Journal.open(tmp_path, step=fake_step, logic=2) as wrong:
        await wrong.load()
        problems = await wrong.verify()  # same version, different decisions: still caught
        assert problems[0] == "entry 7: recorded actions differ from the replayed ones"


async def test_a_journal_from_schema_1_is_migrated_and_keeps_verifying(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path, step=fake_step, logic=1) as j:
        await run(j, State(), observations(3))
    sql(tmp_path, "DROP TABLE logic")
    sql(tmp_path, "PRAGMA user_version = 1")
    async with await Journal.open(tmp_path, step=fake_step, logic=1) as j:
        assert await j.verify() == []
    assert sql(tmp_path, "SELECT first_seq, version FROM logic") == [(1, 1)]
    assert sql(tmp_path, "PRAGMA user_version") == [(schema.SCHEMA_VERSION,)]


async def test_new_entries_without_a_border_snapshot_are_reported(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path, step=fake_step, logic=1) as old:
        await run(old, State(), observations(4))
    async with await Journal.open(tmp_path, step=fake_step, logic=2) as new:
        await new.load()
        sql(tmp_path, "DELETE FROM snapshots")
        assert await new.verify() == []  # nothing written by logic 2 yet: nothing to check
        await run(new, (await new.load())[0], observations(2, t0=300.0))
        assert await new.verify() == [
            "no snapshot where decision logic 2 begins (entry 5); its entries cannot be replayed"
        ]


# -- history --------------------------------------------------------------------------------------


async def test_history_filters_by_subject_and_time(journal: Journal) -> None:
    state = await run(journal, State(), observations(6, units=("web", "db", "cache")))
    await run(journal, state, [ActionCompleted(1, True, 110.0), ActionCompleted(2, False, 111.0)])
    web = await journal.history(subject="web")
    assert [r.seq for r in web] == [7, 4, 1]
    assert web[0].completed == (1,) and isinstance(web[0].input, ActionCompleted)
    assert [r.seq for r in await journal.history(subject="db.service")] == [8, 5, 2]
    assert await journal.history(subject="we") == []
    assert [r.seq for r in await journal.history(since=102.0, until=104.0)] == [5, 4, 3]
    assert [r.seq for r in await journal.history(limit=2)] == [8, 7]
    row = (await journal.history(subject="cache", limit=1))[0]
    assert row.as_dict()["input"]["unit"] == "cache.service"
    text = "#6 cache.service is active/running\n    → start job #6 for cache.service"
    assert str(row).endswith(text)


async def test_concurrent_history_and_commits(journal: Journal) -> None:
    async def reader() -> None:
        for _ in range(20):
            await journal.history(limit=10)

    state = State()
    tasks = [asyncio.create_task(reader()) for _ in range(3)]
    for k in range(20):
        state = await run(journal, state, observations(3, t0=float(k * 10)))
    await asyncio.gather(*tasks)
    assert await journal.verify() == []


async def test_close_waits_for_a_commit_in_flight(tmp_path: Path) -> None:
    j = await Journal.open(tmp_path, step=fake_step)
    state, entries = State(), []
    for inp in observations(3):
        new, out = fake_step(state, inp)
        entries.append(Entry(inp.at, inp, out, ()))
        state = new
    commit = asyncio.create_task(j.commit(entries, state))
    await asyncio.sleep(0)  # the commit is under way...
    commit.cancel()  # ...and its caller is cancelled (shutdown): the write itself goes on
    await j.close()  # must not pull the database out from under it
    with pytest.raises(asyncio.CancelledError):
        await commit
    again = await Journal.open(tmp_path, step=fake_step)
    try:
        assert await again.load() == (state, 3)
    finally:
        await again.close()


def _sqlite_memory() -> Callable[[], int]:
    """sqlite3_memory_used() of the library this process's sqlite3 module uses."""
    name = ctypes.util.find_library("sqlite3")
    assert name, "libsqlite3 not found"
    used = ctypes.CDLL(name).sqlite3_memory_used
    used.restype = ctypes.c_int64
    return cast(Callable[[], int], used)


async def test_batch_sizes_do_not_pile_up_prepared_statements(tmp_path: Path) -> None:
    """Every batch size up to 200 rows, each committed once: SQLite's memory stays within
    a few MB (one prepared multi-row INSERT per size held 20+ MB)."""
    used = _sqlite_memory()
    async with await Journal.open(tmp_path, snapshot_every=10**9, step=fake_step) as j:
        state, before = State(), used()
        for size in range(1, 201):
            state = await run(j, state, observations(size, t0=float(size * 1000)), batch=size)
        grown = (used() - before) / 2**20
        assert (await j.load())[1] == sum(range(1, 201))
    assert grown < 8, f"SQLite memory grew {grown:.1f} MB"
