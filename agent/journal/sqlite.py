"""Journal: One SQLite connection to a journal file, its errors turned into ours.

Every sqlite3 error becomes a JournalError naming the file and what was being done:
JournalLocked when another process kept the database busy past BUSY_TIMEOUT_MS, JournalCorrupt
when SQLite found the file damaged or not a database (which is then left untouched).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import aiosqlite

from agent.errors import JournalCorrupt, JournalError, JournalLocked

BUSY_TIMEOUT_MS = 5000


class Db:
    """The connection (autocommit: transactions are explicit) and the file it is to."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn: aiosqlite.Connection | None = conn
        self.path = path

    @classmethod
    async def connect(cls, path: Path, readonly: bool) -> Db:
        uri = f"{path.as_uri()}?mode={'ro' if readonly else 'rw'}"
        try:
            conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as err:
            raise convert(err, path, "opening") from err
        return cls(conn, path)

    @property
    def conn(self) -> aiosqlite.Connection:
        """The open connection; JournalError once closed."""
        if self._conn is None:
            raise JournalError(f"{self.path}: the journal is closed")
        return self._conn

    async def close(self) -> None:
        """Close the connection; safe twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with self.guard("closing"):
                await conn.close()

    @contextlib.contextmanager
    def guard(self, doing: str) -> Iterator[None]:
        """sqlite3 errors raised inside become ours, saying what was being done."""
        try:
            yield
        except sqlite3.Error as err:
            raise convert(err, self.path, doing) from err

    @contextlib.asynccontextmanager
    async def transaction(self, mode: str, doing: str) -> AsyncIterator[None]:
        """BEGIN `mode` ... COMMIT, rolled back when the body raises (or is cancelled)."""
        with self.guard(doing):
            db = self.conn
            await db.execute(f"BEGIN {mode}")
            try:
                yield
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    async def fetch(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        return list(await self.conn.execute_fetchall(sql, tuple(params)))

    async def scalar(self, sql: str) -> Any:
        """The first column of the first row; None when there is no row."""
        rows = await self.fetch(sql)
        return rows[0][0] if rows else None


def convert(err: sqlite3.Error, path: Path, doing: str) -> JournalError:
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
