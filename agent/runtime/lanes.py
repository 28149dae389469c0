"""Runtime: Effect dispatch: one independent lane per action kind, each with its own retry policy.

A lane runs its actions concurrently up to a bound, retries TransientError under its own
tenacity policy and reports every outcome back as an ActionCompleted input. A lane that is
down or slow never delays another: the pager retrying does not hold up a restart.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from agent.core.actions import RunEffect, TrackedAction
from agent.core.inputs import ActionCompleted, Input
from agent.errors import NotPermitted, PermanentError, TransientError

log = logging.getLogger("setpoint.lanes")

Executor = Callable[[TrackedAction], Awaitable[str]]
"""Performs one action; returns a short detail; raises TransientError or PermanentError."""


@dataclass(frozen=True)
class RetryPolicy:
    """How a lane retries transient failures before reporting the action failed."""

    attempts: int = 5
    initial: float = 0.5
    maximum: float = 30.0
    deadline: float = 300.0


class Lanes:
    """Runs tracked actions on their lanes and feeds the results back."""

    def __init__(
        self,
        submit: Callable[[Input], None],
        clock: Callable[[], float],
        *,
        concurrency: int = 32,
        on_retry: Callable[[str], None] = lambda _lane: None,
    ) -> None:
        self._submit = submit
        self._on_retry = on_retry
        self._clock = clock
        self._executors: dict[str, tuple[Executor, RetryPolicy]] = {}
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._concurrency = concurrency
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._sleeping: set[int] = set()
        """Actions waiting between two attempts: nothing of theirs is running."""
        self.retries = 0

    def register(self, lane: str, executor: Executor, policy: RetryPolicy | None = None) -> None:
        """Serve `lane` (or every `lane:*` when given `lane:`) with `executor`."""
        self._executors[lane] = (executor, policy or RetryPolicy())

    def dispatch(self, action: TrackedAction) -> None:
        """Start an action unless it is already running (restore may re-emit it)."""
        if action.id in self._inflight:
            return
        task = asyncio.create_task(self._run(action), name=f"lane:{action.lane}:{action.id}")
        self._inflight[action.id] = task
        task.add_done_callback(functools.partial(self._forget, action.id))

    def _forget(self, action_id: int, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(action_id, None)
        self._sleeping.discard(action_id)

    @property
    def busy(self) -> int:
        """Actions currently running or waiting to retry."""
        return len(self._inflight)

    @property
    def running(self) -> int:
        """Actions with an attempt under way (a shutdown waits for these, not for retries)."""
        return len(self._inflight.keys() - self._sleeping)

    async def drain(self, timeout: float) -> bool:
        """Wait for in-flight actions up to `timeout`; True when none is left."""
        tasks = list(self._inflight.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        return not self._inflight

    async def cancel(self) -> None:
        """Abandon what is still running; those actions stay pending in the journal."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _lookup(self, lane: str) -> tuple[Executor, RetryPolicy] | None:
        found = self._executors.get(lane)
        if found is None and ":" in lane:
            found = self._executors.get(lane.split(":", 1)[0] + ":")
        return found

    async def _run(self, action: TrackedAction) -> None:
        found = self._lookup(action.lane)
        if found is None:
            self._report(action, False, f"no executor for lane {action.lane!r}", permanent=True)
            return
        executor, policy = found
        limit = self._limits.setdefault(action.lane, asyncio.Semaphore(self._concurrency))
        async with limit:
            try:
                detail = await self._attempts(executor, policy, action)
            except NotPermitted as err:
                self._report(action, False, str(err), permanent=True, denied=True)
            except PermanentError as err:
                self._report(action, False, str(err), permanent=True)
            except TransientError as err:
                self._report(action, False, f"gave up after retries: {err}", permanent=False)
            except Exception as err:  # a bug in an executor: report it, never die silently
                log.exception("action %d on lane %s crashed", action.id, action.lane)
                self._report(action, False, f"internal error: {err!r}", permanent=True)
            else:
                self._report(action, True, detail, permanent=False)

    async def _attempts(
        self, executor: Executor, policy: RetryPolicy, action: TrackedAction
    ) -> str:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.deadline),
            wait=wait_exponential_jitter(
                multiplier=policy.initial, max=policy.maximum, jitter=policy.initial
            ),
            before_sleep=lambda rs: self._note_retry(action, rs.outcome and rs.outcome.exception()),
            reraise=True,
        )
        async for attempt in retrying:
            self._sleeping.discard(action.id)
            with attempt:
                return await executor(action)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def _note_retry(self, action: TrackedAction, outcome: object) -> None:
        self._sleeping.add(action.id)
        self.retries += 1
        self._on_retry(action.lane.split(":", 1)[0])
        log.warning("action %d on lane %s will retry: %s", action.id, action.lane, outcome)

    def _report(
        self, action: TrackedAction, ok: bool, detail: str, *, permanent: bool, denied: bool = False
    ) -> None:
        fence = action.fence if isinstance(action, RunEffect) else 0
        self._submit(
            ActionCompleted(action.id, ok, self._clock(), detail, permanent, denied, fence)
        )
