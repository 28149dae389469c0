"""sd_notify: the datagram protocol (path and abstract sockets), the watchdog and STATUS lines,
and the real agent process notifying a socket the test owns."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.inputs import ActionCompleted, GoalsLoaded, UnitObserved
from agent.core.spec import GoalSet, ServiceSpec
from agent.core.state import State
from agent.core.step import step
from agent.interfaces.sd_notify import Notifier, StatusLines, status_line, watchdog_interval
from tests.agentproc import AgentProcess, wait_until, wait_until_async
from tests.corekit import routing_domain


class Listener:
    """A NOTIFY_SOCKET the test reads: every datagram as a list of lines."""

    def __init__(self, address: str) -> None:
        self.address = address
        raw = "\0" + address[1:] if address.startswith("@") else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(raw)
        self.sock.setblocking(False)
        self.messages: list[list[str]] = []

    def drain(self) -> list[list[str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append(data.decode().split("\n"))

    def lines(self) -> list[str]:
        return [line for msg in self.drain() for line in msg]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    lst = Listener(str(tmp_path / "notify"))
    yield lst
    lst.close()


def test_messages_reach_a_path_socket(listener: Listener) -> None:
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "4000000", "KEEP": "1"}
    notifier = Notifier.from_env(env)
    assert env == {"KEEP": "1"}  # children must not inherit the socket
    assert notifier.enabled and notifier.watchdog == 4.0
    notifier.ready("1 service: 1 Running")
    notifier.status("1 service: 1 Running")  # unchanged: not sent again
    notifier.ping()
    notifier.reloading()
    notifier.reloaded("1 service: 1 Running")
    notifier.stopping()
    msgs = listener.drain()
    assert msgs[0] == ["READY=1", "STATUS=1 service: 1 Running"]
    assert msgs[1] == ["WATCHDOG=1"]
    assert msgs[2][0] == "RELOADING=1" and msgs[2][1].startswith("MONOTONIC_USEC=")
    usec = int(msgs[2][1].split("=")[1])
    assert abs(usec / 1e6 - time.monotonic()) < 5
    assert msgs[3] == ["READY=1", "STATUS=1 service: 1 Running"]
    assert msgs[4][0] == "STOPPING=1"
    assert len(msgs) == 5


def test_abstract_socket() -> None:
    lst = Listener(f"@setpoint-test-{secrets.token_hex(4)}")
    try:
        Notifier.from_env({"NOTIFY_SOCKET": lst.address}).ready()
        assert lst.drain() == [["READY=1"]]
    finally:
        lst.close()


def test_without_a_manager_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    quiet = Notifier.from_env({})
    assert not quiet.enabled and quiet.watchdog is None and not quiet.send("READY=1")
    gone = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "missing")})
    assert not gone.send("READY=1")  # logged, not raised
    assert not Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1"}).enabled


def test_reloading_before_ready_sends_nothing(listener: Listener) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.address})
    notifier.reloading()
    notifier.reloaded("x")
    assert listener.drain() == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, os.getpid()) == expected


def test_status_line_counts_lifecycles_goals_and_pending() -> None:
    goals = GoalSet(
        services=(
            ServiceSpec("web", "web.service"),
            ServiceSpec("db-primary", "db.service"),
        ),
        domains=(routing_domain(),),
    )
    state, _ = step(State(), GoalsLoaded(goals, 0.0))
    assert status_line(state) == "2 services: 2 Stopped; 1/1 goals hold; 0 pending"
    state, _ = step(state, UnitObserved("web.service", "active", "running", 1.0))
    state, _ = step(state, UnitObserved("db.service", "failed", "failed", 1.0))
    line = status_line(state)
    # db failed: the agent starts it again (1 pending); the domain waits for the outcome
    assert line == "2 services: 1 Starting, 1 Running; 1/1 goals hold; 1 pending"
    job = next(iter(state.pending))
    state, _ = step(state, ActionCompleted(job, False, 1.1, "failed", permanent=True))
    assert status_line(state).startswith("2 services: 1 Running, 1 Error; 0/1 goals hold; ")
    assert "\n" not in line
    assert status_line(State()) == "0 services; 0/0 goals hold; 0 pending"


async def test_serve_pings_at_half_the_interval_and_stops_when_unhealthy(
    listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(listener.sock.getsockname(), watchdog=0.4)
    healthy = True
    ready = asyncio.Event()
    task = asyncio.create_task(notifier.serve(ready.wait, lambda: "fine", lambda: healthy, env={}))

    def pings() -> int:
        return listener.lines().count("WATCHDOG=1")

    # Starting up is not being stuck: a ping every 0.2s while waiting. Each one comes after
    # a wait for readiness ran out, so two of them show it was checked and not ready.
    await wait_until_async(lambda: pings() >= 2, 30, "two pings while waiting")
    assert "READY=1" not in listener.lines()  # not before the first resync
    ready.set()
    await wait_until_async(lambda: "READY=1" in listener.lines(), 30, "READY=1")
    waiting = pings()
    await wait_until_async(lambda: pings() >= waiting + 2, 30, "two pings once ready")
    lines = listener.lines()
    assert lines.count("READY=1") == 1 and "STATUS=fine" in lines
    before = pings()
    healthy = False  # no await since `before`: the notifier cannot have pinged in between
    caplog.set_level(logging.ERROR, "setpoint.notify")

    def withheld() -> int:
        return sum("withholding the watchdog ping" in r.getMessage() for r in caplog.records)

    await wait_until_async(lambda: withheld() >= 2, 30, "two pings withheld")
    assert pings() == before
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


GOALS = "apiVersion: setpoint/v1\nservices:\n  a: {unit: a.service, desired: unmanaged}\n"


def test_agent_process_notifies_ready_status_reload_and_stopping(
    listener: Listener, tmp_path: Path
) -> None:
    goals = tmp_path / "goals.yaml"
    goals.write_text(GOALS)
    env = {**os.environ, "NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000"}
    with AgentProcess(goals, tmp_path / "state", env=env) as agent:
        wait_until(lambda: "READY=1" in listener.lines(), 20, "READY=1")
        wait_until(lambda: listener.lines().count("WATCHDOG=1") >= 2, 5, "watchdog pings")
        assert "STATUS=1 service: 1 Stopped; 0/0 goals hold; 0 pending" in listener.lines()
        agent.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: listener.lines().count("READY=1") == 2, 10, "READY=1 after reload")
        assert "RELOADING=1" in listener.lines()
        assert agent.stop() == 0
    assert "STOPPING=1" in listener.lines()


def test_stall_hook_blocks_the_loop_and_the_pings_stop(listener: Listener, tmp_path: Path) -> None:
    goals = tmp_path / "goals.yaml"
    goals.write_text(GOALS)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": listener.address,
        "WATCHDOG_USEC": "400000",
        "SETPOINT_TEST_STALL_AFTER": "1",
    }
    with AgentProcess(goals, tmp_path / "state", env=env) as agent:
        wait_until(lambda: "blocking the event loop now" in agent.output(), 60, "the stall")
        # The loop pings from the task that logged this line just before it blocked: every
        # ping it will ever send has been sent already.
        wait_until(lambda: listener.lines().count("WATCHDOG=1") >= 1, 5, "a ping")
        pings = listener.lines().count("WATCHDOG=1")
        agent.proc.send_signal(signal.SIGTERM)  # the loop is blocked: the handler never runs
        # A timing property, so a sleep: a blocked loop produces no event to wait for, and
        # "no ping" only means something over a span of time: systemd kills the agent when
        # WatchdogSec (0.4s here) passes without one. Watch 2.5 such intervals.
        time.sleep(1.0)
        assert listener.lines().count("WATCHDOG=1") == pings
        assert agent.proc.poll() is None


def test_status_lines_follow_every_change_and_reuse_the_last_line_otherwise() -> None:
    goals = GoalSet(services=(ServiceSpec("web", "web.service"),), domains=(routing_domain(),))
    lines = StatusLines()
    state, _ = step(State(), GoalsLoaded(goals, 0.0))
    first = lines(state)
    assert first == status_line(state)
    assert lines(state) is first  # not worked out again
    for inp in (
        UnitObserved("web.service", "active", "running", 1.0),
        UnitObserved("web.service", "failed", "failed", 2.0),
    ):
        state, _ = step(state, inp)
        assert lines(state) == status_line(state)
    assert lines(state) != first
