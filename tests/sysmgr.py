"""A private `systemd --user` manager for tests (see DESIGN.md section 4).

`unshare -m` runs a small script that mounts a tmpfs on /run/systemd, points XDG_RUNTIME_DIR,
XDG_CONFIG_HOME and DBUS_SESSION_BUS_ADDRESS at fresh directories and execs
`/lib/systemd/systemd --user`; the manager's own dbus.socket provides the bus.

Each manager also gets its own cgroup subtree: without one, every manager treats the cgroup root
as its own, so two managers (two test runs at once) share `/session.slice/dbus.service` and
stopping one kills the other's dbus-daemon and hangs its own stop job. The subtree also lets
`stop()` find and kill every process the manager left behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.agentproc import wait_until
from tests.needs import unavailable

SYSTEMD = "/lib/systemd/systemd"
CGROUP_ROOT = Path("/sys/fs/cgroup")

_SCRIPT = """\
#!/bin/bash
# Runs inside `unshare -m`: private cgroup and /run/systemd, then becomes systemd --user.
set -u
runtime=$1 config=$2 cgroup=$3
shift 3
for hier in "$@"; do
  dir="$hier/$cgroup/init.scope"
  mkdir -p "$dir" 2>/dev/null && echo $$ > "$dir/cgroup.procs" 2>/dev/null \\
    || echo "sysmgr: no private cgroup under $hier" >&2
done
mkdir -p /run/systemd
mount -t tmpfs -o mode=755 tmpfs /run/systemd || exit 90
mkdir -p /run/systemd/system
# PID 1 creates these at boot; a manager running as root masks paths with them (ProtectHome=,
# ProtectKernelTunables=, ProtectKernelLogs=, InaccessiblePaths=...) and fails without them.
mkdir -p -m 0755 /run/systemd/inaccessible && cd /run/systemd/inaccessible \
  && touch reg && mkdir dir && mkfifo fifo && mknod chr c 0 0 && mknod blk b 0 0 \
  && {python} -c 'import os, stat; os.mknod("sock", stat.S_IFSOCK)' \
  && chmod 0000 reg dir fifo chr blk sock && cd / || exit 91
export XDG_RUNTIME_DIR=$runtime XDG_CONFIG_HOME=$config
export DBUS_SESSION_BUS_ADDRESS=unix:path=$runtime/bus
export SYSTEMD_LOG_TARGET=console
exec {systemd} --user
"""

Proc = tuple[int, int]
"""A process as (pid, start time), so a recycled pid is never mistaken for it."""


class SystemdUnavailable(Exception):
    """A private manager cannot be started here (the reason says why)."""


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def alive(proc: Proc) -> bool:
    """True while that very process runs (not a zombie, pid not recycled)."""
    return _start_time(proc[0]) == proc[1]


def _descendants(root: int) -> set[Proc]:
    """Every live process below `root` (walking /proc by parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[Proc] = set()
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if (start := _start_time(pid)) is not None:
            found.add((pid, start))
        todo.extend(children.get(pid, []))
    return found


def _cgroup_hierarchies() -> list[Path]:
    """Mounted cgroup hierarchies to isolate the manager in (cpuset needs setup: skipped)."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mnt, fstype, opts = line.split()[:4]
        if fstype == "cgroup2" or (fstype == "cgroup" and "cpuset" not in opts.split(",")):
            found.append(Path(mnt))
    return found


class SystemdUser:
    """A running private `systemd --user` manager; `stop()` tears it all down."""

    def __init__(self, root: Path, proc: subprocess.Popen[bytes], cgroup: str) -> None:
        self.root = root
        self.proc = proc
        self.cgroup = cgroup
        self.runtime_dir = root / "run"
        self.config_home = root / "config"
        self.unit_dir = self.config_home / "systemd" / "user"
        self.log_file = root / "manager.log"
        self.bus_address = f"unix:path={self.runtime_dir}/bus"
        self.env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "XDG_CONFIG_HOME": str(self.config_home),
            "DBUS_SESSION_BUS_ADDRESS": self.bus_address,
            "SYSTEMD_PAGER": "",
        }
        self.stopped = False

    @classmethod
    def start(cls, timeout: float = 20.0) -> SystemdUser:
        """Start a manager and wait until it owns org.freedesktop.systemd1 on its bus."""
        _check_prerequisites()
        root = Path(tempfile.mkdtemp(prefix="setpoint-systemd-"))
        (root / "run").mkdir(mode=0o700)
        (root / "config" / "systemd" / "user").mkdir(parents=True)
        script = root / "start.sh"
        script.write_text(_SCRIPT.format(systemd=SYSTEMD, python=sys.executable))
        cgroup = f"setpoint-test-{os.getpid()}-{secrets.token_hex(3)}"
        # setpriv: the manager gets SIGTERM (an orderly exit) if the test process dies first.
        argv = ["setpriv", "--pdeathsig", "TERM", "unshare", "-m", "--propagation", "private"]
        argv += ["bash", str(script)]
        argv += [str(root / "run"), str(root / "config"), cgroup]
        argv += [str(h) for h in _cgroup_hierarchies()]
        with (root / "manager.log").open("wb") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )  # fmt: skip
        mgr = cls(root, proc, cgroup)
        try:
            mgr._wait_ready(timeout)
        except BaseException:
            mgr.stop()
            raise
        return mgr

    def _wait_ready(self, timeout: float) -> None:
        """Until `busctl --user list` shows systemd1 owned by a process (not activatable)."""

        def on_the_bus() -> bool:
            if self.proc.poll() is not None:
                raise SystemdUnavailable(
                    f"systemd --user exited with {self.proc.returncode}: {self.log_tail()}"
                )
            out = subprocess.run(
                ["busctl", "--user", "list", "--no-legend", "--no-pager"],
                env=self.env, capture_output=True, text=True, timeout=10, check=False,
            )  # fmt: skip
            return any(
                fields[:1] == ["org.freedesktop.systemd1"] and fields[1].isdigit()
                for fields in (line.split() for line in out.stdout.splitlines())
            )

        try:
            wait_until(on_the_bus, timeout, "systemd --user on its bus", every=0.05)
        except AssertionError as err:
            raise SystemdUnavailable(str(err)) from None

    def log_tail(self, lines: int = 20) -> str:
        """The end of the manager's own log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text().splitlines()[-lines:])
        return ""

    # -- units -------------------------------------------------------------------------------

    def write_unit(self, name: str, text: str) -> Path:
        """Write a unit file (call daemon_reload() afterwards)."""
        path = self.unit_dir / name
        path.write_text(text)
        return path

    def daemon_reload(self) -> None:
        """`systemctl --user daemon-reload`, failing loudly."""
        self.systemctl("daemon-reload", check=True)

    def systemctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run `systemctl --user ARGS` against this manager."""
        return subprocess.run(
            ["systemctl", "--user", "--no-pager", *args],
            env=self.env, capture_output=True, text=True, timeout=30, check=check,
        )  # fmt: skip

    def show(self, unit: str, prop: str) -> str:
        """One property of a unit, as `systemctl show -P` prints it."""
        return self.systemctl("show", "-P", prop, unit, check=True).stdout.strip()

    def main_pid(self, unit: str) -> int:
        """The unit's MainPID (0 when it has none)."""
        return int(self.show(unit, "MainPID") or 0)

    def active_state(self, unit: str) -> str:
        """The unit's ActiveState."""
        return self.show(unit, "ActiveState")

    def wait_for(self, unit: str, state: str, timeout: float = 10.0) -> None:
        """Wait until the unit's ActiveState is `state`; AssertionError on timeout."""
        last = [""]

        def reached() -> bool:
            last[0] = self.active_state(unit)
            return last[0] == state

        try:
            wait_until(reached, timeout, f"{unit} to be {state}")
        except AssertionError as err:
            raise AssertionError(f"{err} (last {last[0]!r})") from None

    # -- teardown ----------------------------------------------------------------------------

    def processes(self) -> set[Proc]:
        """Every live process of this manager: itself, its descendants, its cgroups' members."""
        procs = set()
        if self.proc.poll() is None and (start := _start_time(self.proc.pid)) is not None:
            procs.add((self.proc.pid, start))
            procs |= _descendants(self.proc.pid)
        for pid in self._cgroup_pids():
            if (start := _start_time(pid)) is not None:
                procs.add((pid, start))
        return procs

    def stop(self, timeout: float = 10.0) -> set[Proc]:
        """Stop the manager (SIGTERM: exit.target), kill what is left, remove every trace.

        Returns the processes that survived the orderly exit and had to be killed.
        """
        if self.stopped:
            return set()
        self.stopped = True
        before = self.processes()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        survivors = {p for p in before | self.processes() if alive(p)}
        self._kill(survivors)
        self._remove_cgroups()
        shutil.rmtree(self.root, ignore_errors=True)
        return survivors

    def cgroup_dirs(self) -> list[Path]:
        """This manager's private cgroup subtrees, one per hierarchy."""
        return [h / self.cgroup for h in _cgroup_hierarchies() if (h / self.cgroup).is_dir()]

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for top in self.cgroup_dirs():
            for procs in top.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(line) for line in procs.read_text().split())
        return pids

    def _kill(self, procs: set[Proc], timeout: float = 5.0) -> None:
        """SIGKILL `procs` (and anything in our cgroups) and wait until they are gone."""
        left = set(procs)

        def gone() -> bool:
            nonlocal left
            left = {p for p in left if alive(p)}
            left |= {(pid, s) for pid in self._cgroup_pids() if (s := _start_time(pid))}
            for pid, _ in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return not left

        try:
            wait_until(gone, timeout, "the processes to die", every=0.05)
        except AssertionError:
            raise RuntimeError(
                f"processes of the private manager survived SIGKILL: {left}"
            ) from None

    def _remove_cgroups(self) -> None:
        """Remove our cgroup subtrees, deepest first."""
        for top in self.cgroup_dirs():
            for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise SystemdUnavailable("a private systemd --user manager needs root (unshare -m)")
    for tool in ("unshare", "setpriv", "busctl", "systemctl"):
        if shutil.which(tool) is None:
            raise SystemdUnavailable(f"{tool} not found")
    if not Path(SYSTEMD).exists():
        raise SystemdUnavailable(f"{SYSTEMD} not found (Debian package systemd)")


def start_or_skip() -> SystemdUser:
    """Start a manager; skip the test when that is impossible, but fail under CI=true."""
    try:
        return SystemdUser.start()
    except SystemdUnavailable as err:
        unavailable(f"no private systemd --user manager: {err}")


@contextlib.contextmanager
def running_manager() -> Iterator[SystemdUser]:
    """A manager for the duration of a `with` block."""
    mgr = start_or_skip()
    try:
        yield mgr
    finally:
        mgr.stop()
