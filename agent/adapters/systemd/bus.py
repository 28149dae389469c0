"""Adapters / systemd: observe units over D-Bus and run start/stop/restart jobs (dbus-fast).

Signals make reactions immediate; resyncs repair whatever a lost signal or a reconnect missed
(level-triggered). Every observation is a complete `UnitObserved`: signals may carry only some
properties, so a small per-unit cache fills the rest, and nothing is emitted when nothing
relevant changed.

Resyncs come in two depths, so that a host with 10,000 watched units idles cheaply:
- A deep resync reads every watched unit in full: its ListUnitsByNames row and its Service
  properties (GetAll, about 0.7 ms of CPU per unit here: 250 properties to unmarshal). It runs
  on every (re)connect and resubscribe, after a daemon-reload, after a failed resync, and when
  asked (`resync()`).
- The periodic resync (every `resync_interval`) is light: one ListUnitsByNames for all watched
  units (about 3 us per unit), and a full read only of units whose row (LoadState,
  ActiveState, SubState) differs from the cache, so a lost signal that changed a unit's state
  is repaired at the next one. A lost signal can also hide a unit that went round and came back
  to the same state (a crash and systemd's own restart: a new MainPID, NRestarts + 1); for
  those, each periodic resync also reads StateChangeTimestampMonotonic (one small Get) of a
  rotating slice of the units and reads in full those whose timestamp moved, so every unit is
  checked within `_VERIFY_ROUNDS` periodic resyncs.

Signals arrive through an explicit AddMatch rule (sender org.freedesktop.systemd1) and a raw
bus message handler; systemd only sends them to clients that called Manager.Subscribe. A proxy
object's on_properties_changed was seen to stay silent, hence the raw handler.

Ordering matters in two places:
- JobRemoved can be read before our coroutine resumes with the StartUnit reply, so results of
  jobs nobody waits for yet are buffered by job path and looked up before waiting.
- A resync reply can be older than a signal handled while we waited for it: a field a signal
  set after the resync request was sent keeps the signal's value.
systemd's unit PropertiesChanged carries ActiveState and SubState but not LoadState, so the
load state comes from resyncs only (after every daemon-reload, and on UnitNew).

dbus-fast errors are converted here into `agent.errors`; nothing from dbus_fast leaks out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import Any

from dbus_fast import BusType, DBusFastError, Message, MessageType
from dbus_fast.aio import MessageBus

from agent.adapters.systemd.cache import SERVICE_PROPS, Seen, UnitCache
from agent.adapters.systemd.jobs import JobWaiters
from agent.adapters.systemd.protocol import (
    ALREADY_SUBSCRIBED,
    DBUS,
    MANAGER,
    MANAGER_PATH,
    MATCH_RULES,
    METHODS,
    PROPERTIES,
    SERVICE,
    SHUTDOWN_TARGETS,
    SYSTEMD,
    UNIT,
    BusKind,
    JobOp,
    ReplyError,
    convert,
    job_outcome,
    unit_path,
)
from agent.core.inputs import Input, ManagerStarted, UnitObserved
from agent.errors import PermanentError, TransientError

log = logging.getLogger("setpoint.systemd")

_BACKOFF_MIN = 0.1
_COALESCE = 0.02
_VERIFY_ROUNDS = 10
"""The periodic resync checks the state-change timestamp of 1/_VERIFY_ROUNDS of the units."""
_CHUNK = 256
"""Units read in full at once (bounds the tasks and replies held at a time)."""
_LIST_CHUNK = 1000
"""Units per ListUnitsByNames call. dbus-fast keeps the last message it read until the next
one arrives: a reply for 10,000 units stayed in memory (about 4 MB) while the agent idled."""


class _Bus(MessageBus):
    """dbus-fast's MessageBus, minus "Future exception was never retrieved" on a dropped bus.

    BaseMessageBus._call drops the future that send() returns; when a write hits a closed
    socket (EPIPE), that future's exception was never retrieved and asyncio logged it at
    garbage collection. The same error reaches the call's reply handler, so nothing is lost.
    """

    def send(self, msg: Message) -> asyncio.Future[None]:  # type: ignore[override]
        fut: asyncio.Future[None] = super().send(msg)
        fut.add_done_callback(_consume_exception)
        return fut


def _consume_exception(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


async def _bus_call(bus: MessageBus, msg: Message) -> Message | None:
    """`bus.call(msg)`, safe to cancel.

    When the connection drops, dbus-fast fails the call's future and resolves
    wait_for_disconnect in the same step; a caller cancelled right then (the resync loop when
    the connection ends) never retrieved that exception, and asyncio logged it. Run in a task
    of its own, the call always finishes (reply or disconnect) and shield() retrieves it.
    """
    return await asyncio.shield(asyncio.ensure_future(bus.call(msg)))


_MAX_CALLS = 64
"""Method calls in flight at once. dbus-fast fails the whole connection when the socket's send
buffer fills (BlockingIOError in its writer), which a burst of 1,000 GetAll calls does."""
_MAX_JOB_CALLS = 16
"""Job calls (StartUnit...) in flight at once, besides _MAX_CALLS: a job never queues behind
a resync's thousands of reads."""


class SystemdAdapter:
    """Watches a set of units and runs jobs on one systemd manager over D-Bus.

    `run()` is the long-running task (connect, subscribe, resync, serve, reconnect with
    backoff); `run_job()` may be called concurrently from the effect lanes.

    Longer than most classes here on purpose: it is one connection's lifecycle, and its parts
    share that connection's state (the bus, the manager's owner, pending resync requests).
    Everything that can be pure is elsewhere: the unit cache (cache.py, with a seeded
    simulation), job waiters (jobs.py), names and error meanings (protocol.py).
    """

    def __init__(
        self,
        on_input: Callable[[Input], None],
        *,
        bus: BusKind = "system",
        bus_address: str | None = None,
        clock: Callable[[], float] = time.time,
        resync_interval: float = 60.0,
        call_timeout: float = 25.0,
        backoff_max: float = 5.0,
    ) -> None:
        self._on_input = on_input
        self._kind: BusKind = bus
        self._address = bus_address
        self._clock = clock
        self._interval = resync_interval
        self._call_timeout = call_timeout
        self._backoff_max = backoff_max
        self._cache = UnitCache()
        self._bus: MessageBus | None = None
        self._owner: str | None = None
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._want_full = False
        self._want_deep = False
        self._want_subscribe = False
        self._dirty: dict[str, bool] = {}
        """Units a signal pointed at: True to read in full, False to compare the row first."""
        self._verify_at = 0
        """Where the periodic resync's timestamp check goes on (an index into the sorted
        watched names)."""
        self._calls = asyncio.Semaphore(_MAX_CALLS)
        self._job_calls = asyncio.Semaphore(_MAX_JOB_CALLS)
        self._jobs = JobWaiters()
        self._closed = False
        self._stopping = asyncio.Event()
        self.generation = 0
        """Counts connections and manager restarts (daemon-reexec) seen so far."""
        self._started = 0.0
        self._shutdown = ""
        """Why the manager is shutting down (a queued shutdown.target job...), or empty."""

    # -- public API ------------------------------------------------------------------------

    @property
    def watched(self) -> frozenset[str]:
        """The unit names being watched."""
        return self._cache.watched

    @property
    def connected(self) -> bool:
        """True while subscribed on a live connection, with the manager on the bus."""
        return self._ready.is_set() and self._owner is not None

    def watch(self, units: Iterable[str]) -> None:
        """Replace the set of watched units; new ones are fetched soon, dropped ones forgotten."""
        if self._cache.watch(units, unit_path):
            self._request(full=True)  # units new to the cache are read in full

    async def wait_ready(self) -> None:
        """Wait until connected, subscribed and resynced at least once on this connection."""
        await self._ready.wait()

    async def resync(self) -> None:
        """Fetch every watched unit and emit a UnitObserved for each, changed or not.

        Never raises on bus trouble: while disconnected, or when the fetch fails, the resync is
        left to the next (re)connect or retried by the background loop.
        """
        if self._bus is None or not self._ready.is_set():
            self._request(deep=True)
            return
        try:
            await self._resync(self._bus, force=True, deep=True)
        except (TransientError, ReplyError) as err:
            log.warning("systemd resync failed, will retry: %s", err)
            self._request(deep=True)

    async def run_job(
        self, unit: str, op: JobOp, timeout: float, *, unit_failure_ok: bool = False
    ) -> str:
        """Start/stop/restart `unit` (mode "replace") and wait for the job; its result. "kill"
        sends SIGKILL to the unit's main process (KillUnit, no job): "killed".

        Raises TransientError (bus trouble, timeout, job failed/canceled/dependency) or
        PermanentError (no such unit, masked, access denied, invalid arguments). With
        `unit_failure_ok`, a start the unit failed returns "failed" (see job_outcome).
        """
        what = f"{op} {unit}"
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
                if self._bus is None:
                    raise TransientError(f"{what}: not connected")
                if self._shutdown and op != "stop":
                    raise PermanentError(f"{what}: the system is shutting down")
                if op == "kill":
                    await self._call(
                        self._bus, MANAGER_PATH, MANAGER, "KillUnit", "ssi", [unit, "main", 9],
                        slots=self._job_calls,
                    )  # fmt: skip
                    return "killed"
                reply = await self._call(
                    self._bus, MANAGER_PATH, MANAGER, METHODS[op], "ss", [unit, "replace"],
                    slots=self._job_calls,
                )  # fmt: skip
                job: str = reply.body[0]
                result = await self._jobs.result(job)
        except TimeoutError as err:
            raise TransientError(f"{what}: no result within {timeout:g}s") from err
        except ReplyError as err:
            raise convert(err, what) from err
        return job_outcome(unit, op, result, unit_failure_ok)

    async def last_process(self, unit: str) -> tuple[str, int]:
        """The service's current invocation id (hex) and the PID of that invocation's main
        process, running or ended (ExecMainPID); ("", 0) when unknown: not connected, no such
        unit, or a new invocation began while they were read."""
        bus = self._bus
        if bus is None or not self._ready.is_set():
            return "", 0
        path = unit_path(unit)

        async def get(interface: str, name: str) -> Any:
            reply = await self._call(bus, path, PROPERTIES, "Get", "ss", [interface, name])
            return reply.body[0].value

        async def current() -> str:
            return bytes(await get(UNIT, "InvocationID")).hex()

        try:
            invocation = await current()
            pid = int(await get(SERVICE, "ExecMainPID"))
            same = await current() == invocation
        except (TransientError, ReplyError, TypeError, ValueError) as err:
            log.debug("systemd: no main process for %s: %s", unit, err)
            return "", 0
        return (invocation, pid) if same and pid > 0 else ("", 0)

    async def run(self) -> None:
        """Connect, serve until the connection drops, reconnect with backoff; until close()."""
        delay = _BACKOFF_MIN
        try:
            while not self._closed:
                try:
                    bus = await self._connect()
                except TransientError as err:
                    log.warning("systemd: cannot connect (%s); retrying in %.1fs", err, delay)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._stopping.wait()
                    delay = min(delay * 2, self._backoff_max)
                    continue
                delay = _BACKOFF_MIN
                if self._closed:  # close() came while connecting
                    bus.disconnect()
                    break
                await self._serve(bus)
        finally:
            if self._bus is not None:  # cancelled rather than closed
                self._bus.disconnect()
            self._drop_connection(TransientError("systemd adapter stopped"))

    async def close(self) -> None:
        """Disconnect; `run()` returns and pending jobs fail with TransientError."""
        self._closed = True
        self._stopping.set()
        if self._bus is not None:
            self._bus.disconnect()
        self._drop_connection(TransientError("systemd adapter closed"))

    # -- connection ------------------------------------------------------------------------

    def _bus_address(self) -> str | None:
        """The address to dial, or None for the default system bus."""
        if self._address:
            return self._address
        if self._kind == "system":
            return None
        if addr := os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            return addr
        if runtime_dir := os.environ.get("XDG_RUNTIME_DIR"):
            return f"unix:path={runtime_dir}/bus"
        raise PermanentError("user bus: neither DBUS_SESSION_BUS_ADDRESS nor XDG_RUNTIME_DIR set")

    async def _connect(self) -> MessageBus:
        """Open a connection, subscribe and resync; TransientError on failure."""
        address = self._bus_address()
        bus = _Bus(bus_address=address, bus_type=BusType.SYSTEM)
        try:
            async with asyncio.timeout(self._call_timeout):
                await bus.connect()
        except (OSError, EOFError, TimeoutError, DBusFastError) as err:
            raise TransientError(f"{address or 'system bus'}: {err!r}") from err
        bus.add_message_handler(self._on_message)
        self._bus = bus
        try:
            await self._setup(bus)
        except (TransientError, ReplyError) as err:
            bus.disconnect()
            self._drop_connection(TransientError(str(err)))
            raise TransientError(f"setting up the systemd connection: {err}") from err
        return bus

    async def _setup(self, bus: MessageBus) -> None:
        """Match rules, the manager's owner, Subscribe, then a first resync."""
        for rule in MATCH_RULES:
            await self._call(bus, "/org/freedesktop/DBus", DBUS, "AddMatch", "s", [rule], DBUS)
        reply = await self._call(
            bus, "/org/freedesktop/DBus", DBUS, "GetNameOwner", "s", [SYSTEMD], DBUS
        )
        self._owner = reply.body[0]
        await self._manager_started(bus)
        await self._subscribe(bus)
        self._want_subscribe = False
        self._dirty.clear()
        self._want_full = self._want_deep = False
        await self._resync(bus, force=False, deep=True)
        self.generation += 1
        self._ready.set()
        log.info("systemd: connected to %s (manager %s)", self._kind, self._owner)

    async def _manager_started(self, bus: MessageBus) -> None:
        """Tell the core when the manager started (a reboot starts a new one: observations
        from before that say nothing about the units now) and whether it is stopping."""
        try:
            reply = await self._call(
                bus, MANAGER_PATH, PROPERTIES, "Get", "ss", [MANAGER, "UserspaceTimestamp"]
            )
        except ReplyError as err:
            log.debug("systemd: no UserspaceTimestamp: %s", err)
            return
        self._started = int(reply.body[0].value) / 1e6
        try:
            reply = await self._call(
                bus, MANAGER_PATH, PROPERTIES, "Get", "ss", [MANAGER, "SystemState"]
            )
        except ReplyError as err:
            log.debug("systemd: no SystemState: %s", err)
        else:
            state = reply.body[0].value
            self._shutdown = "the manager is stopping" if state == "stopping" else ""
        self._tell_manager()

    def _tell_manager(self) -> None:
        if self._started:
            self._on_input(ManagerStarted(self._started, self._clock(), self._shutdown))

    async def _subscribe(self, bus: MessageBus) -> None:
        """Manager.Subscribe; being subscribed already is fine."""
        try:
            await self._call(bus, MANAGER_PATH, MANAGER, "Subscribe", "", [])
        except ReplyError as err:
            if err.name != ALREADY_SUBSCRIBED:
                raise

    async def _serve(self, bus: MessageBus) -> None:
        """Keep the resync loop running until the connection ends."""
        async with asyncio.TaskGroup() as tg:
            sync = tg.create_task(self._sync_loop(bus), name="systemd-resync")
            await self._wait_disconnect(bus)
            sync.cancel()
        self._drop_connection(TransientError("bus connection lost"))

    async def _wait_disconnect(self, bus: MessageBus) -> None:
        """Return when the connection has ended, for whatever reason."""
        try:
            # shield: cancelling run() must not cancel dbus-fast's own disconnect future
            await asyncio.shield(bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
        # The connection is gone either way; the exception only reports why, and any cause
        # leads to the same reconnect. This is not a retry decision about an effect.
        except Exception as err:
            log.warning("systemd: bus connection lost: %r", err)
        else:
            if not self._closed:
                log.warning("systemd: bus connection closed")

    def _drop_connection(self, err: TransientError) -> None:
        """Forget the connection; fail job waiters (their jobs may still run)."""
        self._bus = None
        self._owner = None
        self._ready.clear()
        self._jobs.fail_all(err)

    # -- calls -----------------------------------------------------------------------------

    async def _call(
        self,
        bus: MessageBus,
        path: str,
        interface: str,
        member: str,
        signature: str,
        body: list[Any],
        destination: str = SYSTEMD,
        *,
        slots: asyncio.Semaphore | None = None,
    ) -> Message:
        """One method call; raises ReplyError for an error reply, TransientError otherwise.
        `slots` bounds the calls in flight (default: the reads' _MAX_CALLS)."""
        msg = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body,
        )
        try:
            async with slots or self._calls, asyncio.timeout(self._call_timeout):
                reply = await _bus_call(bus, msg)
        except TimeoutError as err:
            raise TransientError(f"{member}: no reply within {self._call_timeout:g}s") from err
        except (OSError, EOFError, DBusFastError) as err:
            raise TransientError(f"{member}: {err!r}") from err
        if reply is None:
            raise TransientError(f"{member}: bus connection lost")
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise ReplyError(reply.error_name or "unknown", str(text))
        return reply

    # -- resync ----------------------------------------------------------------------------

    def _request(
        self, *, full: bool = False, deep: bool = False, unit: str | None = None, whole: bool = True
    ) -> None:
        """Ask the background loop for a resync of every watched unit (`full` light, `deep` in
        full) or a refresh of one `unit` (read in full unless `whole` is False)."""
        self._want_full |= full or deep
        self._want_deep |= deep
        if unit is not None:
            self._dirty[unit] = self._dirty.get(unit, False) or whole
        self._wake.set()

    async def _sync_loop(self, bus: MessageBus) -> None:
        """Resync every interval and whenever a signal asks for it."""
        while True:
            await self._sleep_until_wanted()
            subscribe, full, deep = self._want_subscribe, self._want_full, self._want_deep
            dirty = self._dirty
            self._want_subscribe = self._want_full = self._want_deep = False
            self._dirty = {}
            try:
                if subscribe:
                    await self._subscribe(bus)
                    self.generation += 1
                if full or subscribe:
                    whole = {name for name, wanted in dirty.items() if wanted}
                    await self._resync(bus, force=False, deep=deep or subscribe, whole=whole)
                elif dirty:
                    await self._refresh(bus, dirty)
            except (TransientError, ReplyError) as err:
                log.warning("systemd resync failed, retrying: %s", err)
                self._want_subscribe |= subscribe
                self._request(deep=True)
                await asyncio.sleep(min(1.0, self._interval))

    async def _sleep_until_wanted(self) -> None:
        """Wait for a request or the periodic interval; then let a burst of signals settle."""
        if not (self._want_full or self._want_subscribe or self._dirty):
            try:
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            except TimeoutError:
                self._want_full = True  # the periodic resync: light
        self._wake.clear()
        await asyncio.sleep(_COALESCE)

    async def _resync(
        self, bus: MessageBus, *, force: bool, deep: bool, whole: AbstractSet[str] = frozenset()
    ) -> None:
        """Fetch all watched units; emit changed ones (all when `force`). A deep resync reads
        every unit in full; a light one only those whose row changed, those in `whole`, and
        those of this round's slice whose state-change timestamp moved."""
        names = sorted(self._cache.watched)
        if not names:
            return
        verify: AbstractSet[str] = frozenset()
        if deep:
            whole = set(names)
        else:
            size = -(-len(names) // _VERIFY_ROUNDS)
            start = self._verify_at % len(names)
            verify = set(names[start : start + size])
            self._verify_at = start + size
        for at in range(0, len(names), _LIST_CHUNK):
            part = names[at : at + _LIST_CHUNK]
            await self._fetch(bus, part, force=force, whole=whole, verify=verify)

    async def _refresh(self, bus: MessageBus, dirty: dict[str, bool]) -> None:
        """Fetch units a signal pointed at, without loading units that are gone again."""
        loaded = []
        for name in sorted(dirty.keys() & self._cache.watched):
            try:
                await self._call(bus, MANAGER_PATH, MANAGER, "GetUnit", "s", [name])
            except ReplyError:
                continue
            loaded.append(name)
        if loaded:
            await self._fetch(bus, loaded, force=False, whole={n for n in loaded if dirty[n]})

    async def _fetch(
        self,
        bus: MessageBus,
        names: list[str],
        *,
        force: bool,
        whole: AbstractSet[str],
        verify: AbstractSet[str] = frozenset(),
    ) -> None:
        """ListUnitsByNames for `names`, then publish them: units in `whole`, and those whose
        row differs from the cache, are read in full (+ Service properties); units in `verify`
        whose row did not change are read in full when their state-change timestamp moved."""
        began = self._cache.seq
        try:
            rows = await self._list_units(bus, names)
        except ReplyError as err:
            rows, error = [], err.text
        else:
            error = "not a valid unit name"  # ListUnitsByNames silently skips invalid names
        if len(rows) != len(names):
            if len(names) == 1:
                self._unusable(names[0], error, force=force)
                return
            for name in names:  # one bad name spoils the batch: ask one by one
                await self._fetch(
                    bus, [name], force=force, whole=whole & {name}, verify=verify & {name}
                )
            return
        # One row per requested name, in order; a row names the unit's primary name, so an
        # alias is recorded under the name we were asked to watch.
        work: list[tuple[str, list[Any], bool]] = []
        for name, row in zip(names, rows, strict=True):
            _, _, load, active, sub, _, path = row[:7]
            self._cache.located(name, path)
            if name in whole or not self._cache.unchanged(name, load, active, sub):
                work.append((name, row, False))
            elif name in verify:
                work.append((name, row, True))
            elif force:
                self._emit(name, self._cache.publish(name, force=True))
        for at in range(0, len(work), _CHUNK):
            fetched = await asyncio.gather(
                *(
                    self._row_state(bus, name, row, self._cache.seen.get(name), check)
                    for name, row, check in work[at : at + _CHUNK]
                )
            )
            for name, state in fetched:
                if state is not None:
                    self._emit(name, self._cache.fetched(name, state, began, force=force))
                elif force:
                    self._emit(name, self._cache.publish(name, force=True))

    def _unusable(self, name: str, error: str, *, force: bool) -> None:
        """A watched name systemd refuses: log it once and report it as not found."""
        first, seen = self._cache.unusable(name, force=force)
        if first:
            log.error("systemd: cannot watch %s: %s", name, error)
        self._emit(name, seen)

    async def _list_units(self, bus: MessageBus, names: list[str]) -> list[list[Any]]:
        """Rows (name, description, load, active, sub, following, path, ...) for `names`."""
        reply = await self._call(bus, MANAGER_PATH, MANAGER, "ListUnitsByNames", "as", [names])
        rows: list[list[Any]] = reply.body[0]
        return rows

    async def _row_state(
        self, bus: MessageBus, name: str, row: list[Any], prior: Seen | None, check: bool
    ) -> tuple[str, Seen | None]:
        """A complete state for one ListUnitsByNames row; services get their Service props.

        With `check` (the row equals the cache), first the state-change timestamp: None when
        it has not moved either. The timestamp is read when the state is new to us, also when
        it changed (a lost signal, or our first look).
        """
        _, _, load, active, sub, _, path = row[:7]
        # interned: the same few words for every unit, not one copy each
        state = Seen(active=sys.intern(active), sub=sys.intern(sub), load=sys.intern(load))
        if check and prior is not None:
            try:
                reply = await self._call(
                    bus, path, PROPERTIES, "Get", "ss", [UNIT, "StateChangeTimestampMonotonic"]
                )
            except ReplyError:
                return name, None  # gone meanwhile: its signals or the next resync tell
            state.changed = int(reply.body[0].value)
            if state.changed == prior.changed:
                return name, None
        elif prior is not None and (prior.active, prior.sub) == (active, sub):
            state.changed = prior.changed
        elif load not in ("not-found", "masked"):
            with contextlib.suppress(ReplyError):
                reply = await self._call(
                    bus, path, PROPERTIES, "Get", "ss", [UNIT, "StateChangeTimestampMonotonic"]
                )
                state.changed = int(reply.body[0].value)
        if name.endswith(".service") and load not in ("not-found", "masked"):
            try:
                reply = await self._call(bus, path, PROPERTIES, "GetAll", "s", [SERVICE])
            except ReplyError as err:
                log.debug("systemd: no Service properties for %s: %s", name, err)
            else:
                state.merge(_values(reply.body[0]), SERVICE_PROPS, 0)
        return name, state

    # -- signals ---------------------------------------------------------------------------

    def _on_message(self, msg: Message) -> None:
        """Raw bus message handler: dispatch the signals we matched on."""
        if msg.message_type is not MessageType.SIGNAL:
            return
        if msg.interface == DBUS and msg.member == "NameOwnerChanged":
            self._on_owner_changed(msg.body)
            return
        if msg.sender != self._owner:
            return
        if msg.interface == PROPERTIES and msg.member == "PropertiesChanged":
            self._on_properties(msg.path or "", msg.body)
        elif msg.interface == MANAGER:
            self._on_manager_signal(msg.member or "", msg.body)

    def _on_manager_signal(self, member: str, body: list[Any]) -> None:
        """JobNew, JobRemoved, Reloading, UnitNew, UnitRemoved."""
        if member == "JobNew" and body[2] in SHUTDOWN_TARGETS and not self._shutdown:
            log.info("systemd: %s queued: the system is going down; observing only", body[2])
            self._shutdown = f"{body[2]} queued"
            self._tell_manager()
        elif member == "JobRemoved":
            self._jobs.removed(body[1], body[3])
            if body[2] in SHUTDOWN_TARGETS and body[3] == "canceled" and self._shutdown:
                log.info("systemd: %s cancelled: acting on units again", body[2])
                self._shutdown = ""
                self._tell_manager()
        elif member == "Reloading" and not body[0]:
            log.info("systemd: daemon-reload finished; resyncing")
            self._request(deep=True)
        elif member == "UnitNew" and body[0] in self._cache.watched:
            self._cache.located(body[0], body[1])
            self._request(unit=body[0], whole=False)  # often our own ListUnitsByNames loaded it
        elif member == "UnitRemoved" and body[0] in self._cache.watched:
            log.debug("systemd: %s unloaded", body[0])

    def _on_owner_changed(self, body: list[Any]) -> None:
        """The manager left the bus or came back (daemon-reexec): resubscribe and resync."""
        _, _, new = body
        if not new:
            log.info("systemd: manager left the bus")
            self._owner = None
        elif new != self._owner:
            log.info("systemd: manager is now %s; resubscribing", new)
            self._owner = new
            self._want_subscribe = True
            self._request(deep=True)

    def _on_properties(self, path: str, body: list[Any]) -> None:
        """PropertiesChanged on a unit object: the cache says what to publish and to fetch."""
        interface, changed, invalidated = body
        if interface not in (UNIT, SERVICE):
            return
        out = self._cache.signal(path, interface == SERVICE, _values(changed), invalidated)
        for name in out.refresh:
            self._request(unit=name)
        for name, seen in out.publish:
            self._emit(name, seen)

    def _emit(self, name: str, seen: Seen | None) -> None:
        """Hand a unit's state to the runtime as a complete observation."""
        if seen is None:
            return
        assert seen.active is not None and seen.sub is not None and seen.load is not None
        self._on_input(
            UnitObserved(
                unit=name,
                active=seen.active,
                sub=seen.sub,
                at=self._clock(),
                load=seen.load,
                result=seen.result,
                main_pid=seen.main_pid,
                n_restarts=seen.n_restarts,
                exit_code=seen.exit_code,
                exit_status=seen.exit_status,
                restart=seen.restart,
                restart_sec=seen.restart_usec / 1e6,
                changed_at=self._on_clock(seen.changed / 1e6) if seen.changed else 0.0,
            )
        )

    def _on_clock(self, monotonic: float) -> float:
        """A CLOCK_MONOTONIC reading (systemd's) on the agent's clock."""
        return monotonic - time.monotonic() + self._clock()


def _values(changed: dict[str, Any]) -> dict[str, Any]:
    """dbus-fast Variants unwrapped."""
    return {prop: variant.value for prop, variant in changed.items()}
