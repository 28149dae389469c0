"""Runtime: The runtime: a dumb loop. Take inputs in order, step, commit, then dispatch.

Inputs that arrive together are stepped as one batch and committed in one transaction
(group commit: one fsync per batch). No effect starts before the batch that created it is
durable, except unit jobs, which start while it commits (see `_dispatch_ahead`). On start,
`restore(state)` re-emits every pending tracked action. When the journal cannot write, the
loop goes on in degraded mode (degraded.py) instead of stopping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.core.actions import Action, Log, Resync, TrackedAction, UnitJob, is_tracked
from agent.core.draft import unchanged
from agent.core.inputs import ActionCompleted, Input, Tick, input_time
from agent.core.state import State
from agent.core.step import completes, restore, step
from agent.errors import JournalError
from agent.journal.store import Entry, Journal
from agent.runtime.degraded import Gap, done_unrecorded
from agent.runtime.lanes import Lanes

log = logging.getLogger("setpoint.runtime")
RECHECK_MAX = 2.0
"""Seconds between two tries of a journal that cannot write (degraded mode)."""
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


Gate = Callable[[State, State, Sequence[Action]], Awaitable[Sequence[Action]]]
"""(state before the batch, state after it, its actions) -> the actions to dispatch now."""


class Observer(Protocol):
    """What the runtime reports as it goes (the metrics implement it)."""

    def batch(self, inputs: int, journaled: int, stepping: float, commit: float) -> None: ...

    def completed(self, action: TrackedAction, done: ActionCompleted) -> None: ...

    def journal_failed(self) -> None: ...

    def retried(self, lane: str) -> None: ...

    def projection_failed(self, name: str) -> None: ...


@dataclass
class Stats:
    """How inputs were grouped into commits."""

    batches: int = 0
    inputs: int = 0
    journaled: int = 0


class Runtime:
    """Owns the state; everything else talks to it through `submit`."""

    def __init__(
        self,
        journal: Journal,
        state: State,
        *,
        clock: Callable[[], float] = time.time,
        on_resync: Callable[[], None] = lambda: None,
        batch_max: int = 1024,
        metrics: Observer | None = None,
    ) -> None:
        self.journal = journal
        self.state = state
        self.clock = clock
        self.lanes = Lanes(self.submit, clock, on_retry=self._retried)
        self.mailbox: asyncio.Queue[Input | None] = asyncio.Queue()
        self.stats = Stats()
        self._on_resync = on_resync
        self._batch_max = batch_max
        self._changed = asyncio.Condition()
        self.metrics = metrics
        self.tap: Callable[[Input], None] | None = None
        """Sees every input as it is submitted (benchmarks and tests)."""
        self.gate: Gate | None = None
        """Between the journal commit and dispatch: a second durable record (the cluster's
        state in etcd) and the actions it lets through."""
        self.on_commit: list[Callable[[State], None]] = []
        """Called with the committed state after each batch that changed something."""
        self.progress = time.monotonic()
        self.degraded: Gap | None = None
        """Set while the journal cannot write (see degraded.py)."""
        self._watcher: asyncio.Task[None] | None = None

    def submit(self, inp: Input) -> None:
        """Queue an input; callable from any task on the loop."""
        if self.tap is not None:
            self.tap(inp)
        self.mailbox.put_nowait(inp)

    def restore(self) -> int:
        """Re-emit every pending tracked action; returns how many."""
        actions = restore(self.state)
        for action in actions:
            self.lanes.dispatch(action)
        if actions:
            log.info("restored %d pending actions", len(actions))
        return len(actions)

    def stop(self) -> None:
        """Make `run` return once the inputs queued before this call are committed."""
        self.mailbox.put_nowait(None)

    async def run(self) -> None:
        """Process batches until `stop`; never stops half-way through a commit."""
        while True:
            batch = await self._next_batch()
            stopping = batch[-1] is None
            await self.process([i for i in batch if i is not None])
            if stopping:
                return

    async def _next_batch(self) -> list[Input | None]:
        """What is queued now, up to the batch limit, ending early at a stop marker. Only the
        newest Tick of a batch is kept: the batch is stepped at once, and ticks that backed up
        behind a slow commit only say that time passed."""
        batch = [await self.mailbox.get()]
        while batch[-1] is not None and len(batch) < self._batch_max and not self.mailbox.empty():
            batch.append(self.mailbox.get_nowait())
        ticks = [i for i, inp in enumerate(batch) if isinstance(inp, Tick)]
        if len(ticks) > 1:
            stale = set(ticks[:-1])
            batch = [inp for i, inp in enumerate(batch) if i not in stale]
        return batch

    async def process(self, batch: Sequence[Input]) -> None:
        """Step a batch, commit it durably, then act on what it produced."""
        started = time.perf_counter()
        state = self.state
        entries: list[Entry] = []
        actions: list[Action] = []
        for inp in batch:
            new, out = step(state, inp)
            if not out and unchanged(state, new):
                state = new  # at most its busy set moved: nothing to journal
                continue
            entries.append(Entry(input_time(inp), inp, out, self._completed(state, inp)))
            state = new
            actions.extend(out)
        stepped = time.perf_counter()
        ahead = self._dispatch_ahead(actions)
        await self._commit(entries, state)
        self._account(len(batch), len(entries), stepped - started, time.perf_counter() - stepped)
        before, self.state = self.state, state
        if self.gate is not None:
            actions = list(await self.gate(before, state, actions))
        self._act(actions, ahead)
        if entries:
            self._project(state)
        async with self._changed:
            self._changed.notify_all()

    async def _commit(self, entries: list[Entry], state: State) -> None:
        """Commit the batch; when the journal cannot, go on without it (see degraded.py) and
        record the gap once it can write again."""
        gap = self.degraded
        if gap is None:
            try:
                await self.journal.commit(entries, state)
                return
            except JournalError as err:
                gap = self._degrade(str(err))
        gap.inputs += len(entries)
        if gap.writable.is_set():
            await self._close_gap(gap, state)

    def _degrade(self, error: str) -> Gap:
        gap = self.degraded = Gap(self.clock(), error)
        if self.metrics is not None:
            self.metrics.journal_failed()
        log.error("journal cannot write (%s): DEGRADED, supervising without a record; unit "
                  "jobs and alerts go on, other effects wait for the journal", error)  # fmt: skip
        self._watch(gap)
        return gap

    def _watch(self, gap: Gap) -> None:
        self._watcher = asyncio.create_task(self._watch_journal(gap), name="journal-watch")

    async def _watch_journal(self, gap: Gap) -> None:
        """Try a small write now and then; once one goes through, wake the loop to close the
        gap (it closes it with the state of that moment)."""
        delay = 0.25
        while True:
            await asyncio.sleep(delay)
            delay = min(RECHECK_MAX, delay * 2)
            try:
                await self.journal.mark_gap(gap.marker(self.clock()))
            except JournalError as err:
                gap.error = str(err)
                continue
            gap.writable.set()
            self.submit(Tick(self.clock()))
            return

    async def _close_gap(self, gap: Gap, state: State) -> None:
        try:
            await self.journal.close_gap(gap.marker(self.clock()), state)
        except JournalError as err:
            gap.writable.clear()
            gap.error = str(err)
            self._watch(gap)
            return
        self.degraded = None
        log.warning("journal writable again after %.1fs: %d inputs were decided on without a "
                    "record (meanwhile: %s); state snapshotted, effects held are released",
                    self.clock() - gap.began, gap.inputs, gap.summary())  # fmt: skip
        for action in gap.held.values():
            if action.id in state.pending:
                self.lanes.dispatch(action)

    async def checkpoint(self) -> None:
        """Snapshot the state (a clean stop); while degraded, try to close the gap instead."""
        gap = self.degraded
        try:
            if gap is None:
                await self.journal.snapshot(self.state)
            else:
                await self.journal.close_gap(gap.marker(self.clock()), self.state)
        except JournalError as err:
            log.error("no snapshot at stop: %s; the next start goes on from the last record and "
                      "observes afresh", err)  # fmt: skip

    def _project(self, state: State) -> None:
        """Feed the committed state to the projections (MQTT state, ...), after dispatch: a
        projection that fails is logged and counted, never in the way of reconciliation."""
        for hook in self.on_commit:
            try:
                hook(state)
            except Exception:  # containment: a projection is never worth a stopped agent
                name = getattr(hook, "__qualname__", repr(hook))
                log.exception("projection %s failed; reconciliation goes on", name)
                if self.metrics is not None:
                    self.metrics.projection_failed(name)

    def _retried(self, lane: str) -> None:
        if self.metrics is not None:
            self.metrics.retried(lane)

    def _completed(self, state: State, inp: Input) -> tuple[int, ...]:
        """The id `inp` completes (core.step.completes), counted in the metrics."""
        done = completes(state, inp)
        if done and self.metrics is not None and isinstance(inp, ActionCompleted):
            self.metrics.completed(state.pending[inp.action_id], inp)
        return done

    def _account(self, inputs: int, journaled: int, stepping: float, commit: float) -> None:
        self.progress = time.monotonic()
        if self.metrics is not None:
            self.metrics.batch(inputs, journaled, stepping, commit)
        self.stats.batches += 1
        self.stats.inputs += inputs
        self.stats.journaled += journaled

    def _dispatch_ahead(self, actions: Sequence[Action]) -> frozenset[int]:
        """Start the batch's unit jobs while it commits: they need no write-ahead (idempotent,
        and re-derived from what systemd reports after a crash), and the fsync is most of the
        agent's reaction time. Every other effect waits for the commit."""
        if self.degraded is not None:
            return frozenset()
        jobs = [a for a in actions if isinstance(a, UnitJob)]
        for job in jobs:
            self.lanes.dispatch(job)
        return frozenset(job.id for job in jobs)

    def _act(self, actions: Sequence[Action], ahead: frozenset[int] = frozenset()) -> None:
        for action in actions:
            if is_tracked(action):
                self._dispatch(action, ahead)
            elif isinstance(action, Log):
                level = _LEVELS.get(action.level, logging.ERROR)
                log.log(
                    level, "%s%s", f"[{action.subject}] " if action.subject else "", action.message
                )
            elif isinstance(action, Resync):
                self._on_resync()

    def _dispatch(self, action: TrackedAction, ahead: frozenset[int]) -> None:
        """Start `action` (unless it started `ahead`, while its batch committed); while the
        journal cannot write, only what is safe without a record, and count it."""
        if (gap := self.degraded) is not None:
            kind = done_unrecorded(action)
            if kind is None:
                gap.held[action.id] = action
                return
            gap.done[kind] += 1
        if action.id not in ahead:
            self.lanes.dispatch(action)

    def alive(self, stuck_after: float = 30.0) -> bool:
        """False when inputs wait while no batch was committed for `stuck_after` seconds."""
        return self.mailbox.empty() or time.monotonic() - self.progress < stuck_after

    async def wait_for(self, predicate: Callable[[State], bool], timeout: float) -> State:
        """Wait until the committed state satisfies `predicate` (tests and shutdown use it)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self.state))
        return self.state

    async def settle(self, timeout: float) -> bool:
        """Let in-flight effects finish (up to `timeout`) and commit their results."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not self.mailbox.empty():
                await self.process([i for i in await self._next_batch() if i is not None])
                continue
            left = deadline - loop.time()
            if not self.lanes.running or left <= 0:
                break
            try:  # short waits: an effect that starts waiting to retry submits nothing
                first = await asyncio.wait_for(self.mailbox.get(), min(left, 0.2))
            except TimeoutError:
                continue
            await self.process([first] if first is not None else [])
        return not self.lanes.running
