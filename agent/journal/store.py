"""Journal: The journal: what the agent was told, what it decided, and snapshots of its state
(SQLite, WAL).

    state_dir/journal.db   entries: one row per input that changed something, with its actions,
                           the tracked ids it completed, the names it is about (for `history`)
                           and, on the last entry of each batch, the digest of the state after it;
                           snapshots: the whole state every `snapshot_every` entries
    state_dir/lock         flock held by the one writer for its whole life; holds its pid

The runtime commits a batch of entries in ONE transaction and dispatches actions only after
`commit` returns (write-ahead; with synchronous=FULL the WAL is fsynced first). `load` takes the
newest sound snapshot and replays the entries after it through `step`; `verify` replays from
genesis (or the oldest snapshot once older entries are pruned) and compares every recorded digest
and snapshot. Retention: beyond `keep_snapshots` snapshots the oldest go, and with them the
entries up to the oldest snapshot kept, so the file stays bounded.

A new journal is built under a temporary name and renamed into place, so an existing journal.db
is always one this code finished creating; anything else there (garbage, a truncated file,
another program's database) is reported and never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from agent.core import LOGIC
from agent.core.actions import Action, RunEffect, SendAlert, UnitJob
from agent.core.inputs import ActionCompleted, Input, OperatorCommand, ProbeResult, UnitObserved
from agent.core.state import State
from agent.errors import JournalCorrupt, JournalError, JournalLocked
from agent.journal import codec

log = logging.getLogger("setpoint.journal")

StepFn = Callable[[State, Input], tuple[State, tuple[Action, ...]]]

DB_NAME = "journal.db"
LOCK_NAME = "lock"
APPLICATION_ID = 0x53455450  # "SETP"
BUSY_TIMEOUT_MS = 5000
WAL_SIZE_LIMIT = 64 * 1024 * 1024
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
SNAPSHOT_SQL = "SELECT state, digest FROM snapshots WHERE seq = ?"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: entries and snapshots
        """CREATE TABLE entries (
            seq INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            input TEXT NOT NULL,
            actions TEXT NOT NULL,
            completed TEXT NOT NULL,
            subjects TEXT NOT NULL,
            digest TEXT
        )""",
        "CREATE INDEX entries_at ON entries(at)",
        """CREATE TABLE snapshots (
            seq INTEGER PRIMARY KEY,
            taken REAL NOT NULL,
            digest TEXT NOT NULL,
            state TEXT NOT NULL
        )""",
    ),
    (  # 2: where each version of the decision logic (agent.core.LOGIC) begins
        "CREATE TABLE logic (first_seq INTEGER PRIMARY KEY, version INTEGER NOT NULL)",
        "INSERT INTO logic VALUES (1, 1)",
    ),
)
"""MIGRATIONS[n] takes the schema from version n to n + 1; never edit a released one."""
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class Entry:
    """One journaled input: when, what, the actions it produced, the tracked ids it completed."""

    at: float
    input: Input
    actions: tuple[Action, ...]
    completed: tuple[int, ...] = ()


@dataclass(frozen=True)
class HistoryRow:
    """An entry as `history` returns it."""

    seq: int
    at: float
    input: Input
    actions: tuple[Action, ...]
    completed: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly: every field, dataclasses as dicts with a "type"."""
        return {
            "seq": self.seq,
            "at": self.at,
            "time": _iso(self.at),
            "input": codec.plain(self.input),
            "actions": codec.plain(self.actions),
            "completed": list(self.completed),
        }

    def __str__(self) -> str:
        text = f"{_iso(self.at)} #{self.seq} {_brief(self.input)}"
        for action in self.actions:
            text += f"\n    -> {_brief(action)}"
        return text


class Journal:
    """The open journal of one state directory; see the module docstring."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: Path,
        lock_fd: int | None,
        step: StepFn | None,
        snapshot_every: int,
        keep_snapshots: int,
    ) -> None:
        self._db: aiosqlite.Connection | None = db
        self.path = path
        self.readonly = lock_fd is None
        self._lock_fd = lock_fd
        self._step_fn = step
        self._snapshot_every = snapshot_every
        self._keep = keep_snapshots
        self._seq = 0
        self._snap_seq = 0
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
    ) -> Journal:
        """Open (creating if need be, unless readonly) `state_dir/journal.db`.

        `step` and `logic` stand in for the core's (tests); see agent.core.LOGIC.
        """
        sync = synchronous.upper()
        if sync not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
        if snapshot_every < 1 or keep_snapshots < 1:
            raise ValueError("snapshot_every and keep_snapshots must be at least 1")
        state_dir = await asyncio.to_thread(Path.absolute, Path(state_dir))
        path = state_dir / DB_NAME
        prepare = _must_exist if readonly else _prepare
        lock_fd = await asyncio.to_thread(prepare, state_dir)
        try:
            db = await _connect(path, readonly)
        except BaseException:
            _unlock(lock_fd)
            raise
        journal = cls(db, path, lock_fd, step, snapshot_every, keep_snapshots)
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
        db, self._db = self._db, None
        try:
            if db is not None:
                with self._guard("closing"):
                    await db.close()
        finally:
            fd, self._lock_fd = self._lock_fd, None
            _unlock(fd)

    # -- the runtime's side -----------------------------------------------------------------------

    async def load(self) -> tuple[State, int]:
        """The state after the last entry, and that entry's seq; (State(), 0) when empty."""
        async with self._busy, self._transaction("DEFERRED", "loading"):
            seq, state = await self._base()
            state, seq, recorded = await self._replay_for_load(state, seq)
        if recorded is not None and codec.digest(state) != recorded:
            log.warning(
                "%s: replay up to entry %d does not reproduce the recorded state "
                "(written by decision logic before %d?); continuing with the replayed state",
                self.path,
                seq,
                self.logic,
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

    async def _shielded(self, write: Coroutine[Any, Any, None]) -> None:
        """Run a write to its end even if the caller is cancelled; `close` waits for it."""
        task = asyncio.ensure_future(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        await asyncio.shield(task)

    # -- operators' side --------------------------------------------------------------------------

    async def verify(self) -> list[str]:
        """Replay from the oldest snapshot (or genesis); every mismatch found, [] when sound."""
        async with self._busy, self._transaction("DEFERRED", "verifying"):
            return await _Verifier(self).run()

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
        async with self._busy, self._transaction("DEFERRED", "reading history"):
            rows = await self._fetch(sql, (*params, max(0, limit)))
        return [
            HistoryRow(s, at, codec.decode(i), codec.decode(a), codec.decode(c))
            for s, at, i, a, c in rows
        ]

    # -- internals --------------------------------------------------------------------------------

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise JournalError(f"{self.path}: the journal is closed")
        return self._db

    @property
    def _step(self) -> StepFn:
        if self._step_fn is None:
            from agent.core.step import step  # noqa: PLC0415 (lazy: tests inject their own)

            self._step_fn = step
        return self._step_fn

    def _writable(self, doing: str) -> None:
        if self.readonly:
            raise JournalError(f"{self.path}: opened read-only; cannot {doing}")

    @contextlib.contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as err:
            raise _convert(err, self.path, doing) from err

    @contextlib.asynccontextmanager
    async def _transaction(self, mode: str, doing: str) -> AsyncIterator[None]:
        with self._guard(doing):
            db = self._conn
            await db.execute(f"BEGIN {mode}")
            try:
                yield
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    async def _fetch(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        return list(await self._conn.execute_fetchall(sql, tuple(params)))

    async def _scalar(self, sql: str) -> Any:
        rows = await self._fetch(sql)
        return rows[0][0] if rows else None

    async def _setup(self, sync: str) -> None:
        with self._guard("opening"):
            await self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            app_id = await self._scalar("PRAGMA application_id")
            version = await self._scalar("PRAGMA user_version")
            self._check_identity(app_id, version)
            if not self.readonly:
                await self._quick_check()
                await self._conn.execute("PRAGMA journal_mode = WAL")
                await self._conn.execute(f"PRAGMA synchronous = {sync}")
                await self._conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
                if version < SCHEMA_VERSION:
                    await self._migrate(version)
            self._seq = await self._scalar("SELECT max(seq) FROM entries") or 0
            self._snap_seq = await self._scalar("SELECT max(seq) FROM snapshots") or 0
            self._seq = max(self._seq, self._snap_seq)
            await self._note_logic()

    async def _note_logic(self) -> None:
        """Find where the current logic's entries begin; a writer records a new version."""
        rows = await self._fetch("SELECT first_seq, version FROM logic ORDER BY first_seq DESC")
        first, version = rows[0] if rows else (1, 1)
        if version == self.logic:
            self._logic_from = first
            return
        self._logic_from = self._seq + 1
        if not self.readonly:
            await self._conn.execute(
                "INSERT OR REPLACE INTO logic VALUES (?, ?)", (self._logic_from, self.logic)
            )
            log.info(
                "%s: decision logic %d from entry %d on", self.path, self.logic, self._logic_from
            )

    def _check_identity(self, app_id: int, version: int) -> None:
        if app_id != APPLICATION_ID:
            raise JournalCorrupt(
                f"{self.path} is a SQLite database but not a setpoint journal "
                f"(application_id {app_id:#x}); left untouched"
            )
        if version > SCHEMA_VERSION:
            raise JournalCorrupt(
                f"{self.path.name} has schema version {version}; "
                f"this setpoint knows up to {SCHEMA_VERSION} ({self.path})"
            )
        if version < SCHEMA_VERSION and self.readonly:
            raise JournalError(
                f"{self.path} has schema version {version}, older than {SCHEMA_VERSION}; "
                "start the agent once to migrate it"
            )

    async def _quick_check(self) -> None:
        rows = [r[0] for r in await self._fetch("PRAGMA quick_check")]
        if rows != ["ok"]:
            raise JournalCorrupt(
                f"{self.path} fails its integrity check: {'; '.join(rows[:5])}; left untouched"
            )

    async def _migrate(self, version: int) -> None:
        async with self._transaction("IMMEDIATE", f"migrating from schema {version}"):
            for sql in _migration_sql(version):
                await self._conn.execute(sql)
        log.info("%s: schema migrated from version %d to %d", self.path, version, SCHEMA_VERSION)

    async def _commit(self, entries: list[Entry], state: State) -> None:
        async with self._busy:
            rows = self._rows(entries, state)
            seq = self._seq + len(entries)
            snap = seq - self._snap_seq >= self._snapshot_every
            if not snap and len(rows) <= _ROWS_PER_STATEMENT:
                with self._guard("committing"):  # one statement: atomic, one thread hop
                    await self._conn.execute(_insert(len(rows)), [v for row in rows for v in row])
            else:
                async with self._transaction("IMMEDIATE", "committing"):
                    await self._conn.executemany(_insert(1), rows)
                    if snap:
                        await self._write_snapshot(seq, state)
            self._seq, self._state = seq, state
            if snap:
                self._snap_seq = seq

    async def _snapshot_now(self, state: State) -> None:
        async with self._busy:
            async with self._transaction("IMMEDIATE", "taking a snapshot"):
                await self._write_snapshot(self._seq, state)
            self._snap_seq, self._state = self._seq, state

    async def _write_snapshot(self, seq: int, state: State) -> None:
        """Insert a snapshot; once there are more than `keep_snapshots`, drop the oldest and the
        entries up to the oldest one kept (until then history reaches back to genesis).
        Inside the caller's transaction."""
        text = codec.encode(state)
        db = self._conn
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
        """Encoded rows; the last one carries the digest of `state`."""
        known: dict[int, Action] = {}
        rows: list[tuple[Any, ...]] = []
        for n, entry in enumerate(entries, self._seq + 1):
            subjects = _subjects(entry, state, self._state, known)
            known.update((a.id, a) for a in entry.actions if isinstance(a, _TRACKED))
            rows.append(
                (
                    n,
                    entry.at,
                    type(entry.input).__name__,
                    codec.encode(entry.input).decode("ascii"),
                    codec.encode(entry.actions).decode("ascii"),
                    codec.encode(entry.completed).decode("ascii"),
                    subjects,
                    None,
                )
            )
        rows[-1] = (*rows[-1][:-1], codec.digest(state))
        return rows

    async def _base(self) -> tuple[int, State]:
        """The newest snapshot that decodes and matches its digest, or genesis."""
        for (seq,) in await self._fetch("SELECT seq FROM snapshots ORDER BY seq DESC"):
            text, recorded = (await self._fetch(SNAPSHOT_SQL, (seq,)))[0]
            try:
                return seq, _read_snapshot(text, recorded)
            except JournalCorrupt as err:
                log.warning("%s: snapshot %d skipped: %s", self.path, seq, err)
        first = await self._scalar("SELECT min(seq) FROM entries")
        if first is not None and first > 1:
            raise JournalCorrupt(
                f"{self.path}: no usable snapshot, and entries before {first} are gone"
            )
        return 0, State()

    async def _replay_for_load(self, state: State, seq: int) -> tuple[State, int, str | None]:
        """Replay entries after `seq`; also returns the last recorded digest, if on the last."""
        step, recorded = self._step, None
        sql = "SELECT seq, input, digest FROM entries WHERE seq > ? ORDER BY seq"
        async with self._conn.execute(sql, (seq,)) as cursor:
            async for n, text, dig in cursor:
                if n != seq + 1:
                    raise JournalCorrupt(f"{self.path}: entries {seq + 1}..{n - 1} are missing")
                state, _ = step(state, codec.decode(text))
                seq, recorded = n, dig
        return state, seq, recorded


class _Verifier:
    """One `verify` pass: replay from the oldest snapshot, collecting mismatches."""

    def __init__(self, journal: Journal) -> None:
        self.j = journal
        self.problems: list[str] = []

    async def run(self) -> list[str]:
        rows = await self.j._fetch("SELECT seq, digest, state FROM snapshots ORDER BY seq")
        snaps: dict[int, State] = {}
        for seq, recorded, text in rows:
            try:
                snaps[seq] = _read_snapshot(text, recorded)
            except JournalCorrupt as err:
                self.problems.append(f"snapshot {seq}: {err}")
        first = await self.j._scalar("SELECT min(seq) FROM entries")
        start = 0 if first == 1 or not rows else rows[0][0]  # genesis when history reaches it
        if first is not None and first < self.j._logic_from:  # older logic wrote the first ones
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
        begins = self.j._logic_from
        log.info("%s: entries before %d were decided by an older logic; not replayed",
                 self.j.path, begins)  # fmt: skip
        usable = [seq for seq in snaps if seq >= begins - 1]
        if usable:
            return min(usable)
        if (await self.j._scalar("SELECT max(seq) FROM entries") or 0) >= begins:
            self.problems.append(f"no snapshot where decision logic {self.j.logic} begins "
                                 f"(entry {begins}); its entries cannot be replayed")  # fmt: skip
        return None

    async def _replay(self, seq: int, state: State, snaps: dict[int, State]) -> None:
        sql = (
            "SELECT seq, input, actions, completed, digest FROM entries WHERE seq > ? ORDER BY seq"
        )
        async with self.j._conn.execute(sql, (seq,)) as cursor:
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
        expected_done = _completes(state, inp_value)
        new, out = self.j._step(state, inp_value)
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


# -- helpers ------------------------------------------------------------------------------------

_TRACKED = (UnitJob, RunEffect, SendAlert)


def _completes(state: State, inp: Input) -> tuple[int, ...]:
    """The tracked id `inp` completes, as the runtime records it."""
    if isinstance(inp, ActionCompleted) and inp.action_id in state.pending:
        return (inp.action_id,)
    return ()


def _read_snapshot(text: Any, recorded: Any) -> State:
    """A stored snapshot's state; JournalCorrupt saying what is wrong with it."""
    if not isinstance(text, str):
        raise JournalCorrupt("not text")
    if hashlib.sha256(text.encode("ascii", "replace")).hexdigest() != recorded:
        raise JournalCorrupt("content does not match its recorded digest")
    state = codec.decode(text)
    if not isinstance(state, State):
        raise JournalCorrupt(f"holds a {type(state).__name__}, not a State")
    return state


def _subjects(entry: Entry, state: State, before: State, known: dict[int, Action]) -> str:
    """Names an entry is about, newline-delimited (so `instr` finds whole names)."""
    names: set[str] = set()
    inp, index = entry.input, state.index
    if isinstance(inp, UnitObserved):
        names.update((inp.unit, index.unit_to_service.get(inp.unit, "")))
    elif isinstance(inp, ProbeResult):
        names.add(inp.probe)
        names.update(index.probe_to_services.get(inp.probe, ()))
    elif isinstance(inp, OperatorCommand):
        names.add(inp.target)
    elif isinstance(inp, ActionCompleted):
        done = known.get(inp.action_id) or before.pending.get(inp.action_id)
        if done is not None:
            names.update(_action_subjects(done))
    for action in entry.actions:
        names.update(_action_subjects(action))
    names.discard("")
    return "\n" + "\n".join(sorted(names)) + "\n" if names else ""


def _action_subjects(action: Action) -> Iterable[str]:
    if isinstance(action, UnitJob):
        return (action.unit, action.service)
    if isinstance(action, RunEffect):
        return (action.owner, action.owner.partition(":")[2], action.target)
    if isinstance(action, SendAlert):
        return (value for _, value in action.alert.labels)
    return (getattr(action, "subject", ""),)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def _brief(obj: object) -> str:
    """`Name field=value ...`: the fields that differ from their defaults, values shortened."""
    fields = json.loads(codec.encode(obj))
    kind = fields.pop("_t", type(obj).__name__)
    return " ".join([kind, *(f"{k}={_short(v)}" for k, v in fields.items())])


def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, dict) and "_t" in value:
        return f"{value['_t']}(...)"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _migration_sql(version: int) -> list[str]:
    """Statements taking the schema from `version` to SCHEMA_VERSION."""
    sql = [s for step in MIGRATIONS[version:] for s in step]
    return [*sql, f"PRAGMA user_version = {SCHEMA_VERSION}"]


def _convert(err: sqlite3.Error, path: Path, doing: str) -> JournalError:
    """A sqlite3 error as one of ours, naming the file."""
    name = getattr(err, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return JournalLocked(
            f"{path}: still busy after {BUSY_TIMEOUT_MS / 1000:g} s while {doing}; "
            f"another process holds the database ({err})"
        )
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return JournalCorrupt(f"{path}: {err} (while {doing}); the file is left untouched")
    return JournalError(f"{path}: {err} (while {doing})")


_ROWS_PER_STATEMENT = 2048
"""Rows in one INSERT; 8 columns each stays under SQLite's 32,766 bound variables."""


@functools.lru_cache(maxsize=64)
def _insert(rows: int) -> str:
    """An INSERT of `rows` entries; in autocommit mode one statement is one transaction."""
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    columns = "seq, at, kind, input, actions, completed, subjects, digest"
    return f"INSERT INTO entries ({columns}) VALUES {values}"  # noqa: S608 - placeholders only


async def _connect(path: Path, readonly: bool) -> aiosqlite.Connection:
    uri = f"{path.as_uri()}?mode={'ro' if readonly else 'rw'}"
    try:
        return await aiosqlite.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as err:
        raise _convert(err, path, "opening") from err


# -- files (blocking; run in a thread) -------------------------------------------------------------


def _must_exist(state_dir: Path) -> None:
    path = state_dir / DB_NAME
    try:
        os.stat(path)
    except FileNotFoundError:
        raise JournalError(f"no journal at {path}") from None
    except OSError as err:
        raise JournalError(f"{path}: {err.strerror}") from err


def _prepare(state_dir: Path) -> int:
    """Lock the directory (creating it if need be) and create journal.db if missing."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise JournalError(f"cannot create state directory {state_dir}: {err.strerror}") from err
    fd = _lock(state_dir)
    try:
        if not (state_dir / DB_NAME).exists():
            _create(state_dir / DB_NAME)
    except BaseException:
        _unlock(fd)
        raise
    return fd


def _lock(state_dir: Path) -> int:
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise JournalError(f"cannot open lock file {path}: {err.strerror}") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = _holder(fd)
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise JournalLocked(
                f"{state_dir} is in use by another setpoint agent (pid {holder}); "
                "only one may run per state directory"
            ) from None
        raise JournalError(f"cannot lock {path}: {err.strerror}") from err
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holder(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _create(path: Path) -> None:
    """Build a new journal under a temporary name, then rename it into place."""
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute("BEGIN")
            for sql in _migration_sql(0):
                db.execute(sql)
            db.execute("COMMIT")
            db.execute("PRAGMA journal_mode = WAL")
        finally:
            db.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except sqlite3.Error as err:
        raise JournalError(f"cannot create {path}: {err}") from err
    except OSError as err:
        raise JournalError(f"cannot create {path}: {err.strerror}") from err
