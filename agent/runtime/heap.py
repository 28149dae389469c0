"""Runtime: hand freed heap back to the system after bursts of work (glibc's malloc_trim).

A burst (start-up with 10,000 units: deep reads, signals, start jobs) allocates and frees tens
of MB; glibc keeps most freed pages mapped, so the agent's resident memory stays at the
burst's peak long after it is over. systemd itself trims the same way when the kernel reports
memory pressure (sd_event_trim_memory). Here the check is periodic and cheap: glibc's own
count of free bytes (mallinfo2), and a trim only when enough is free to matter. Without
glibc (musl) it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
from collections.abc import Callable

log = logging.getLogger("setpoint.runtime")

EVERY = 60.0
"""Seconds between checks."""
WORTH = 4 * 2**20
"""Free heap bytes that make a trim worth it."""
PAGE = os.sysconf("SC_PAGE_SIZE")


_FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS.split()]


class Heap:
    """glibc's free-heap count and trim; `None` from `glibc()` where they are missing."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._info: Callable[[], _MallInfo2] = libc.mallinfo2
        self._info.restype = _MallInfo2
        self._trim: Callable[[int], int] = libc.malloc_trim

    @classmethod
    def glibc(cls) -> Heap | None:
        """From the C library the process already runs on (no search for it: that spawns
        ldconfig)."""
        try:
            return cls(ctypes.CDLL(None))
        except (OSError, AttributeError):  # not glibc, or older than 2.33 (no mallinfo2)
            return None

    def free(self) -> int:
        """Bytes glibc holds free in its arenas."""
        return int(self._info().fordblks)

    def trim(self, worth: int = WORTH) -> int:
        """Trim when at least `worth` bytes are free; the resident bytes it gave back.

        glibc still counts trimmed pages as free, so once a burst has left that much free,
        every check trims again: 0.4-3 ms with 36 MB free in 4 KB pieces, once a minute.
        """
        if self.free() < worth:
            return 0
        before = resident()
        self._trim(0)
        return max(0, before - resident())


def resident() -> int:
    """This process's resident memory in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


async def keep_trimmed(heap: Heap, every: float = EVERY) -> None:
    """Check every `every` seconds, for as long as the agent runs (in a thread: a trim takes
    milliseconds)."""
    while True:
        await asyncio.sleep(every)
        if released := await asyncio.to_thread(heap.trim):
            log.debug("heap: returned %.1f MB of freed memory to the system", released / 2**20)
