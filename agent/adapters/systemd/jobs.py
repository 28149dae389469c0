"""Adapters / systemd: waiting for job results (JobRemoved), which may arrive first.

JobRemoved can be read before our coroutine resumes with the StartUnit reply, so results of
jobs nobody waits for yet are kept (a bounded buffer, by job path) and looked up first.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

BUFFER = 512


class JobWaiters:
    """Job paths to the futures waiting for their result, and results nobody waits for yet."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._early: OrderedDict[str, str] = OrderedDict()

    async def result(self, job: str) -> str:
        """Wait for the result of `job`, which may already have been read."""
        if (done := self._early.pop(job, None)) is not None:
            return done
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[job] = fut
        try:
            return await fut
        finally:
            self._waiting.pop(job, None)

    def removed(self, job: str, result: str) -> None:
        """JobRemoved: hand the result to its waiter, or keep it for one still to come."""
        fut = self._waiting.pop(job, None)
        if fut is not None:
            if not fut.done():
                fut.set_result(result)
            return
        self._early[job] = result
        while len(self._early) > BUFFER:
            self._early.popitem(last=False)

    def fail_all(self, err: Exception) -> None:
        """The connection is gone: every waiter fails (their jobs may still run)."""
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(err)
        self._early.clear()
