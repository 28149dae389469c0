"""Journal: The state directory: where the journal lives, and the lock of its one writer.

    state_dir/journal.db   the journal (DB_NAME); created by `prepare` when missing
    state_dir/lock         flock held by the one writer for its whole life; holds its pid

Blocking file-system calls: run them in a thread.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from agent.errors import JournalError, JournalLocked
from agent.journal import schema

DB_NAME = "journal.db"
LOCK_NAME = "lock"


def must_exist(state_dir: Path) -> None:
    """For readers: JournalError unless `state_dir` holds a journal."""
    path = state_dir / DB_NAME
    try:
        os.stat(path)
    except FileNotFoundError:
        raise JournalError(f"no journal at {path}") from None
    except OSError as err:
        raise JournalError(f"{path}: {err.strerror}") from err


def prepare(state_dir: Path) -> int:
    """For the writer: lock the directory (creating it if need be) and create the journal if
    missing; returns the lock's file descriptor (release it with `unlock`)."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise JournalError(f"cannot create state directory {state_dir}: {err.strerror}") from err
    fd = lock(state_dir)
    try:
        if not (state_dir / DB_NAME).exists():
            schema.create(state_dir / DB_NAME)
    except BaseException:
        unlock(fd)
        raise
    return fd


def lock(state_dir: Path) -> int:
    """Take the directory's lock without waiting and write our pid into it; JournalLocked
    naming the holder's pid when another process has it."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise JournalError(f"cannot open lock file {path}: {err.strerror}") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        pid = holder(fd)
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise JournalLocked(
                f"{state_dir} is in use by another setpoint agent (pid {pid}); "
                "only one may run per state directory"
            ) from None
        raise JournalError(f"cannot lock {path}: {err.strerror}") from err
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def holder(fd: int) -> str:
    """The pid written in an open lock file, or "unknown"."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"


def unlock(fd: int | None) -> None:
    """Release the lock (closing its descriptor); None is a no-op."""
    if fd is not None:
        os.close(fd)
