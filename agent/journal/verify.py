"""Journal: Replay through `step`: the state rebuilt from the newest sound snapshot (`base`,
`replay`, for load), and every recorded decision checked from the oldest one (`verify`).

`verify` replays from genesis, or from the oldest snapshot once older entries are pruned, or
from the snapshot where the current decision logic begins (entries written by an older logic
are not replayed), and compares every entry's actions, completed ids and digest, and every
snapshot, with what the replay gives. All of these run inside the caller's read transaction.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from agent.core.actions import Action
from agent.core.inputs import Input, JournalGap
from agent.core.state import State
from agent.core.step import completes
from agent.errors import JournalCorrupt
from agent.journal import codec
from agent.journal.reports import utc_iso
from agent.journal.sqlite import Db

log = logging.getLogger("setpoint.journal")

StepFn = Callable[[State, Input], tuple[State, tuple[Action, ...]]]
SNAPSHOT_SQL = "SELECT state, digest FROM snapshots WHERE seq = ?"


def read_snapshot(text: Any, recorded: Any) -> State:
    """A stored snapshot's state; JournalCorrupt saying what is wrong with it."""
    if not isinstance(text, str):
        raise JournalCorrupt("not text")
    if hashlib.sha256(text.encode("ascii", "replace")).hexdigest() != recorded:
        raise JournalCorrupt("content does not match its recorded digest")
    state = codec.decode(text)
    if not isinstance(state, State):
        raise JournalCorrupt(f"holds a {type(state).__name__}, not a State")
    return state


async def base(db: Db) -> tuple[int, State]:
    """The newest snapshot that decodes and matches its digest, or genesis."""
    for (seq,) in await db.fetch("SELECT seq FROM snapshots ORDER BY seq DESC"):
        text, recorded = (await db.fetch(SNAPSHOT_SQL, (seq,)))[0]
        try:
            return seq, read_snapshot(text, recorded)
        except JournalCorrupt as err:
            log.warning("%s: snapshot %d skipped: %s", db.path, seq, err)
    first = await db.scalar("SELECT min(seq) FROM entries")
    if first is not None and first > 1:
        raise JournalCorrupt(f"{db.path}: no usable snapshot, and entries before {first} are gone")
    return 0, State()


async def replay(db: Db, step: StepFn, state: State, seq: int) -> tuple[State, int, str | None]:
    """Replay entries after `seq`; also returns the last recorded digest, if on the last."""
    recorded = None
    sql = "SELECT seq, input, digest FROM entries WHERE seq > ? ORDER BY seq"
    async with db.conn.execute(sql, (seq,)) as cursor:
        async for n, text, dig in cursor:
            if n != seq + 1:
                raise JournalCorrupt(f"{db.path}: entries {seq + 1}..{n - 1} are missing")
            inp = codec.decode(text)
            if isinstance(inp, JournalGap):
                state = await _after_gap(db, n, inp, state, dig)
            else:
                state, _ = step(state, inp)
            seq, recorded = n, dig
    return state, seq, recorded


async def _after_gap(db: Db, n: int, gap: JournalGap, state: State, closed: str | None) -> State:
    """The state after gap entry `n`: its snapshot when the gap was closed; the state before
    it when the agent stopped before it could close it (what was decided then is unknown)."""
    if closed is None:
        log.info("%s: entry %d: the journal could not write from %s (%s) and the agent stopped "
                 "before it could; what was decided then is not known", db.path, n,
                 utc_iso(gap.began), gap.error)  # fmt: skip
        return state
    rows = await db.fetch(SNAPSHOT_SQL, (n,))
    if not rows:
        raise JournalCorrupt(f"{db.path}: entry {n} closes a journal gap but its snapshot is gone")
    return read_snapshot(*rows[0])


async def verify(db: Db, step: StepFn, *, logic: int, logic_from: int) -> list[str]:
    """Every mismatch between the journal and its replay, [] when sound. `logic` is the current
    decision logic's version and `logic_from` the first entry it wrote (or will write)."""
    return await _Verifier(db, step, logic, logic_from).run()


class _Verifier:
    """One `verify` pass: replay from the oldest snapshot, collecting mismatches."""

    def __init__(self, db: Db, step: StepFn, logic: int, logic_from: int) -> None:
        self.db = db
        self.step = step
        self.logic = logic
        self.logic_from = logic_from
        self.problems: list[str] = []
        self.snaps: dict[int, State] = {}

    async def run(self) -> list[str]:
        rows = await self.db.fetch("SELECT seq, digest, state FROM snapshots ORDER BY seq")
        snaps = self.snaps
        for seq, recorded, text in rows:
            try:
                snaps[seq] = read_snapshot(text, recorded)
            except JournalCorrupt as err:
                self.problems.append(f"snapshot {seq}: {err}")
        first = await self.db.scalar("SELECT min(seq) FROM entries")
        start = 0 if first == 1 or not rows else rows[0][0]  # genesis when history reaches it
        if first is not None and first < self.logic_from:  # older logic wrote the first ones
            start = await self._logic_start(snaps)
            if start is None:
                return self.problems
        if start and start not in snaps:
            self.problems.append("the oldest snapshot is unusable; nothing to replay from")
            return self.problems
        state = snaps.get(start, State()) if start else State()
        if start in snaps and snaps[start] != state:
            self.problems.append(f"snapshot {start}: differs from the initial state")
        await self._replay(start, state, snaps)
        return self.problems

    async def _logic_start(self, snaps: dict[int, State]) -> int | None:
        """The snapshot where the current logic's entries begin; None when none can be checked."""
        begins = self.logic_from
        log.info("%s: entries before %d were decided by an older logic; not replayed",
                 self.db.path, begins)  # fmt: skip
        usable = [seq for seq in snaps if seq >= begins - 1]
        if usable:
            return min(usable)
        if (await self.db.scalar("SELECT max(seq) FROM entries") or 0) >= begins:
            self.problems.append(f"no snapshot where decision logic {self.logic} begins "
                                 f"(entry {begins}); its entries cannot be replayed")  # fmt: skip
        return None

    def _gap(self, n: int, state: State, recorded: str | None) -> State | None:
        """Across a gap: on from its snapshot, or from the state before it if never closed."""
        if recorded is None:
            return state
        after = self.snaps.get(n)
        if after is None:
            self.problems.append(f"entry {n}: a closed journal gap without its snapshot")
        elif codec.digest(after) != recorded:
            self.problems.append(f"entry {n}: the journal gap's snapshot differs from its digest")
        return after

    async def _replay(self, seq: int, state: State, snaps: dict[int, State]) -> None:
        sql = (
            "SELECT seq, input, actions, completed, digest FROM entries WHERE seq > ? ORDER BY seq"
        )
        async with self.db.conn.execute(sql, (seq,)) as cursor:
            async for n, inp, acts, done, recorded in cursor:
                if n != seq + 1:
                    self.problems.append(f"entries {seq + 1}..{n - 1} are missing")
                seq = n
                next_state = self._entry(n, state, inp, acts, done, recorded)
                if next_state is None:
                    self.problems.append(f"replay stopped at entry {n}")
                    return
                state = next_state
                if n in snaps and snaps[n] != state:
                    self.problems.append(f"snapshot {n}: differs from the state replayed up to it")

    def _entry(
        self, n: int, state: State, inp: str, acts: str, done: str, recorded: str | None
    ) -> State | None:
        try:
            inp_value, acts_value, done_value = (
                codec.decode(inp),
                codec.decode(acts),
                codec.decode(done),
            )
        except JournalCorrupt as err:
            self.problems.append(f"entry {n}: {err}")
            return None
        if isinstance(inp_value, JournalGap):
            return self._gap(n, state, recorded)
        expected_done = completes(state, inp_value)
        new, out = self.step(state, inp_value)
        if out != acts_value:
            self.problems.append(f"entry {n}: recorded actions differ from the replayed ones")
        if done_value != expected_done:
            self.problems.append(
                f"entry {n}: recorded completed ids {list(done_value)}, replay gives "
                f"{list(expected_done)}"
            )
        if recorded is not None and (got := codec.digest(new)) != recorded:
            self.problems.append(
                f"entry {n}: recorded state digest {recorded[:12]}, replay gives {got[:12]}"
            )
        return new
