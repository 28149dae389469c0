"""The real agent on a host having a bad day (issue: survive the host's bad day): its state
directory on a file system that fills up or goes read-only. Supervision must go on."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess, cli, free_port, journal_rows, status, wait_until
from tests.brokers import PostRecorder
from tests.needs import unavailable
from tests.sysmgr import SystemdUser
from tests.system.test_notify import Listener
from tests.system.test_systemd_agent import kill_and_await_restart

pytestmark = pytest.mark.systemd
UNIT = "sp-trouble.service"


@contextlib.contextmanager
def small_fs(where: Path, size: str = "3m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (root only)."""
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                   check=True)  # fmt: skip
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(fs: Path) -> Path:
    """Fill the file system to the last byte."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 512, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def goals(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "goals.yaml"
    path.write_text(
        "apiVersion: setpoint/v1\n"
        f"services:\n  trouble: {{unit: {UNIT}}}\n"
        f"sinks:\n  hook: {{webhook: {{url: 'http://127.0.0.1:{port}/hook'}}}}\n"
    )
    return path


def degraded_alerts(hook: PostRecorder) -> list[str]:
    return [b["status"] for b in hook.bodies() if b["labels"]["alertname"] == "JournalDegraded"]


def test_supervision_goes_on_while_the_disk_is_full(
    systemd_user: SystemdUser, tmp_path: Path
) -> None:
    mgr = systemd_user
    mgr.write_unit(UNIT, "[Service]\nExecStart=/bin/sleep infinity\n")
    mgr.daemon_reload()
    port = free_port()
    hook = PostRecorder(port)
    notify = Listener(str(tmp_path / "notify"))
    with small_fs(tmp_path / "state") as state, contextlib.ExitStack() as cleanup:
        cleanup.callback(hook.close)
        cleanup.callback(notify.close)
        env = {**mgr.env, "NOTIFY_SOCKET": notify.address}
        goal_file = goals(tmp_path, port)
        agent = cleanup.enter_context(AgentProcess(goal_file, state, bus="user", env=env))
        agent.wait_started()
        mgr.wait_for(UNIT, "active", 10)
        broke = time.monotonic()
        filler = fill(state)
        kill_and_await_restart(mgr, UNIT, "a restart while the journal cannot write")
        wait_until(lambda: "DEGRADED" in agent.output(), 10, "degraded mode")
        to_degraded = time.monotonic() - broke
        assert agent.metric("setpoint_journal_degraded") == 1.0
        for n in range(2):  # restarts go on, each one unjournaled
            mgr.wait_for(UNIT, "active", 10)
            kill_and_await_restart(mgr, UNIT, f"restart {n + 2} while degraded")
        wait_until(lambda: "firing" in degraded_alerts(hook), 10, "JournalDegraded at the hook")
        assert agent.proc.poll() is None, "the agent stopped supervising"
        live = status(state)  # from the agent: the journal lags behind
        assert live["source"] == "agent" and live["journal"]["degraded"]
        assert live["services"]["trouble"]["restarts"] == 3
        text = cli("status", "--state-dir", str(state)).stdout
        assert text.startswith("JOURNAL DEGRADED for "), text
        wait_until(lambda: any(line.startswith("STATUS=DEGRADED: journal cannot write")
                               for line in notify.lines()), 10, "sd_notify STATUS")  # fmt: skip
        mended = time.monotonic()
        filler.unlink()
        wait_until(lambda: "journal writable again" in agent.output(), 15, "the journal back")
        back = time.monotonic() - mended
        assert agent.metric("setpoint_journal_degraded") == 0.0
        assert status(state)["journal"] == {"degraded": False}
        wait_until(lambda: "resolved" in degraded_alerts(hook), 10, "JournalDegraded resolved")
        gaps = [r for r in journal_rows(state) if r["input"]["type"] == "JournalGap"]
        assert len(gaps) == 1 and gaps[0]["input"]["inputs"] >= 3
        assert any(d.endswith("unit jobs") for d in gaps[0]["input"]["done"])
        print(f"\ndisk full: degraded {to_degraded:.2f}s after the trouble began (3 restarts "
              f"while degraded); normal {back:.2f}s after it ended")  # fmt: skip
        assert agent.stop() == 0
        verified = cli("journal", "verify", "--state-dir", str(state))
        assert verified.returncode == 0, verified.stdout + verified.stderr


@contextlib.contextmanager
def ext4(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A small ext4 on a loop device that turns read-only on its first error, as a failing
    disk makes it; the mount point and the device's name (for /sys/fs/ext4)."""
    if os.geteuid() != 0:
        unavailable("a loop device needs root")
    image, where = tmp_path / "disk.img", tmp_path / "state"
    where.mkdir()
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    mounted = subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(where)],
                             capture_output=True, text=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        unavailable(f"no loop device: {mounted.stderr.strip()}")
    try:
        source = subprocess.run(["findmnt", "-no", "SOURCE", str(where)], capture_output=True,
                                text=True, check=True).stdout.strip()  # fmt: skip
        yield where, Path(source).name
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_disk_gone_read_only_loses_nothing(systemd_user: SystemdUser, tmp_path: Path) -> None:
    mgr = systemd_user
    mgr.write_unit(UNIT, "[Service]\nExecStart=/bin/sleep infinity\n")
    mgr.daemon_reload()
    port = free_port()
    hook = PostRecorder(port)
    goal_file = goals(tmp_path, port)
    with ext4(tmp_path) as (state, device), contextlib.ExitStack() as cleanup:
        cleanup.callback(hook.close)
        agent = cleanup.enter_context(AgentProcess(goal_file, state, bus="user", env=mgr.env))
        agent.wait_started()
        mgr.wait_for(UNIT, "active", 10)
        before = journal_rows(state)
        Path(f"/sys/fs/ext4/{device}/trigger_fs_error").write_text("test: disk failing\n")
        kill_and_await_restart(mgr, UNIT, "a restart on a read-only disk")
        wait_until(lambda: "DEGRADED" in agent.output(), 10, "degraded mode")
        mgr.wait_for(UNIT, "active", 10)
        kill_and_await_restart(mgr, UNIT, "a second restart on a read-only disk")
        wait_until(lambda: "firing" in degraded_alerts(hook), 10, "JournalDegraded at the hook")
        assert agent.stop() == 0
        assert "no snapshot at stop" in agent.output()
        subprocess.run(["umount", str(state)], check=True)  # the operator mends the disk
        image = tmp_path / "disk.img"
        subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, check=False)
        subprocess.run(["mount", "-o", "loop", str(image), str(state)], check=True)
        verified = cli("journal", "verify", "--state-dir", str(state))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        kept = journal_rows(state)  # newest first: what was there before is all still there
        assert kept[len(kept) - len(before) :] == before
        again = cleanup.enter_context(AgentProcess(goal_file, state, bus="user", env=mgr.env))
        again.wait_started()
        kill_and_await_restart(mgr, UNIT, "a restart once the disk is mended")
        wait_until(lambda: len(journal_rows(state)) > len(before), 10, "journaling again")
        assert again.stop() == 0
