"""Interfaces: sd_notify without a library: READY, STATUS, WATCHDOG, RELOADING and STOPPING for
Type=notify.

systemd passes `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace) and, with
WatchdogSec=, `WATCHDOG_USEC` (plus `WATCHDOG_PID`). Each message is one datagram of
`KEY=value` lines. The watchdog ping is sent by a task on the event loop itself: a loop that
stops turning stops pinging, and systemd kills and restarts the agent.

Test hook: `SETPOINT_TEST_STALL_AFTER=<seconds>` makes `serve` block the event loop (a plain
`time.sleep`) that long after start, to prove the watchdog works. It is read only when set and
does nothing otherwise; never set it in production.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import get_args

from agent.core.state import Lifecycle, State

log = logging.getLogger("setpoint.notify")

STALL_ENV = "SETPOINT_TEST_STALL_AFTER"
_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _address(raw: str) -> str | bytes | None:
    """The socket address of NOTIFY_SOCKET: a path, or an abstract name for `@name`."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None  # vsock and other forms are not supported


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout in seconds, if it is enabled for process `pid`."""
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 1_000_000


class Notifier:
    """Sends notifications to the service manager; a no-op when not run by one."""

    def __init__(self, address: str | bytes | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog = watchdog
        """WatchdogSec in seconds (pings go out at half of it), or None."""
        self.is_ready = False
        self._status = ""

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None) -> Notifier:
        """Read and unset the NOTIFY_SOCKET/WATCHDOG_* variables (children must not inherit)."""
        env = os.environ if env is None else env
        raw = {key: env.pop(key, "") for key in _ENV_KEYS}
        address = _address(raw["NOTIFY_SOCKET"]) if raw["NOTIFY_SOCKET"] else None
        if raw["NOTIFY_SOCKET"] and address is None:
            log.warning("NOTIFY_SOCKET=%s is not supported; not notifying", raw["NOTIFY_SOCKET"])
        return cls(address, watchdog_interval(raw, os.getpid()))

    @property
    def enabled(self) -> bool:
        """True when there is a manager to notify."""
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send one datagram of `KEY=value` lines; False if it could not be sent."""
        if self.address is None:
            return False
        data = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # a full queue must never stall the loop
                sock.sendto(data, self.address)
        except OSError as err:
            log.warning("sd_notify %s failed: %s", fields[0], err)
            return False
        return True

    def ready(self, status: str = "") -> None:
        """READY=1 (with a STATUS= line when given)."""
        self.is_ready = True
        self.send("READY=1", *self._status_field(status))

    def status(self, text: str) -> None:
        """STATUS=text, only when it changed."""
        if fields := self._status_field(text):
            self.send(*fields)

    def ping(self) -> None:
        """WATCHDOG=1."""
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        """RELOADING=1 with MONOTONIC_USEC (systemd pairs it with the next READY=1)."""
        if self.is_ready:
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading goals")
            self._status = "reloading goals"

    def reloaded(self, status: str) -> None:
        """READY=1 after a reload (only if READY was sent before)."""
        if self.is_ready:
            self.ready(status)

    def stopping(self) -> None:
        """STOPPING=1."""
        self.send("STOPPING=1", "STATUS=stopping: finishing in-flight effects")
        self._status = "stopping"

    def _status_field(self, text: str) -> list[str]:
        text = " ".join(text.split())  # one line
        if not text or text == self._status:
            return []
        self._status = text
        return [f"STATUS={text}"]

    async def serve(
        self,
        ready: Callable[[], Awaitable[object]] | None,
        status: Callable[[], str],
        healthy: Callable[[], bool] = lambda: True,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Wait for `ready`, send READY=1, then keep STATUS fresh and ping the watchdog.

        Runs as a supervised task on the daemon's own loop, so the pings stop when the loop
        does. A ping is also withheld while `healthy()` is False (e.g. a runtime that stopped
        committing), so systemd restarts a wedged agent, not only a blocked one.
        """
        stall = _stall_after(os.environ if env is None else env)
        loop = asyncio.get_running_loop()
        started = loop.time()
        half = self.watchdog / 2 if self.watchdog else None
        period = min(1.0, half) if half else 1.0
        if ready is not None:
            self.status("waiting for systemd: connecting and first resync")
            wait = asyncio.ensure_future(ready())
            try:
                while not wait.done():
                    await asyncio.wait([wait], timeout=period)
                    if half:
                        self.ping()  # starting up is not being stuck
            finally:
                wait.cancel()
        self.ready(status())
        log.info("ready" + (f" (watchdog ping every {half:g}s)" if half else ""))
        last_ping = loop.time()
        while True:
            await asyncio.sleep(period)
            if stall is not None and loop.time() - started >= stall:
                _block_the_loop(stall)
            self.status(status())
            if half and loop.time() - last_ping >= half - period / 2:
                if healthy():
                    self.ping()
                    last_ping = loop.time()
                else:
                    log.error("runtime makes no progress; withholding the watchdog ping")


def _stall_after(env: Mapping[str, str]) -> float | None:
    raw = env.get(STALL_ENV)
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        log.warning("%s=%r is not a number of seconds; ignored", STALL_ENV, raw)
        return None


def _block_the_loop(after: float) -> None:
    """The test hook: block the event loop for good, like a hung synchronous call would."""
    log.warning("%s=%g: blocking the event loop now (test hook)", STALL_ENV, after)
    while True:
        time.sleep(3600)  # blocking the loop is the point


class StatusLines:
    """`status_line`, worked out again only when what it counts changed (a state is immutable:
    the same maps are the same counts). At 10,000 services a line costs about 7 ms."""

    def __init__(self) -> None:
        self._key: tuple[object, ...] = (None, None, None, None)
        self._line = ""

    def __call__(self, state: State) -> str:
        key = (state.services, state.domains, state.pending, state.maintenance)
        if any(a is not b for a, b in zip(key, self._key, strict=True)):
            self._key, self._line = key, status_line(state)
        return self._line


def status_line(state: State) -> str:
    """One line for STATUS=: services by lifecycle, goals holding, pending actions."""
    counts = dict.fromkeys(get_args(Lifecycle), 0)
    for svc in state.services.values():
        counts[svc.lifecycle] += 1
    total = len(state.services)
    by_state = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    services = f"{total} service{'s' if total != 1 else ''}" + (f": {by_state}" if by_state else "")
    holding = sum(1 for d in state.domains.values() if d.satisfied)
    goals = f"{holding}/{len(state.domains)} goals hold"
    parts = [services, goals, f"{len(state.pending)} pending"]
    if state.maintenance:
        parts.insert(0, "MAINTENANCE")
    return "; ".join(parts)
