"""The real agent under libfaketime (Debian `faketime`): its wall clock stepped an hour forward
and back, as NTP or a resumed VM would, while CLOCK_MONOTONIC runs on. Nothing the agent
measures may jump: no alert fired by the step, no spurious give-up, no hour-long backoff."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess, journal_rows, marker, status, wait_until
from tests.needs import unavailable
from tests.sysmgr import SystemdUser
from tests.system.test_systemd_agent import kill_and_await_restart

pytestmark = pytest.mark.systemd
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SLOW = "sp-clock-slow.service"
FLAP = "sp-clock-flap.service"
GOALS = f"""apiVersion: setpoint/v1
services:
  slow: {{unit: {SLOW}}}
  flap: {{unit: {FLAP}, restart: {{backoff: 100ms, limit: 3, window: 4s}}}}
domains:
  Stuck:
    state: {{ok: {{type: bool, default: false}}}}
    goal: ok
"""


def test_wall_clock_steps_move_nothing_the_agent_measures(
    systemd_user: SystemdUser, tmp_path: Path
) -> None:
    if not LIBFAKETIME.exists():
        unavailable(f"{LIBFAKETIME} not found (Debian package faketime)")
    mgr = systemd_user
    mgr.write_unit(SLOW, "[Service]\nExecStartPre=/bin/sleep 3600\nExecStart=/bin/sleep infinity\n")
    mgr.write_unit(FLAP, "[Service]\nExecStart=/bin/sleep infinity\n")
    mgr.daemon_reload()
    goals, state, offset = tmp_path / "goals.yaml", tmp_path / "state", tmp_path / "faketime"
    goals.write_text(GOALS)
    offset.write_text("+0\n")
    env = {
        **mgr.env,
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # NTP steps the wall clock, not CLOCK_MONOTONIC
    }
    extra = ("--shutdown-timeout", "2s")  # slow's start job runs for an hour: do not wait it out
    with AgentProcess(goals, state, bus="user", env={**os.environ, **env}, extra=extra) as agent:
        agent.wait_started()
        wait_until(lambda: status(state)["services"]["slow"]["lifecycle"] == "Starting", 10, "")
        mgr.wait_for(FLAP, "active", 10)
        kill_and_await_restart(mgr, FLAP, "a first restart")
        mgr.wait_for(FLAP, "active", 10)
        kill_and_await_restart(mgr, FLAP, "a second restart")
        time.sleep(4.5)  # the restart window (4 s) passes for real
        offset.write_text("-3600s\n")  # an hour back: those two restarts look an hour ahead
        time.sleep(0.5)
        mgr.wait_for(FLAP, "active", 10)
        kill_and_await_restart(mgr, FLAP, "a restart after the step back, no hour of backoff")
        mgr.wait_for(FLAP, "active", 10)
        kill_and_await_restart(mgr, FLAP, "and another: 2 in the window, not 4")
        mgr.wait_for(FLAP, "active", 10)
        offset.write_text("+3600s\n")  # an hour forward: Starting > 10 min, GoalBroken > 5 min,
        time.sleep(1.0)  # stable for 2 min...: ten ticks of the stepped clock
        wait_until(lambda: status(state)["services"]["flap"]["lifecycle"] == "Running", 10, "")
        last = marker(state, "resync")
        svc = status(state)["services"]
        assert not svc["flap"]["gave_up"], svc["flap"]["reason"]
        assert svc["slow"]["lifecycle"] == "Starting" and svc["slow"]["for_seconds"] < 60
        out = agent.output()
        assert out.count("; restarting (") == 4 and "limit reached" not in out
        assert "counters reset" not in out, "'stable for' measured across the step"
        assert " firing" not in out and " resolved" not in out, "an alert moved by a step"
        assert agent.stop() == 0
    assert journal_rows(state, 1)[0]["seq"] >= last
