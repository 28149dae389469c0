"""Several hosts on one machine: network namespaces on a private bridge, and etcd on them.

    switch namespace  <tag>-sw : bridge br0, one veth port v<i> per host
    host namespaces   <tag>-h<i>: eth0 = 10.77.0.<i>/24 (peer of v<i>), lo up

Everything lives inside namespaces named after this run (`sp<pid>x<k>`), so concurrent runs
never collide and nothing is added to the machine's own network. `cut(host)` sets the host's
eth0 down inside its namespace (the host keeps its loopback and its processes); `heal(host)`
sets it up again. `close()` kills every process left in the namespaces and deletes them; it
runs from a context manager, so a failing or interrupted (Ctrl-C) test cleans up too; the
processes run in their own sessions, so a Ctrl-C reaches pytest only and the teardown stops
them in order. Namespaces (and processes) left by a run that was killed outright are swept by
the next run.

`EtcdCluster` starts one Debian `etcd` member per host (data in tmpfs when there is one) and
waits until every member answers `endpoint health`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.needs import unavailable

SUBNET = "10.77.0"
ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
_RUNS = itertools.count()
_TAG = re.compile(r"^sp(\d+)x\d+-")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args], capture_output=True, text=True, check=check, timeout=15
    )  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_namespace(ns: str) -> None:
    """SIGKILL whatever still runs in `ns` (all started by this helper), then delete it."""
    for _ in range(50):
        pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    _ip("netns", "del", ns, check=False)


def _scratch() -> Path:
    """Where etcd keeps its data: tmpfs when there is one (fsync is cheap there)."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def sweep_stale() -> None:
    """Delete namespaces and etcd data of earlier runs whose pytest process is gone."""
    for ns in _namespaces():
        found = _TAG.match(ns)
        if found and not _alive(int(found.group(1))):
            _kill_namespace(ns)
    for path in _scratch().glob("sp*x*-etcd-*"):
        found = _TAG.match(path.name)
        if found and not _alive(int(found.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def require() -> None:
    """Skip (fail under CI=true) unless this machine can make namespaces."""
    if os.geteuid() != 0:
        unavailable("network namespaces need root")
    if shutil.which("ip") is None:
        unavailable("`ip` not found (Debian package iproute2)")


class Hosts:
    """`n` hosts h1..hn in network namespaces on one bridge; see the module docstring."""

    def __init__(self, n: int) -> None:
        require()
        sweep_stale()
        self.tag = f"sp{os.getpid()}x{next(_RUNS)}"
        self.names = [f"h{i}" for i in range(1, n + 1)]
        self.switch = f"{self.tag}-sw"
        self._made: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        try:
            self._build()
        except subprocess.CalledProcessError as err:
            self.close()
            unavailable(f"cannot build network namespaces: {err.cmd}: {err.stderr.strip()}")

    def _build(self) -> None:
        sw = self.switch
        _ip("netns", "add", sw)
        self._made.append(sw)
        _ip("-n", sw, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        _ip("-n", sw, "link", "set", "br0", "up")
        for i, name in enumerate(self.names, start=1):
            ns = self.ns(name)
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", sw, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0",
                "netns", ns)  # fmt: skip
            _ip("-n", sw, "link", "set", f"v{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(name)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def ns(self, name: str) -> str:
        """The namespace of host `name`."""
        return f"{self.tag}-{name}"

    def addr(self, name: str) -> str:
        """The host's address on the bridge."""
        return f"{SUBNET}.{self.names.index(name) + 1}"

    def argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """`argv` run inside host `name` (for subprocess or asyncio.create_subprocess_exec)."""
        return ["ip", "netns", "exec", self.ns(name), *argv]

    def run(
        self, name: str, argv: Sequence[str], *, timeout: float = 15, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in host `name` and wait for it."""
        return subprocess.run(
            self.argv(name, argv), capture_output=True, text=True, check=check, timeout=timeout
        )

    def popen(self, name: str, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Start `argv` in host `name`, output to `log`; killed by close() at the latest."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                self.argv(name, argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True,  # a Ctrl-C is for pytest; close() stops these in order
            )  # fmt: skip
        self._procs.append(proc)
        return proc

    def cut(self, name: str) -> None:
        """Take host `name` off the network (its eth0 down, inside its namespace)."""
        _ip("-n", self.ns(name), "link", "set", "eth0", "down")

    def heal(self, name: str) -> None:
        """Put host `name` back on the network."""
        _ip("-n", self.ns(name), "link", "set", "eth0", "up")

    def close(self) -> None:
        """Stop every process started here (TERM, then KILL), delete the namespaces."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for ns in reversed(self._made):
            _kill_namespace(ns)
        self._made.clear()


@contextlib.contextmanager
def hosts(n: int) -> Iterator[Hosts]:
    """`n` namespace hosts, torn down however the block ends."""
    made = Hosts(n)
    try:
        yield made
    finally:
        made.close()


class EtcdCluster:
    """One etcd member per host (`ETCD`, Debian etcd-server), client port 2379 on each."""

    def __init__(self, net: Hosts, workdir: Path) -> None:
        for binary, package in ((ETCD, "etcd-server"), (ETCDCTL, "etcd-client")):
            if not Path(binary).exists():
                unavailable(f"{binary} not installed (Debian package {package})")
        self.net = net
        self.dir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.initial = ",".join(f"{n}=http://{net.addr(n)}:2380" for n in net.names)

    def url(self, name: str) -> str:
        return f"http://{self.net.addr(name)}:2379"

    def endpoints(self, first: str | None = None) -> list[str]:
        """Every member's client URL, `first`'s own member first."""
        names = sorted(self.net.names, key=lambda n: n != first)
        return [self.url(n) for n in names]

    def log(self, name: str) -> Path:
        return self.dir / f"etcd-{name}.log"

    def start(self, name: str) -> None:
        """Start (or restart, on its existing data) the member of host `name`."""
        addr = self.net.addr(name)
        data = self.dir / f"etcd-{name}"
        state = "existing" if data.exists() else "new"
        self.procs[name] = self.net.popen(name, [
            ETCD, "--name", name, "--data-dir", str(data),
            "--listen-client-urls", f"http://{addr}:2379,http://127.0.0.1:2379",
            "--advertise-client-urls", f"http://{addr}:2379",
            "--listen-peer-urls", f"http://{addr}:2380",
            "--initial-advertise-peer-urls", f"http://{addr}:2380",
            "--initial-cluster", self.initial, "--initial-cluster-state", state,
            "--initial-cluster-token", self.net.tag,
            "--pre-vote",  # a member back from a cut does not unseat the leader (default in 3.5)
            "--heartbeat-interval", "100", "--election-timeout", "1000",
            "--logger", "zap", "--log-outputs", "stderr",
        ], self.log(name))  # fmt: skip

    def kill(self, name: str) -> None:
        """SIGKILL the member of host `name` (its data stays; `revive()` starts it again)."""
        proc = self.procs[name]
        proc.kill()
        proc.wait()

    def revive(self) -> None:
        """Start again every member that is not running."""
        for name in self.net.names:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                self.start(name)

    def healthy(self, name: str) -> bool:
        """Whether `name`'s member answers a quorum read."""
        done = self.net.run(
            name, [ETCDCTL, "--endpoints", self.url(name), "--command-timeout", "1s",
                   "endpoint", "health"], check=False, timeout=10,
        )  # fmt: skip
        return done.returncode == 0

    def wait_healthy(self, timeout: float = 30.0) -> float:
        """Wait until every member is healthy; the seconds it took."""
        start = time.monotonic()
        pending = set(self.net.names)
        while pending:
            for name in sorted(pending):
                proc = self.procs.get(name)
                if proc is not None and proc.poll() is not None:
                    tail = self.log(name).read_text(errors="replace")[-2000:]
                    raise AssertionError(f"etcd on {name} exited {proc.returncode}:\n{tail}")
                if self.healthy(name):
                    pending.discard(name)
            if pending and time.monotonic() - start > timeout:
                raise AssertionError(f"etcd members {sorted(pending)} not healthy in {timeout}s")
            if pending:
                time.sleep(0.1)
        return time.monotonic() - start


@contextlib.contextmanager
def etcd_cluster(net: Hosts, timeout: float = 30.0) -> Iterator[EtcdCluster]:
    """An etcd member on every host of `net`, healthy; its data in a temp dir (tmpfs if any)."""
    with tempfile.TemporaryDirectory(prefix=f"{net.tag}-etcd-", dir=_scratch()) as tmp:
        cluster = EtcdCluster(net, Path(tmp))
        try:
            for name in net.names:
                cluster.start(name)
            cluster.wait_healthy(timeout)
            yield cluster
        finally:
            for proc in cluster.procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
