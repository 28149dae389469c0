"""Journal: The database schema: its migrations, the checks made on opening a file, the entry
INSERT, and the atomic creation of a new journal.

    entries    one row per journaled input: seq, at, kind, input, actions, completed (tracked
               ids), subjects (names it is about, for `history`), digest (of the state after
               it, on the last entry of each batch)
    snapshots  seq, taken, digest, state: the whole state after entry seq
    logic      first_seq, version: where each version of the decision logic begins

A new journal is built under a temporary name and renamed into place, so an existing journal
file is always one this code finished creating; anything else there (garbage, a truncated file,
another program's database) is reported and never touched.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
from pathlib import Path
from typing import Literal

from agent.errors import JournalCorrupt, JournalError
from agent.journal import sqlite
from agent.journal.sqlite import Db

log = logging.getLogger("setpoint.journal")

APPLICATION_ID = 0x53455450  # "SETP"
WAL_SIZE_LIMIT = 64 * 1024 * 1024
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

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

ROWS_PER_STATEMENT = 32
"""Rows in one INSERT; a bigger batch goes through executemany in one transaction. Each row
count is a statement of its own in the connection's statement cache (128 kept), and a prepared
INSERT of n rows holds about 0.7 KB x n of SQLite's memory: with counts up to 2,048 the cache
grew for as long as new batch sizes turned up (the soak's slow RSS growth; 200 MB at worst).
Statements of 1 to 32 rows take 0.4 MB, and a storm's batches (about 11 observations) fit."""


def migration_sql(version: int) -> list[str]:
    """Statements taking the schema from `version` to SCHEMA_VERSION."""
    sql = [s for step in MIGRATIONS[version:] for s in step]
    return [*sql, f"PRAGMA user_version = {SCHEMA_VERSION}"]


@functools.lru_cache(maxsize=64)
def insert(rows: int, verb: Literal["INSERT", "REPLACE"] = "INSERT") -> str:
    """An INSERT (or REPLACE) of `rows` entries; in autocommit mode one statement is one
    transaction."""
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    columns = "seq, at, kind, input, actions, completed, subjects, digest"
    return f"{verb} INTO entries ({columns}) VALUES {values}"  # placeholders only


# -- opening an existing file ---------------------------------------------------------------------


async def attach(db: Db, synchronous: str, *, readonly: bool) -> None:
    """Make sure the file is a journal this code can read; for the writer also check its
    integrity, set WAL mode and `synchronous`, and migrate an older schema. Call inside
    `db.guard`."""
    conn = db.conn
    await conn.execute(f"PRAGMA busy_timeout = {sqlite.BUSY_TIMEOUT_MS}")
    app_id = await db.scalar("PRAGMA application_id")
    version = await db.scalar("PRAGMA user_version")
    check_identity(db.path, app_id, version, readonly=readonly)
    if readonly:
        return
    await quick_check(db)
    await conn.execute("PRAGMA journal_mode = WAL")
    await conn.execute(f"PRAGMA synchronous = {synchronous}")
    await conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    if version < SCHEMA_VERSION:
        await migrate(db, version)


def check_identity(path: Path, app_id: int, version: int, *, readonly: bool) -> None:
    """Refuse a file that is not a setpoint journal, or of a schema this code cannot read."""
    if app_id != APPLICATION_ID:
        raise JournalCorrupt(
            f"{path} is a SQLite database but not a setpoint journal "
            f"(application_id {app_id:#x}); left untouched"
        )
    if version > SCHEMA_VERSION:
        raise JournalCorrupt(
            f"{path.name} has schema version {version}; "
            f"this setpoint knows up to {SCHEMA_VERSION} ({path})"
        )
    if version < SCHEMA_VERSION and readonly:
        raise JournalError(
            f"{path} has schema version {version}, older than {SCHEMA_VERSION}; "
            "start the agent once to migrate it"
        )


async def quick_check(db: Db) -> None:
    rows = [r[0] for r in await db.fetch("PRAGMA quick_check")]
    if rows != ["ok"]:
        raise JournalCorrupt(
            f"{db.path} fails its integrity check: {'; '.join(rows[:5])}; left untouched"
        )


async def logic_begins(db: Db, logic: int, next_seq: int, *, readonly: bool) -> int:
    """The first entry decision logic `logic` wrote or will write (see agent.core.LOGIC); a
    writer meeting a new version records that it begins at `next_seq`."""
    rows = await db.fetch("SELECT first_seq, version FROM logic ORDER BY first_seq DESC")
    first, version = rows[0] if rows else (1, 1)
    if version == logic:
        return int(first)
    if not readonly:
        await db.conn.execute("INSERT OR REPLACE INTO logic VALUES (?, ?)", (next_seq, logic))
        log.info("%s: decision logic %d from entry %d on", db.path, logic, next_seq)
    return next_seq


async def migrate(db: Db, version: int) -> None:
    async with db.transaction("IMMEDIATE", f"migrating from schema {version}"):
        for sql in migration_sql(version):
            await db.conn.execute(sql)
    log.info("%s: schema migrated from version %d to %d", db.path, version, SCHEMA_VERSION)


# -- a new file (blocking; run in a thread) --------------------------------------------------------


def create(path: Path) -> None:
    """Build a new journal under a temporary name, then rename it into place (durably)."""
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute("BEGIN")
            for sql in migration_sql(0):
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
