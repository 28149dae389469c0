"""Journal: The journal: what the agent was told, what it decided, and snapshots of its state
(SQLite, WAL), in `state_dir/journal.db` (see statedir.py; the tables in schema.py).

The runtime commits a batch of entries in ONE transaction and dispatches actions only after
`commit` returns (write-ahead; with synchronous=FULL the WAL is fsynced first). `load` takes the
newest sound snapshot and replays the entries after it through `step`; `verify` replays from
genesis (or the oldest snapshot once older entries are pruned) and compares every recorded digest
and snapshot (both in verify.py). Retention: beyond `keep_snapshots` snapshots the oldest go, and
with them the entries up to the oldest snapshot kept, so the file stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from agent.core import LOGIC
from agent.core.actions import Action
from agent.core.inputs import Input, JournalGap
from agent.core.state import State
from agent.core.step import step as core_step
from agent.errors import JournalError
from agent.journal import codec, schema, statedir, verify
from agent.journal.reports import HistoryRow
from agent.journal.sqlite import Db
from agent.journal.subjects import TRACKED, subjects
from agent.journal.verify import StepFn

log = logging.getLogger("setpoint.journal")


@dataclass(frozen=True)
class Entry:
    """One journaled input: when, what, the actions it produced, the tracked ids it completed."""

    at: float
    input: Input
    actions: tuple[Action, ...]
    completed: tuple[int, ...] = ()


class Journal:
    """The open journal of one state directory; see the module docstring."""

    def __init__(
        self,
        db: Db,
        lock_fd: int | None,
        step: StepFn | None,
        snapshot_every: int,
        keep_snapshots: int,
    ) -> None:
        self._db = db
        self.path = db.path
        self.readonly = lock_fd is None
        self._lock_fd = lock_fd
        self._step = step or core_step
        self._snapshot_every = snapshot_every
        self._keep = keep_snapshots
        self._seq = 0
        self._snap_seq = 0
        self.last_at = 0.0
        """The newest entry's time (0 when none): where the agent's clock may start."""
        self._state = State()
        self._busy = asyncio.Lock()
        self._writes: set[asyncio.Future[None]] = set()
        """Commits and snapshots in flight; shielded, so they outlive a cancelled caller."""
        self.logic = LOGIC
        self._logic_from = 1
        """The first entry the current logic wrote or will write."""

    @classmethod
    async def open(
        cls,
        state_dir: Path,
        *,
        synchronous: str = "FULL",
        snapshot_every: int = 1000,
        keep_snapshots: int = 3,
        readonly: bool = False,
        step: StepFn | None = None,
        logic: int = LOGIC,
    ) -> Self:
        """Open (creating if need be, unless readonly) `state_dir/journal.db`.

        `step` and `logic` stand in for the core's (tests); see agent.core.LOGIC.
        """
        sync = synchronous.upper()
        if sync not in schema.SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(schema.SYNCHRONOUS)}")
        if snapshot_every < 1 or keep_snapshots < 1:
            raise ValueError("snapshot_every and keep_snapshots must be at least 1")
        state_dir = await asyncio.to_thread(Path.absolute, Path(state_dir))
        prepare = statedir.must_exist if readonly else statedir.prepare
        lock_fd = await asyncio.to_thread(prepare, state_dir)
        try:
            db = await Db.connect(state_dir / statedir.DB_NAME, readonly)
        except BaseException:
            statedir.unlock(lock_fd)
            raise
        journal = cls(db, lock_fd, step, snapshot_every, keep_snapshots)
        journal.logic = logic
        try:
            await journal._setup(sync)
        except BaseException:
            await journal.close()
            raise
        return journal

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Wait for the writes in flight, close the database, release the lock; safe twice."""
        if self._writes:
            await asyncio.wait(set(self._writes))
        try:
            await self._db.close()
        finally:
            fd, self._lock_fd = self._lock_fd, None
            statedir.unlock(fd)

    # -- the runtime's side -----------------------------------------------------------------------

    async def load(self) -> tuple[State, int]:
        """The state after the last entry, and that entry's seq; (State(), 0) when empty."""
        async with self._reading("loading"):
            seq, state = await verify.base(self._db)
            state, seq, recorded = await verify.replay(self._db, self._step, state, seq)
        if recorded is not None and codec.digest(state) != recorded:
            older = seq < self._logic_from  # an older logic wrote it: expected after an upgrade
            log.log(
                logging.INFO if older else logging.WARNING,
                "%s: replay up to entry %d does not reproduce the recorded state%s; "
                "continuing with the replayed state",
                self.path,
                seq,
                f" (written by decision logic before {self.logic})" if older else "",
            )
        self._state = state
        if not self.readonly and self._logic_from == seq + 1 and self._snap_seq < seq:
            await self._snapshot_now(state)  # where replays by this logic will start
        return state, seq

    async def commit(self, entries: Sequence[Entry], state: State) -> None:
        """Store `entries` and the digest of `state` (the state after them) in one durable
        transaction; take a snapshot when due. No-op for an empty batch."""
        if not entries:
            return
        self._writable("commit")
        await self._shielded(self._commit(list(entries), state))

    async def snapshot(self, state: State) -> None:
        """Store `state` as the state after the last entry (e.g. at a clean shutdown)."""
        self._writable("snapshot")
        await self._shielded(self._snapshot_now(state))

    async def mark_gap(self, gap: JournalGap) -> None:
        """Record that a gap is open (the entry after the last one): a small write that tells
        whether the journal can write again, and leaves a trace should the agent die before
        the gap is closed (a replay then keeps the state from before it)."""
        self._writable("record a gap")
        await self._shielded(self._write_gap(gap, None))

    async def close_gap(self, gap: JournalGap, state: State) -> None:
        """Close the open gap: its entry with a snapshot of `state`, the state after it."""
        self._writable("close a gap")
        await self._shielded(self._write_gap(gap, state))

    async def _shielded(self, write: Coroutine[Any, Any, None]) -> None:
        """Run a write to its end even if the caller is cancelled; `close` waits for it."""
        task = asyncio.ensure_future(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        await asyncio.shield(task)

    # -- operators' side --------------------------------------------------------------------------

    async def verify(self) -> list[str]:
        """Replay from the oldest snapshot (or genesis); every mismatch found, [] when sound."""
        async with self._reading("verifying"):
            return await verify.verify(
                self._db, self._step, logic=self.logic, logic_from=self._logic_from
            )

    async def history(
        self,
        *,
        subject: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 200,
    ) -> list[HistoryRow]:
        """Entries, newest first; `subject` is a service, unit, probe or domain name."""
        where: list[str] = ["1"]
        params: list[object] = []
        if subject:
            where.append("instr(subjects, ?) > 0")
            params.append(f"\n{subject}\n")
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        if until is not None:
            where.append("at <= ?")
            params.append(until)
        sql = (
            "SELECT seq, at, input, actions, completed FROM entries "  # noqa: S608 (constant parts)
            f"WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
        )
        async with self._reading("reading history"):
            rows = await self._db.fetch(sql, (*params, max(0, limit)))
        return [
            HistoryRow(s, at, codec.decode(i), codec.decode(a), codec.decode(c))
            for s, at, i, a, c in rows
        ]

    # -- internals --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _reading(self, doing: str) -> AsyncIterator[None]:
        """One consistent read: a DEFERRED transaction, between writes."""
        async with self._busy, self._db.transaction("DEFERRED", doing):
            yield

    def _writable(self, doing: str) -> None:
        if self.readonly:
            raise JournalError(f"{self.path}: opened read-only; cannot {doing}")

    async def _setup(self, sync: str) -> None:
        db = self._db
        with db.guard("opening"):
            await schema.attach(db, sync, readonly=self.readonly)
            self._seq = await db.scalar("SELECT max(seq) FROM entries") or 0
            self._snap_seq = await db.scalar("SELECT max(seq) FROM snapshots") or 0
            self._seq = max(self._seq, self._snap_seq)
            self.last_at = await db.scalar("SELECT max(at) FROM entries") or 0.0
            self._logic_from = await schema.logic_begins(
                db, self.logic, self._seq + 1, readonly=self.readonly
            )

    async def _commit(self, entries: list[Entry], state: State) -> None:
        async with self._busy:
            rows = self._rows(entries, state)
            seq = self._seq + len(entries)
            snap = seq - self._snap_seq >= self._snapshot_every
            if not snap and len(rows) <= schema.ROWS_PER_STATEMENT:
                with self._db.guard("committing"):  # one statement: atomic, one thread hop
                    await self._db.conn.execute(
                        schema.insert(len(rows)), [v for row in rows for v in row]
                    )
            else:
                async with self._db.transaction("IMMEDIATE", "committing"):
                    await self._db.conn.executemany(schema.insert(1), rows)
                    if snap:
                        await self._write_snapshot(seq, state)
            self._seq, self._state = seq, state
            if snap:
                self._snap_seq = seq

    async def _write_gap(self, gap: JournalGap, state: State | None) -> None:
        async with self._busy:
            seq = self._seq + 1
            digest = None if state is None else codec.digest(state)
            row = (seq, gap.at, "JournalGap", codec.encode(gap).decode("ascii"), "[]", "[]", "",
                   digest)  # fmt: skip
            async with self._db.transaction("IMMEDIATE", "recording a journal gap"):
                await self._db.conn.execute(schema.insert(1, "REPLACE"), row)
                if state is not None:
                    await self._write_snapshot(seq, state)
            if state is not None:
                self._seq = self._snap_seq = seq
                self._state = state

    async def _snapshot_now(self, state: State) -> None:
        async with self._busy:
            async with self._db.transaction("IMMEDIATE", "taking a snapshot"):
                await self._write_snapshot(self._seq, state)
            self._snap_seq, self._state = self._seq, state

    async def _write_snapshot(self, seq: int, state: State) -> None:
        """Insert a snapshot; once there are more than `keep_snapshots`, drop the oldest and the
        entries up to the oldest one kept (until then history reaches back to genesis).
        Inside the caller's transaction."""
        text = codec.encode(state)
        db = self._db.conn
        await db.execute(
            "INSERT OR REPLACE INTO snapshots (seq, taken, digest, state) VALUES (?, ?, ?, ?)",
            (seq, time.time(), hashlib.sha256(text).hexdigest(), text.decode("ascii")),
        )
        async with db.execute(
            "DELETE FROM snapshots WHERE seq < "
            "(SELECT seq FROM snapshots ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (self._keep - 1,),
        ) as cursor:
            dropped = cursor.rowcount
        if dropped > 0:
            await db.execute("DELETE FROM entries WHERE seq <= (SELECT min(seq) FROM snapshots)")

    def _rows(self, entries: list[Entry], state: State) -> list[tuple[Any, ...]]:
        """Encoded rows (in schema.insert's column order); the last carries the digest of
        `state`."""
        known: dict[int, Action] = {}
        rows: list[tuple[Any, ...]] = []
        for n, entry in enumerate(entries, self._seq + 1):
            names = subjects(entry.input, entry.actions, state, self._state, known)
            known.update((a.id, a) for a in entry.actions if isinstance(a, TRACKED))
            rows.append(
                (
                    n,
                    entry.at,
                    type(entry.input).__name__,
                    codec.encode(entry.input).decode("ascii"),
                    codec.encode(entry.actions).decode("ascii"),
                    codec.encode(entry.completed).decode("ascii"),
                    names,
                    None,
                )
            )
        rows[-1] = (*rows[-1][:-1], codec.digest(state))
        return rows
