"""Adapters / systemd: observe units over D-Bus and run start/stop/restart jobs (dbus-fast).

Signals make reactions immediate; a periodic full resync repairs whatever a lost signal or a
reconnect missed (level-triggered). Every observation is a complete `UnitObserved`: signals may
carry only some properties, so a small per-unit cache fills the rest, and nothing is emitted when
nothing relevant changed.

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
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from dbus_fast import BusType, DBusFastError, Message, MessageType
from dbus_fast.aio import MessageBus

from agent.core.inputs import Input, UnitObserved
from agent.errors import NotPermitted, PermanentError, TransientError

log = logging.getLogger("setpoint.systemd")

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
DBUS = "org.freedesktop.DBus"
UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit/"

JobOp = Literal["start", "stop", "restart"]
BusKind = Literal["system", "user"]

_METHODS: dict[str, str] = {"start": "StartUnit", "stop": "StopUnit", "restart": "RestartUnit"}
_MATCH_RULES = (
    f"type='signal',sender='{SYSTEMD}'",
    f"type='signal',sender='{DBUS}',interface='{DBUS}',member='NameOwnerChanged',arg0='{SYSTEMD}'",
)
# D-Bus errors where retrying cannot help; anything else is transient.
_PERMANENT_ERRORS = frozenset(
    {
        "org.freedesktop.systemd1.NoSuchUnit",
        "org.freedesktop.systemd1.UnitMasked",
        "org.freedesktop.systemd1.LoadFailed",
        "org.freedesktop.systemd1.BadUnitSetting",
        "org.freedesktop.systemd1.JobTypeNotApplicable",
        "org.freedesktop.systemd1.OnlyByDependency",
        "org.freedesktop.DBus.Error.AccessDenied",
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
        "org.freedesktop.DBus.Error.InvalidArgs",
        "org.freedesktop.DBus.Error.UnknownMethod",
        "org.freedesktop.DBus.Error.NotSupported",
    }
)
_ALREADY_SUBSCRIBED = "org.freedesktop.systemd1.AlreadySubscribed"
# JobRemoved results: which ones end a job as a success, and which ones cannot improve.
_JOB_OK = frozenset({"done", "skipped"})
_JOB_PERMANENT = frozenset({"invalid", "unsupported", "once"})
_UNIT_PROPS = {
    "ActiveState": "active",
    "SubState": "sub",
    "LoadState": "load",
    "StateChangeTimestamp": "changed",
}
_SERVICE_PROPS = {
    "Result": "result",
    "MainPID": "main_pid",
    "NRestarts": "n_restarts",
    "ExecMainCode": "exit_code",
    "ExecMainStatus": "exit_status",
}
_DENIED = frozenset(
    {
        "org.freedesktop.DBus.Error.AccessDenied",
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
    }
)
_JOB_BUFFER = 512
_BACKOFF_MIN = 0.1
_COALESCE = 0.02


def unit_path(name: str) -> str:
    """The object path of a unit, escaped like systemd's bus_label_escape (pure)."""
    if not name:
        return UNIT_PATH_PREFIX + "_"
    out = []
    for i, byte in enumerate(name.encode()):
        char = chr(byte)
        if char.isascii() and (char.isalpha() or (i > 0 and char.isdigit())):
            out.append(char)
        else:
            out.append(f"_{byte:02x}")
    return UNIT_PATH_PREFIX + "".join(out)


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


class _ReplyError(Exception):
    """A D-Bus error reply (internal; converted before leaving the module)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


def _convert(err: _ReplyError, what: str) -> PermanentError | TransientError:
    """The project error for a D-Bus error reply about `what` (e.g. "start web.service")."""
    if err.name in _DENIED:
        return NotPermitted(f"{what}: {err.text} ({err.name})")
    cls = PermanentError if err.name in _PERMANENT_ERRORS else TransientError
    return cls(f"{what}: {err.text} ({err.name})")


def _job_outcome(unit: str, op: str, result: str) -> str:
    """Return the result of a finished job, or raise the error it stands for (pure)."""
    if result in _JOB_OK:
        return result
    cls = PermanentError if result in _JOB_PERMANENT else TransientError
    raise cls(f"{op} {unit}: job finished with result '{result}'")


@dataclass
class _Seen:
    """What is known of one unit; `touched` says which signal last set each field."""

    active: str | None = None
    sub: str | None = None
    load: str | None = None
    result: str = "success"
    main_pid: int = 0
    n_restarts: int = 0
    exit_code: int = 0
    exit_status: int = 0
    changed: int = 0
    """systemd's StateChangeTimestamp (us since the epoch); 0 when unknown."""
    touched: dict[str, int] = field(default_factory=dict)

    def rebase(self, fetched: _Seen, since: int) -> _Seen:
        """`fetched` (a resync reply), except fields a signal set after `since`."""
        for name, seq in self.touched.items():
            if seq > since:
                setattr(fetched, name, getattr(self, name))
                fetched.touched[name] = seq
        return fetched

    def key(self) -> tuple[Any, ...] | None:
        """The relevant fields, or None while incomplete."""
        if self.active is None or self.sub is None or self.load is None:
            return None
        return (self.active, self.sub, self.load, self.result, self.main_pid, self.n_restarts,
                self.exit_code, self.exit_status)  # fmt: skip


class SystemdAdapter:
    """Watches a set of units and runs jobs on one systemd manager over D-Bus.

    `run()` is the long-running task (connect, subscribe, resync, serve, reconnect with
    backoff); `run_job()` may be called concurrently from the effect lanes.
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
        self._watched: frozenset[str] = frozenset()
        self._paths: dict[str, set[str]] = {}
        self._seen: dict[str, _Seen] = {}
        self._emitted: dict[str, tuple[Any, ...]] = {}
        self._seq = 0
        self._bus: MessageBus | None = None
        self._owner: str | None = None
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._want_full = False
        self._want_subscribe = False
        self._dirty: set[str] = set()
        self._jobs: dict[str, asyncio.Future[str]] = {}
        self._calls = asyncio.Semaphore(_MAX_CALLS)
        self._finished_jobs: OrderedDict[str, str] = OrderedDict()
        self._closed = False
        self._stopping = asyncio.Event()
        self.generation = 0
        """Counts connections and manager restarts (daemon-reexec) seen so far."""

    # -- public API ------------------------------------------------------------------------

    @property
    def watched(self) -> frozenset[str]:
        """The unit names being watched."""
        return self._watched

    @property
    def connected(self) -> bool:
        """True while subscribed on a live connection, with the manager on the bus."""
        return self._ready.is_set() and self._owner is not None

    def watch(self, units: Iterable[str]) -> None:
        """Replace the set of watched units; new ones are fetched soon, dropped ones forgotten."""
        new = frozenset(units)
        for name in self._watched - new:
            self._seen.pop(name, None)
            self._emitted.pop(name, None)
        self._watched = new
        paths = {path: names & new for path, names in self._paths.items() if names & new}
        for name in new:
            paths.setdefault(unit_path(name), set()).add(name)
        self._paths = paths
        if new - set(self._seen):
            self._request(full=True)

    async def wait_ready(self) -> None:
        """Wait until connected, subscribed and resynced at least once on this connection."""
        await self._ready.wait()

    async def resync(self) -> None:
        """Fetch every watched unit and emit a UnitObserved for each, changed or not.

        Never raises on bus trouble: while disconnected, or when the fetch fails, the resync is
        left to the next (re)connect or retried by the background loop.
        """
        if self._bus is None or not self._ready.is_set():
            self._request(full=True)
            return
        try:
            await self._resync(self._bus, force=True)
        except (TransientError, _ReplyError) as err:
            log.warning("systemd resync failed, will retry: %s", err)
            self._request(full=True)

    async def run_job(self, unit: str, op: JobOp, timeout: float) -> str:
        """Start/stop/restart `unit` (mode "replace") and wait for the job; its result.

        Raises TransientError (bus trouble, timeout, job failed/canceled/dependency) or
        PermanentError (no such unit, masked, access denied, invalid arguments).
        """
        what = f"{op} {unit}"
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
                if self._bus is None:
                    raise TransientError(f"{what}: not connected")
                reply = await self._call(
                    self._bus, MANAGER_PATH, MANAGER, _METHODS[op], "ss", [unit, "replace"]
                )
                job: str = reply.body[0]
                result = await self._job_result(job)
        except TimeoutError as err:
            raise TransientError(f"{what}: no result within {timeout:g}s") from err
        except _ReplyError as err:
            raise _convert(err, what) from err
        return _job_outcome(unit, op, result)

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
        except (TransientError, _ReplyError) as err:
            bus.disconnect()
            self._drop_connection(TransientError(str(err)))
            raise TransientError(f"setting up the systemd connection: {err}") from err
        return bus

    async def _setup(self, bus: MessageBus) -> None:
        """Match rules, the manager's owner, Subscribe, then a first resync."""
        for rule in _MATCH_RULES:
            await self._call(bus, "/org/freedesktop/DBus", DBUS, "AddMatch", "s", [rule], DBUS)
        reply = await self._call(
            bus, "/org/freedesktop/DBus", DBUS, "GetNameOwner", "s", [SYSTEMD], DBUS
        )
        self._owner = reply.body[0]
        await self._subscribe(bus)
        self._want_subscribe = False
        self._dirty.clear()
        self._want_full = False
        await self._resync(bus, force=False)
        self.generation += 1
        self._ready.set()
        log.info("systemd: connected to %s (manager %s)", self._kind, self._owner)

    async def _subscribe(self, bus: MessageBus) -> None:
        """Manager.Subscribe; being subscribed already is fine."""
        try:
            await self._call(bus, MANAGER_PATH, MANAGER, "Subscribe", "", [])
        except _ReplyError as err:
            if err.name != _ALREADY_SUBSCRIBED:
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
        jobs, self._jobs = self._jobs, {}
        for fut in jobs.values():
            if not fut.done():
                fut.set_exception(err)
        self._finished_jobs.clear()

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
    ) -> Message:
        """One method call; raises _ReplyError for an error reply, TransientError otherwise."""
        msg = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body,
        )
        try:
            async with self._calls, asyncio.timeout(self._call_timeout):
                reply = await _bus_call(bus, msg)
        except TimeoutError as err:
            raise TransientError(f"{member}: no reply within {self._call_timeout:g}s") from err
        except (OSError, EOFError, DBusFastError) as err:
            raise TransientError(f"{member}: {err!r}") from err
        if reply is None:
            raise TransientError(f"{member}: bus connection lost")
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise _ReplyError(reply.error_name or "unknown", str(text))
        return reply

    async def _job_result(self, job: str) -> str:
        """Wait for JobRemoved of `job`, which may already have been read."""
        if (done := self._finished_jobs.pop(job, None)) is not None:
            return done
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._jobs[job] = fut
        try:
            return await fut
        finally:
            self._jobs.pop(job, None)

    # -- resync ----------------------------------------------------------------------------

    def _request(self, *, full: bool = False, unit: str | None = None) -> None:
        """Ask the background loop for a full resync or a refresh of one unit."""
        self._want_full |= full
        if unit is not None:
            self._dirty.add(unit)
        self._wake.set()

    async def _sync_loop(self, bus: MessageBus) -> None:
        """Resync every interval and whenever a signal asks for it."""
        while True:
            await self._sleep_until_wanted()
            subscribe, full, dirty = self._want_subscribe, self._want_full, self._dirty
            self._want_subscribe, self._want_full, self._dirty = False, False, set()
            try:
                if subscribe:
                    await self._subscribe(bus)
                    self.generation += 1
                if full or subscribe:
                    await self._resync(bus, force=False)
                elif dirty:
                    await self._refresh(bus, dirty)
            except (TransientError, _ReplyError) as err:
                log.warning("systemd resync failed, retrying: %s", err)
                self._want_subscribe |= subscribe
                self._request(full=True)
                await asyncio.sleep(min(1.0, self._interval))

    async def _sleep_until_wanted(self) -> None:
        """Wait for a request or the periodic interval; then let a burst of signals settle."""
        if not (self._want_full or self._want_subscribe or self._dirty):
            try:
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            except TimeoutError:
                self._want_full = True
        self._wake.clear()
        await asyncio.sleep(_COALESCE)

    async def _resync(self, bus: MessageBus, *, force: bool) -> None:
        """Fetch all watched units; emit changed ones (all when `force`)."""
        names = sorted(self._watched)
        if names:
            await self._fetch(bus, names, force=force)

    async def _refresh(self, bus: MessageBus, names: set[str]) -> None:
        """Fetch units a signal pointed at, without loading units that are gone again."""
        loaded = []
        for name in sorted(names & self._watched):
            try:
                await self._call(bus, MANAGER_PATH, MANAGER, "GetUnit", "s", [name])
            except _ReplyError:
                continue
            loaded.append(name)
        if loaded:
            await self._fetch(bus, loaded, force=False)

    async def _fetch(self, bus: MessageBus, names: list[str], *, force: bool) -> None:
        """ListUnitsByNames (+ Service properties) for `names`, then publish them."""
        started = self._seq
        try:
            rows = await self._list_units(bus, names)
        except _ReplyError as err:
            rows, error = [], err.text
        else:
            error = "not a valid unit name"  # ListUnitsByNames silently skips invalid names
        if len(rows) != len(names):
            if len(names) == 1:
                self._unusable(names[0], error, force=force)
                return
            for name in names:  # one bad name spoils the batch: ask one by one
                await self._fetch(bus, [name], force=force)
            return
        # One row per requested name, in order; a row names the unit's primary name, so an
        # alias is recorded under the name we were asked to watch.
        fetched = await asyncio.gather(
            *(
                self._row_state(bus, name, row, self._seen.get(name))
                for name, row in zip(names, rows, strict=True)
            )
        )
        for name, state in fetched:
            seen = self._seen.get(name)
            self._seen[name] = state if seen is None else seen.rebase(state, started)
            self._publish(name, force=force)

    def _unusable(self, name: str, error: str, *, force: bool) -> None:
        """A watched name systemd refuses: log it once and report it as not found."""
        if name not in self._seen:
            log.error("systemd: cannot watch %s: %s", name, error)
        self._seen[name] = _Seen(active="inactive", sub="dead", load="not-found")
        self._publish(name, force=force)

    async def _list_units(self, bus: MessageBus, names: list[str]) -> list[list[Any]]:
        """Rows (name, description, load, active, sub, following, path, ...) for `names`."""
        reply = await self._call(bus, MANAGER_PATH, MANAGER, "ListUnitsByNames", "as", [names])
        rows: list[list[Any]] = reply.body[0]
        return rows

    async def _row_state(
        self, bus: MessageBus, name: str, row: list[Any], prior: _Seen | None
    ) -> tuple[str, _Seen]:
        """A complete state for one ListUnitsByNames row; services get their Service props.

        When the state is new to us, also when it changed (a lost signal, or our first look).
        """
        _, _, load, active, sub, _, path = row[:7]
        self._paths.setdefault(path, set()).add(name)
        state = _Seen(active=active, sub=sub, load=load)
        if prior is not None and (prior.active, prior.sub) == (active, sub):
            state.changed = prior.changed
        elif load not in ("not-found", "masked"):
            with contextlib.suppress(_ReplyError):
                reply = await self._call(
                    bus, path, PROPERTIES, "Get", "ss", [UNIT, "StateChangeTimestamp"]
                )
                state.changed = int(reply.body[0].value)
        if name.endswith(".service") and load not in ("not-found", "masked"):
            try:
                reply = await self._call(bus, path, PROPERTIES, "GetAll", "s", [SERVICE])
            except _ReplyError as err:
                log.debug("systemd: no Service properties for %s: %s", name, err)
            else:
                _merge(state, reply.body[0], _SERVICE_PROPS, 0)
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
        """JobRemoved, Reloading, UnitNew, UnitRemoved."""
        if member == "JobRemoved":
            self._on_job_removed(body[1], body[3])
        elif member == "Reloading" and not body[0]:
            log.info("systemd: daemon-reload finished; resyncing")
            self._request(full=True)
        elif member == "UnitNew" and body[0] in self._watched:
            self._paths.setdefault(body[1], set()).add(body[0])
            self._request(unit=body[0])
        elif member == "UnitRemoved" and body[0] in self._watched:
            log.debug("systemd: %s unloaded", body[0])

    def _on_job_removed(self, job: str, result: str) -> None:
        """Hand a job's result to its waiter, or keep it for a waiter still to come."""
        fut = self._jobs.pop(job, None)
        if fut is not None:
            if not fut.done():
                fut.set_result(result)
            return
        self._finished_jobs[job] = result
        while len(self._finished_jobs) > _JOB_BUFFER:
            self._finished_jobs.popitem(last=False)

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
            self._request(full=True)

    def _on_properties(self, path: str, body: list[Any]) -> None:
        """PropertiesChanged on a unit object: merge, then publish on the Unit interface."""
        names = self._paths.get(path)
        if not names:
            return
        interface, changed, invalidated = body
        if interface not in (UNIT, SERVICE):
            return
        props = _UNIT_PROPS if interface == UNIT else _SERVICE_PROPS
        self._seq += 1
        for name in names:
            seen = self._seen.setdefault(name, _Seen())
            _merge(seen, changed, props, self._seq)
            if set(invalidated) & props.keys() or seen.key() is None:
                self._request(unit=name)
            elif interface == UNIT:  # systemd sends Service first, then Unit, per change
                self._publish(name, force=False)

    def _publish(self, name: str, *, force: bool) -> None:
        """Emit the unit's state if complete and (unless forced) changed."""
        seen = self._seen.get(name)
        key = seen.key() if seen is not None else None
        if seen is None or key is None or name not in self._watched:
            return
        if not force and self._emitted.get(name) == key:
            return
        self._emitted[name] = key
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
                changed_at=seen.changed / 1e6,
            )
        )


def _merge(seen: _Seen, changed: dict[str, Any], props: dict[str, str], seq: int) -> None:
    """Copy the relevant properties (dbus-fast Variants) into `seen`; `seq` 0 for a resync."""
    for prop, name in props.items():
        if prop in changed:
            setattr(seen, name, changed[prop].value)
            if seq:
                seen.touched[name] = seq
