"""systemd/setpoint.service: static checks (systemd-analyze) and the unit itself, run end to end
under the private systemd user manager as a user-manager variant of the very same file.

The variant (`user_variant`) keeps every hardening line and changes only what a user manager
cannot do or what would point outside the test:

- `User=`/`Group=` are dropped: a user manager runs units as its own user only (switching
  user is PID 1's privilege), and the `setpoint` user exists only after `make install`.
- `StateDirectory=`/`ConfigurationDirectory=` (and their modes) are dropped: in a user manager
  they resolve under the manager's $HOME (~/.local/state, ~/.config), outside the test; the
  test passes its own --state-dir/--goals instead and makes them visible with `BindPaths=`
  (PrivateTmp= hides the real /tmp, where pytest keeps them); the checkout, with its venv, is
  bound read-only for the same reason (CI clones it under /tmp).
- `ProtectHome=yes` becomes `ProtectHome=tmpfs` plus a read-only bind of the interpreter's
  prefix, only when the test interpreter lives under /root or /home (pyenv does); production
  uses /opt/setpoint/venv.
- Added: the bus address, a log file, WorkingDirectory=, LimitCORE=0 (the watchdog's SIGABRT
  must not leave cores around) and a short WatchdogSec=.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.agentproc import ROOT, free_port, metric, status, wait_until
from tests.needs import tool
from tests.sysmgr import SystemdUser

UNIT = ROOT / "systemd" / "setpoint.service"
DROPPED = (
    "User",
    "Group",
    "StateDirectory",
    "StateDirectoryMode",
    "ConfigurationDirectory",
    "ConfigurationDirectoryMode",
)
SLEEPER = "[Service]\nExecStart=/bin/sleep infinity\n"
SANDBOX_PROBES = """\
probes:
  own-http: {http: {url: "http://127.0.0.1:PORT/healthz"}, interval: 200ms}
  child: {exec: {argv: [/bin/sh, -c, "touch STATEDIR/w && ! touch REPO/.sandbox 2>/dev/null"]},
          interval: 200ms}
domains:  # CEL under MemoryDenyWriteExecute= and the syscall filter
  Up:
    state:
      a_up: {type: bool, default: false, bind: 'services["a"].healthy'}
    goal: a_up
"""


def analyze_or_skip() -> str:
    return tool("systemd-analyze", "systemd")


def test_exposure_is_at_most_2() -> None:
    tool = analyze_or_skip()
    out = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for setpoint\.service: (\d+\.\d+)", out.stdout)
    assert found, out.stdout + out.stderr
    assert float(found.group(1)) <= 2.0, out.stdout


def test_verify_is_clean(tmp_path: Path) -> None:
    """`verify` wants ExecStart= to exist: check a copy pointing at a binary that does."""
    tool = analyze_or_skip()
    text = UNIT.read_text()
    assert "ExecStart=/opt/setpoint/venv/bin/setpoint run " in text
    copy = tmp_path / "setpoint.service"
    copy.write_text(text.replace("/opt/setpoint/venv/bin/setpoint", "/bin/true"))
    out = subprocess.run(
        [tool, "verify", "--man=no", str(copy)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr


def test_unit_contract() -> None:
    keys = dict(
        line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line[:40]
    )  # the last value of each key is enough for these
    assert keys["Type"] == "notify" and keys["NotifyAccess"] == "main"
    assert keys["WatchdogSec"] == "30s" and keys["Restart"] == "on-failure"
    assert keys["ExecReload"] == """/bin/sh -c 'kill -s HUP "$MAINPID"'"""
    assert keys["User"] == "setpoint" and "DynamicUser" not in keys
    assert keys["StateDirectory"] == "setpoint" and keys["ConfigurationDirectory"] == "setpoint"
    assert keys["KillMode"] == "mixed"  # SIGTERM to the agent only: in-flight effects finish


def user_variant(
    text: str,
    *,
    goals: Path,
    state: Path,
    port: int,
    watchdog: str,
    mgr: SystemdUser,
    extra: str = "",
) -> str:
    """The production unit rewritten for the private user manager (see the module docstring)."""
    python = Path(sys.executable)
    prefix = python.resolve().parents[1]
    hidden = any(prefix.is_relative_to(p) for p in ("/root", "/home", "/run/user"))
    out: list[str] = []
    for original in text.splitlines():
        key, line = original.split("=", 1)[0], original
        if key in DROPPED:
            continue
        if key == "ExecStart":
            line = (
                line.replace("/opt/setpoint/venv/bin/setpoint", f"{python} -m agent")
                .replace("/etc/setpoint/goals.d", str(goals))
                .replace("/var/lib/setpoint", str(state))
                + f" --bus user --listen 127.0.0.1:{port} --tick 100ms --log-format text"
            )
        elif key == "WatchdogSec":
            line = f"WatchdogSec={watchdog}"
        elif key == "ProtectHome" and hidden:
            line = f"ProtectHome=tmpfs\nBindReadOnlyPaths={prefix}"
        out.append(line)
        if line == "[Service]":
            out += [
                f"Environment=DBUS_SESSION_BUS_ADDRESS={mgr.bus_address}",
                f"WorkingDirectory={ROOT}",
                f"BindReadOnlyPaths={ROOT}",  # the checkout and its venv, even under /tmp
                f"BindPaths={mgr.runtime_dir} {state.parent}",
                f"StandardOutput=append:{state.parent / 'agent.log'}",
                "StandardError=inherit",
                "LimitCORE=0",
                *extra.splitlines(),
            ]
    return "\n".join(out) + "\n"


@dataclass
class Installed:
    """One variant of the unit installed in the private manager."""

    mgr: SystemdUser
    name: str
    dir: Path
    port: int

    @property
    def goals(self) -> Path:
        return self.dir / "goals"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    def log(self) -> str:
        path = self.dir / "agent.log"
        return path.read_text() if path.exists() else ""

    def show(self, prop: str) -> str:
        return self.mgr.show(self.name, prop)

    def metric(self, name: str) -> float:
        return metric(self.port, name)

    def probe_healthy(self, probe: str) -> bool:
        return self.metric(f'setpoint_probe_healthy{{probe="{probe}"}}') == 1

    def wait_active(self, timeout: float = 30.0) -> None:
        try:
            wait_until(lambda: self.show("ActiveState") == "active", timeout, "active")
        except AssertionError as err:
            raise AssertionError(f"{self.name} not active: {err}\n{self.log()}") from None

    def start(self) -> None:
        """`systemctl start` (Type=notify: active only once READY=1 came)."""
        result = self.mgr.systemctl("start", "--no-block", self.name, check=True)
        assert result.returncode == 0
        self.wait_active()


def install(
    mgr: SystemdUser, tmp: Path, name: str, goals: str, *, watchdog: str = "3s", extra: str = ""
) -> Installed:
    unit = Installed(mgr, name, tmp, free_port())
    (tmp / "goals").mkdir(parents=True)
    text = goals.replace("PORT", str(unit.port)).replace("STATEDIR", str(unit.state))
    (tmp / "goals" / "main.yaml").write_text(text.replace("REPO", str(ROOT)))
    unit_text = user_variant(
        UNIT.read_text(), goals=unit.goals, state=unit.state, port=unit.port,
        watchdog=watchdog, mgr=mgr, extra=extra,
    )  # fmt: skip
    mgr.write_unit(name, unit_text)
    mgr.daemon_reload()
    return unit


def goals_yaml(services: str) -> str:
    return "apiVersion: setpoint/v1\nservices:\n" + services


@pytest.fixture
def unit(systemd_user: SystemdUser, tmp_path: Path) -> Iterator[Installed]:
    systemd_user.write_unit("sp-unit-a.service", SLEEPER)
    systemd_user.write_unit("sp-unit-b.service", SLEEPER)
    inst = install(systemd_user, tmp_path, "setpoint.service", goals_yaml(
        "  a: {unit: sp-unit-a.service, probes: [own-http, child]}\n" + SANDBOX_PROBES
    ))  # fmt: skip
    yield inst
    systemd_user.systemctl("stop", inst.name)  # the agent first: it would restart the others
    systemd_user.systemctl("stop", "sp-unit-a.service", "sp-unit-b.service")


@pytest.mark.systemd
def test_ready_status_watchdog_reload_and_clean_stop(unit: Installed) -> None:
    mgr = unit.mgr
    start = time.monotonic()
    unit.start()
    ready_after = time.monotonic() - start
    log = unit.log()
    assert log.index("systemd: connected to user") < log.index("notify: ready")  # after resync
    mgr.wait_for("sp-unit-a.service", "active", 10)
    want = "1 service: 1 Running; 1/1 goals hold; 0 pending"
    wait_until(lambda: unit.show("StatusText") == want, 10, "STATUS")

    # under the sandbox: loopback TCP (an http probe of its own endpoint) and child processes
    # that may write the state directory and nothing else (ProtectSystem=strict)
    wait_until(lambda: unit.probe_healthy("own-http"), 10, "the http probe to succeed")
    wait_until(lambda: unit.probe_healthy("child"), 10, "the exec probe to succeed")
    assert not (ROOT / ".sandbox").exists()

    first = int(unit.show("WatchdogTimestampMonotonic"))
    wait_until(lambda: int(unit.show("WatchdogTimestampMonotonic")) > first, 5, "a watchdog ping")

    digest = status(unit.state)["goals_digest"]
    (unit.goals / "broken.yaml").write_text("apiVersion: setpoint/v1\nservices:\n  b: {unit: 1\n")
    mgr.systemctl("reload", unit.name, check=True)
    wait_until(lambda: "reload rejected" in unit.log(), 10, "the bad reload to be rejected")
    assert f"{unit.goals / 'broken.yaml'}:" in unit.log()  # file:line:col
    wait_until(lambda: unit.show("ActiveState") == "active", 10, "active after the reload")
    assert status(unit.state)["goals_digest"] == digest
    assert unit.metric("setpoint_config_last_reload_successful") == 0.0

    (unit.goals / "broken.yaml").write_text(goals_yaml("  b: {unit: sp-unit-b.service}\n"))
    mgr.systemctl("reload", unit.name, check=True)
    mgr.wait_for("sp-unit-b.service", "active", 15)  # the new goals are in force
    want = "2 services: 2 Running; 1/1 goals hold; 0 pending"
    wait_until(lambda: unit.show("StatusText") == want, 10, "STATUS")
    assert unit.metric("setpoint_config_last_reload_successful") == 1.0

    mgr.systemctl("stop", unit.name, check=True)
    assert unit.show("ActiveState") == "inactive"  # not "failed"
    assert unit.show("Result") == "success" and unit.show("ExecMainStatus") == "0"
    assert "stopped cleanly" in unit.log()
    assert unit.show("NRestarts") == "0"
    print(f"READY after {ready_after:.2f}s")


@pytest.mark.systemd
def test_sigkill_restart_restores_and_completes_pending_once(
    systemd_user: SystemdUser, tmp_path: Path
) -> None:
    mgr = systemd_user
    runs = tmp_path / "runs"
    mgr.write_unit("sp-unit-job.service", (
        "[Service]\n"
        f"ExecStartPre={sys.executable} -c \"open('{runs}', 'a').write('x')\"\n"
        "ExecStartPre=/bin/sleep 3\nExecStart=/bin/sleep infinity\n"
    ))  # fmt: skip
    unit = install(mgr, tmp_path, "setpoint-kill.service", goals_yaml(
        "  job: {unit: sp-unit-job.service}\n"
    ))  # fmt: skip
    try:
        unit.start()
        wait_until(runs.exists, 15, "the start job to begin")
        pid = mgr.main_pid(unit.name)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: unit.show("NRestarts") == "1", 15, "systemd to restart the agent")
        unit.wait_active()
        assert mgr.main_pid(unit.name) != pid
        assert "started: 1 pending actions restored" in unit.log()
        wait_until(lambda: not status(unit.state)["pending"], 20, "the restored job to complete")
        mgr.wait_for("sp-unit-job.service", "active", 5)
        assert runs.read_text() == "x"  # started once, not twice
    finally:
        mgr.systemctl("stop", unit.name)  # the agent first: it would restart the job unit
        mgr.systemctl("stop", "sp-unit-job.service")


@pytest.mark.systemd
def test_stuck_loop_is_killed_by_the_watchdog_and_restarted(
    systemd_user: SystemdUser, tmp_path: Path
) -> None:
    mgr = systemd_user
    mgr.write_unit("sp-unit-w.service", SLEEPER)
    unit = install(
        mgr, tmp_path, "setpoint-stall.service", goals_yaml("  w: {unit: sp-unit-w.service}\n"),
        watchdog="2s", extra="Environment=SETPOINT_TEST_STALL_AFTER=2",
    )  # fmt: skip
    try:
        unit.start()
        results: set[str] = set()

        def watchdog_restart() -> bool:
            results.add(unit.show("Result"))
            return int(unit.show("NRestarts") or 0) >= 1

        wait_until(watchdog_restart, 30, "the watchdog to kill and systemd to restart the agent")
        assert "watchdog" in results, results
        assert "blocking the event loop now (test hook)" in unit.log()
        unit.wait_active()  # the restarted agent reached READY again
    finally:
        mgr.systemctl("stop", unit.name)  # the agent first: it would restart the unit
        mgr.systemctl("stop", "sp-unit-w.service")
