"""Runtime: The runtime: a dumb loop. Take inputs in order, step, commit, then dispatch.

Inputs that arrive together are stepped as one batch and committed in one transaction
(group commit: one fsync per batch). Under a storm of observations that start nothing (probe
results, unit states, ticks), batches are held up to `commit_delay` after the previous commit
and go in together (see `Held`). No effect starts before the batch that created it is
durable, except unit jobs, which start while it commits (see `_dispatch_ahead`). On start,
`restore(state)` re-emits every pending tracked action. When the journal cannot write, the
loop goes on in degraded mode (degraded.py) instead of stopping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.core.actions import Action, Log, Resync, TrackedAction, UnitJob, is_tracked
from agent.core.draft import unchanged
from agent.core.inputs import ActionCompleted, Input, ProbeResult, Tick, UnitObserved, input_time
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
COMMIT_DELAY = 0.05
"""Seconds a batch of observations that starts nothing may wait after the previous commit, to
share the next one. Only such batches wait, and only under load: what it risks is at most
this much of observations, which the agent makes again after a crash (and their log lines
come that much later). A commit costs about 0.6 ms of CPU whatever it holds (the state digest,
SQLite's fsync, the thread hop); at 500 health changes/s, 50 ms instead of 20 ms took a
journaled change from 130 to 95 µs (flapping_bench)."""
OBSERVATIONS = (ProbeResult, UnitObserved, Tick)
LET_OUT_TURNS = 2
"""Turns of the event loop a unit job dispatched ahead takes to write its D-Bus call: its lane's
task reaches the call, whose own task writes it (adapters.systemd.bus._bus_call)."""


async def _let_out() -> None:
    """Give the jobs just dispatched the turns they need to reach systemd before the batch's
    encoding holds the loop (its state digest: 4-6 ms at 10,000 services)."""
    for _ in range(LET_OUT_TURNS):
        await asyncio.sleep(0)


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
class Held:
    """Batches stepped and not yet committed: what one commit will store and then act on."""

    before: State
    state: State
    urgent: bool = False
    """Something in them is not an observation, or starts an effect: commit at once."""
    due: float | None = None
    """When they must be committed at the latest (the event loop's clock)."""
    inputs: int = 0
    stepping: float = 0.0
    entries: list[Entry] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)


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
        commit_delay: float = COMMIT_DELAY,
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
        self._commit_delay = commit_delay
        self._held: Held | None = None
        self._committed_at = -commit_delay
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
            stopping = bool(batch) and batch[-1] is None
            self._step([i for i in batch if i is not None])
            if stopping or not self._may_wait():
                await self._flush()
            if stopping:
                return

    async def _next_batch(self) -> list[Input | None]:
        """What is queued now, up to the batch limit, ending early at a stop marker; [] when
        held batches fall due first. Only the newest Tick of a batch is kept: the batch is
        stepped at once, and ticks that backed up behind a slow commit only say that time
        passed."""
        try:
            async with asyncio.timeout_at(self._held.due if self._held else None):
                batch = [await self.mailbox.get()]
        except TimeoutError:
            return []
        while batch[-1] is not None and len(batch) < self._batch_max and not self.mailbox.empty():
            batch.append(self.mailbox.get_nowait())
        ticks = [i for i, inp in enumerate(batch) if isinstance(inp, Tick)]
        if len(ticks) > 1:
            stale = set(ticks[:-1])
            batch = [inp for i, inp in enumerate(batch) if i not in stale]
        return batch

    async def process(self, batch: Sequence[Input]) -> None:
        """Step a batch, commit it durably (with any held before it), then act on it."""
        self._step(batch)
        await self._flush()

    def _step(self, batch: Sequence[Input]) -> None:
        """Step a batch onto what is held (or the committed state) and hold the result."""
        started = time.perf_counter()
        held = self._holding()
        state = held.state
        for inp in batch:
            new, out = step(state, inp)
            if not out and unchanged(state, new):
                state = new  # at most its busy set moved: nothing to journal
                continue
            held.entries.append(Entry(input_time(inp), inp, out, self._completed(state, inp)))
            held.urgent = (
                held.urgent or not isinstance(inp, OBSERVATIONS) or any(map(is_tracked, out))
            )
            state = new
            held.actions.extend(out)
        held.state, held.inputs = state, held.inputs + len(batch)
        held.stepping += time.perf_counter() - started
        self._held = held

    def _holding(self) -> Held:
        """What is held, or an empty hold on the committed state."""
        return self._held or Held(self.state, self.state)

    def _may_wait(self) -> bool:
        """Whether what is held may wait for more (see COMMIT_DELAY); sets when until."""
        held = self._held
        if held is None or not held.entries or held.urgent or len(held.entries) >= self._batch_max:
            return False
        due = self._committed_at + self._commit_delay
        if due <= asyncio.get_running_loop().time():
            return False  # no commit lately: nothing to share one with
        held.due = due
        return True

    async def _flush(self) -> None:
        """Commit what is held, then act on it."""
        held, self._held = self._holding(), None
        started = time.perf_counter()
        ahead = self._dispatch_ahead(held.actions)
        if ahead:
            await _let_out()
        await self._commit(held.entries, held.state)
        if held.entries:
            self._committed_at = asyncio.get_running_loop().time()
        commit = time.perf_counter() - started
        self._account(held.inputs, len(held.entries), held.stepping, commit)
        self.state = held.state
        actions: Sequence[Action] = held.actions
        if self.gate is not None:
            actions = list(await self.gate(held.before, held.state, actions))
        self._act(actions, ahead)
        if held.entries:
            self._project(held.state)
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
