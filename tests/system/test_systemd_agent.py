"""The real agent against a real private systemd user manager (issue: systemd over D-Bus)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentproc import (
    AgentProcess,
    cli,
    decided,
    last_seq,
    marker,
    rows_between,
    status,
    wait_until,
)
from tests.sysmgr import SystemdUser

pytestmark = pytest.mark.systemd
SLEEPER = "[Service]\nExecStart=/bin/sleep infinity\n"


def goals_file(tmp_path: Path, services: str) -> Path:
    path = tmp_path / "goals.yaml"
    path.write_text("apiVersion: setpoint/v1\nservices:\n" + services)
    return path


def start_agent(mgr: SystemdUser, goals: Path, state: Path) -> AgentProcess:
    agent = AgentProcess(goals, state, bus="user", env=mgr.env)
    agent.wait_started()
    return agent


def lifecycle(state: Path, name: str) -> str:
    svc: dict[str, str] = status(state)["services"].get(name, {})
    return svc.get("lifecycle", "")


@pytest.fixture
def mgr(systemd_user: SystemdUser) -> Iterator[SystemdUser]:
    yield systemd_user


def test_killed_unit_is_restarted(mgr: SystemdUser, tmp_path: Path) -> None:
    mgr.write_unit("sp-kill.service", SLEEPER)
    mgr.daemon_reload()
    goals = goals_file(tmp_path, "  kill: {unit: sp-kill.service}\n")
    with start_agent(mgr, goals, tmp_path / "state") as agent:
        mgr.wait_for("sp-kill.service", "active", 10)
        kill_and_await_restart(mgr, "sp-kill.service", "a new main pid")
        mgr.wait_for("sp-kill.service", "active", 10)
        wait_until(lambda: lifecycle(tmp_path / "state", "kill") == "Running", 10, "Running")
        assert agent.stop() == 0


def test_agent_stops_a_unit_started_by_hand_when_desired_stopped(
    mgr: SystemdUser, tmp_path: Path
) -> None:
    mgr.write_unit("sp-off.service", SLEEPER)
    mgr.daemon_reload()
    goals = goals_file(tmp_path, "  parked: {unit: sp-off.service, desired: stopped}\n")
    with start_agent(mgr, goals, tmp_path / "state") as agent:
        mgr.systemctl("start", "sp-off.service", check=True)
        wait_until(lambda: mgr.active_state("sp-off.service") == "inactive", 10, "stopped again")
        assert agent.stop() == 0


def test_crash_loop_gives_up_then_counters_reset_once_stable(
    mgr: SystemdUser, tmp_path: Path
) -> None:
    crash = f'[Service]\nExecStart={sys.executable} -c "import time; time.sleep(0.2); exit(1)"\n'
    mgr.write_unit("sp-loop.service", crash)
    mgr.daemon_reload()
    policy = "{backoff: 100ms, factor: 2, limit: 3, window: 1m, stable_for: 2s}"
    goals = goals_file(tmp_path, f"  loop: {{unit: sp-loop.service, restart: {policy}}}\n")
    state = tmp_path / "state"
    with start_agent(mgr, goals, state) as agent:
        wait_until(lambda: status(state)["services"]["loop"]["gave_up"], 20, "the restart limit")
        svc = status(state)["services"]["loop"]
        assert svc["lifecycle"] == "Error" and svc["restarts"] == 3
        assert "restart limit reached: 3 in 60s" in svc["reason"]
        assert "giving up" in agent.output()
        mgr.write_unit("sp-loop.service", SLEEPER)  # the operator fixes it and starts it
        mgr.daemon_reload()
        mgr.systemctl("start", "sp-loop.service", check=True)
        wait_until(lambda: not status(state)["services"]["loop"]["gave_up"], 15, "the reset")
        svc = status(state)["services"]["loop"]
        assert svc["lifecycle"] == "Running" and svc["restarts"] == 3  # total kept, window reset
        assert "restart counters reset" in agent.output()
        assert agent.stop() == 0


def test_dependant_starts_only_after_its_dependency_runs(mgr: SystemdUser, tmp_path: Path) -> None:
    slow = "[Service]\nExecStartPre=/bin/sleep 1\nExecStart=/bin/sleep infinity\n"
    mgr.write_unit("sp-db.service", slow)
    mgr.write_unit("sp-app.service", SLEEPER)
    mgr.daemon_reload()
    goals = goals_file(
        tmp_path,
        "  db: {unit: sp-db.service}\n  app: {unit: sp-app.service, depends_on: [db]}\n",
    )
    with start_agent(mgr, goals, tmp_path / "state") as agent:
        mgr.wait_for("sp-app.service", "active", 15)
        db_up = int(mgr.show("sp-db.service", "ActiveEnterTimestampMonotonic"))
        app_start = int(mgr.show("sp-app.service", "InactiveExitTimestampMonotonic"))
        assert app_start >= db_up > 0
        assert agent.stop() == 0


def test_maintenance_mode_observes_and_does_nothing(mgr: SystemdUser, tmp_path: Path) -> None:
    mgr.write_unit("sp-maint.service", SLEEPER)
    mgr.daemon_reload()
    goals = goals_file(tmp_path, "  maint: {unit: sp-maint.service}\n")
    state = tmp_path / "state"
    with start_agent(mgr, goals, state) as agent:
        mgr.wait_for("sp-maint.service", "active", 10)
        assert cli("maintenance", "on", "--state-dir", str(state)).returncode == 0
        wait_until(lambda: status(state)["maintenance"], 5, "maintenance on")
        seq = last_seq(state)
        os.kill(mgr.main_pid("sp-maint.service"), signal.SIGKILL)
        wait_until(lambda: lifecycle(state, "maint") == "Error", 10, "the crash to be observed")
        # The marker: a reset clears the restart back-off, so outside maintenance its own step
        # would restart the unit at once. The journal up to it holds no job: none was decided.
        mark = marker(state, "reset", "maint")
        assert not decided(rows_between(state, seq, mark), "UnitJob")
        assert mgr.active_state("sp-maint.service") == "failed"
        assert cli("maintenance", "off", "--state-dir", str(state)).returncode == 0
        mgr.wait_for("sp-maint.service", "active", 10)
        assert agent.stop() == 0


def test_reload_reexec_and_a_missing_unit(mgr: SystemdUser, tmp_path: Path) -> None:
    mgr.write_unit("sp-live.service", SLEEPER)
    mgr.daemon_reload()
    goals = goals_file(
        tmp_path, "  live: {unit: sp-live.service}\n  ghost: {unit: sp-ghost.service}\n"
    )
    state = tmp_path / "state"
    with start_agent(mgr, goals, state) as agent:
        mgr.wait_for("sp-live.service", "active", 10)
        wait_until(lambda: status(state)["services"]["ghost"]["reason"] != "", 10, "ghost error")
        assert status(state)["services"]["ghost"]["reason"] == "unit is not-found"
        for command in ("daemon-reload", "daemon-reexec"):
            mgr.systemctl(command, check=True)
            kill_and_await_restart(mgr, "sp-live.service", f"a restart after {command}")
        assert agent.metric('setpoint_link_up{link="systemd"}') == 1.0
        assert agent.proc.poll() is None
        assert agent.stop() == 0


def kill_and_await_restart(mgr: SystemdUser, unit: str, what: str) -> None:
    pid = mgr.main_pid(unit)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: mgr.main_pid(unit) not in (0, pid), 15, what)


def test_sigkilled_agent_completes_the_in_flight_job_once(mgr: SystemdUser, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    unit = (
        "[Service]\n"
        f"ExecStartPre={sys.executable} -c \"open('{runs}', 'a').write('x')\"\n"
        "ExecStartPre=/bin/sleep 2\nExecStart=/bin/sleep infinity\n"
    )
    mgr.write_unit("sp-job.service", unit)
    mgr.daemon_reload()
    goals = goals_file(tmp_path, "  job: {unit: sp-job.service}\n")
    state = tmp_path / "state"
    with start_agent(mgr, goals, state) as agent:
        wait_until(runs.exists, 10, "the start job to begin")
        agent.kill(signal.SIGKILL)
    assert len(status(state)["pending"]) == 1
    with start_agent(mgr, goals, state) as again:
        assert "started: 1 pending actions restored" in again.output()
        wait_until(lambda: not status(state)["pending"], 15, "the restored job to complete")
        mgr.wait_for("sp-job.service", "active", 5)
        assert runs.read_text() == "x"  # started once, not twice
        assert again.stop() == 0


def test_plan_shows_what_would_be_done_and_does_nothing(mgr: SystemdUser, tmp_path: Path) -> None:
    mgr.write_unit("sp-plan.service", SLEEPER)
    mgr.daemon_reload()
    goals = goals_file(
        tmp_path, "  planned: {unit: sp-plan.service}\n  gone: {unit: sp-nowhere.service}\n"
    )
    result = cli(
        "plan", "--goals", str(goals), "--state-dir", str(tmp_path / "s"), "--bus", "user",
        env=mgr.env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "systemd start sp-plan.service (service planned)" in result.stdout
    assert "problem: service gone: unit sp-nowhere.service is not-found" in result.stdout
    # `plan` has exited: whatever it asked of systemd reached the manager before the queries
    # below, which open a new bus connection afterwards. systemd's own record shows no job
    # queued and the unit never left the inactive state.
    assert mgr.systemctl("list-jobs", "--no-legend", check=True).stdout.strip() == ""
    assert mgr.show("sp-plan.service", "InactiveExitTimestampMonotonic") == "0"
    assert mgr.active_state("sp-plan.service") == "inactive"


def test_a_stop_waits_for_a_job_in_flight_and_sees_it_end(mgr: SystemdUser, tmp_path: Path) -> None:
    """SIGTERM while a start job runs: the bus is still watched until the job ends, so the
    agent exits once it has (not after its whole 30 s shutdown timeout) with nothing pending."""
    slow = "[Service]\nExecStartPre=/bin/sleep 2\nExecStart=/bin/sleep infinity\n"
    mgr.write_unit("sp-slowstart.service", slow)
    mgr.daemon_reload()
    goals = goals_file(tmp_path, "  slow: {unit: sp-slowstart.service}\n")
    state = tmp_path / "state"
    with start_agent(mgr, goals, state) as agent:
        wait_until(lambda: mgr.active_state("sp-slowstart.service") == "activating", 10, "start")
        asked = time.monotonic()
        assert agent.stop(timeout=20) == 0
        took = time.monotonic() - asked
    assert mgr.active_state("sp-slowstart.service") == "active"
    assert took < 10, f"the stop took {took:.1f}s"
    assert "stopped cleanly; 0 actions pending" in agent.output()
