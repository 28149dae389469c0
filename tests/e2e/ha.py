"""High availability on real hosts: three namespace hosts, each with an etcd member and an agent.

    h1  etcd member, agent, the primary  (HTTP on 127.0.0.1:8080 inside h1, /health)
    h2  etcd member, agent, the replica  (HTTP on 127.0.0.1:8080 inside h2, /health)
    h3  etcd member, agent
    switch namespace: the route receiver on 10.77.0.254 (an address on the bridge), which
    every host reaches while its link is up

The agents are real `python -m agent run --bus none` processes (their own state dir and log,
`--etcd-endpoints` with their own member first). The primary, the replica and the route
receiver are HTTP servers in this (the test's) process: their listening sockets are made by a
thread that entered the host's (or the switch's) network namespace, so they live there, while
the test flips health and reads what arrived directly. The same trick reads an agent's
/metrics and /api/v1/status on its namespace's loopback, which works even while the host's
link is cut.

The route receiver records every request (time, path, `X-Setpoint-Fence`,
`X-Setpoint-Action-Id`, body, the sender's address) and REFUSES (409) a request whose fence is
lower than the highest it has accepted; a request without a fence (a local domain's) is
accepted and never moves that floor. `hold(path)` keeps the next request on `path` waiting,
before it is judged, until `release()`: a slow receiver, for killing or cutting off a leader
between its decision and its effect; a held request is judged when released, so a late
request from a deposed leader meets the fence of its successor.

`ha_cluster()` builds all of it and tears it down however the block ends (a failing test, a
Ctrl-C): agents first, then the servers, etcd and the namespaces. Without root or etcd it
skips (fails under CI=true) through `tests.needs.unavailable`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from tests.e2e.netns import SUBNET, EtcdCluster, Hosts, etcd_cluster, hosts

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(os.environ.get("SETPOINT_E2E_SRC") or ROOT)  # the tree the agents run from
RECEIVER_ADDR = f"{SUBNET}.254"
RECEIVER_PORT = 8000
SERVICE_PORT = 8080
AGENT_PORT = 9477
TTL = 2
T = TypeVar("T")
_CHATTER = re.compile(r"switching to endpoint|watch: etcd|publishing facts: etcd|renewal failed")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")

# -- running code inside a network namespace -----------------------------------------------

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_executors: dict[str, ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()


def _enter(ns: str) -> None:
    """Move the calling thread into network namespace `ns` (setns is per thread)."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def in_ns(ns: str, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on a thread that lives in network namespace `ns` (sockets it makes are there)."""
    with _executors_lock:
        pool = _executors.get(ns)
        if pool is None:
            pool = _executors[ns] = ThreadPoolExecutor(
                4, thread_name_prefix=f"ns-{ns}", initializer=_enter, initargs=(ns,)
            )
    return pool.submit(fn, *args).result()


def forget_ns(ns: str) -> None:
    """Stop the threads kept for `ns` (before the namespace is deleted)."""
    with _executors_lock:
        pool = _executors.pop(ns, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def ns_get(ns: str, url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET `url` from inside namespace `ns`: (status, body); OSError when nothing answers."""
    return in_ns(ns, _get, url, timeout)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: series (`name{labels}` as written) -> value."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            values[series] = float(value)
    return values


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, every: float = 0.02
) -> T:
    """Poll `predicate` until it returns something truthy (returned); fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


# -- HTTP servers living in a namespace ---------------------------------------------------


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"") -> None:
        with contextlib.suppress(OSError):  # a killed or cut-off client is gone
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


class _Server:
    """A ThreadingHTTPServer whose listening socket lives in namespace `ns`."""

    def __init__(self, ns: str, addr: str, port: int, handler: type[BaseHTTPRequestHandler]):
        def make() -> ThreadingHTTPServer:
            server = ThreadingHTTPServer((addr, port), handler, bind_and_activate=False)
            server.allow_reuse_address = True
            server.daemon_threads = True
            server.server_bind()
            server.server_activate()
            return server

        self.ns = ns
        self.server = in_ns(ns, make)
        setattr(self.server, "owner", self)  # noqa: B010 - handlers find their owner here
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"http-{ns}-{port}",
        )  # fmt: skip
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


class _HealthHandler(_Quiet):
    def do_GET(self) -> None:
        service: HealthService = getattr(self.server, "owner")  # noqa: B009
        healthy = service.answer()
        self._reply(200 if healthy else 503, b"ok\n" if healthy else b"failing\n")


class HealthService(_Server):
    """A service with a /health endpoint whose answer the test flips (`healthy`).

    Every answer is recorded (monotonic time, healthy?), so a benchmark knows when the K-th
    failing answer after a flip went out."""

    def __init__(self, net: Hosts, host: str, port: int = SERVICE_PORT) -> None:
        self.healthy = True
        self.answers: list[tuple[float, bool]] = []
        self._lock = threading.Lock()
        super().__init__(net.ns(host), "127.0.0.1", port, _HealthHandler)

    def answer(self) -> bool:
        with self._lock:
            healthy = self.healthy
            self.answers.append((time.monotonic(), healthy))
            return healthy

    def set_healthy(self, healthy: bool) -> float:
        """Flip the answer; the monotonic time it changed."""
        with self._lock:
            self.healthy = healthy
            return time.monotonic()

    def failing_answer(self, k: int, since: float) -> float | None:
        """When the k-th failing answer at or after `since` went out, if it did."""
        with self._lock:
            failing = [t for t, ok in self.answers if t >= since and not ok]
        return failing[k - 1] if len(failing) >= k else None


@dataclass(frozen=True)
class Request:
    """One request the route receiver got, and what it answered."""

    t: float  # monotonic, when it arrived
    judged: float  # monotonic, when it was accepted or refused (later than t if held)
    path: str
    fence: int | None
    action_id: int | None
    body: str
    peer: str
    status: int  # 200 accepted, 409 refused (stale fence)
    held: bool

    @property
    def accepted(self) -> bool:
        return self.status == 200

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class _ReceiverHandler(_Quiet):
    def do_POST(self) -> None:
        receiver: Receiver = getattr(self.server, "owner")  # noqa: B009
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        fence = self.headers.get("X-Setpoint-Fence")
        action = self.headers.get("X-Setpoint-Action-Id")
        status = receiver.receive(
            self.path, int(fence) if fence else None, int(action) if action else None, body,
            self.client_address[0],
        )  # fmt: skip
        self._reply(status, b'{"ok": true}' if status == 200 else b'{"error": "stale fence"}')

    do_PUT = do_POST


class Receiver(_Server):
    """The route receiver: see the module docstring."""

    def __init__(self, net: Hosts, port: int = RECEIVER_PORT) -> None:
        self.net = net
        self.port = port
        self.requests: list[Request] = []
        self.highest = 0
        self._cond = threading.Condition()
        self._holds: dict[str, int] = {}
        self._gate = threading.Event()
        self._gate.set()
        self.held: list[tuple[float, str, int | None, int | None]] = []
        subprocess.run(
            ["ip", "-n", net.switch, "addr", "add", f"{RECEIVER_ADDR}/24", "dev", "br0"],
            check=True, capture_output=True, timeout=15,
        )  # fmt: skip
        super().__init__(net.switch, RECEIVER_ADDR, port, _ReceiverHandler)

    @property
    def url(self) -> str:
        return f"http://{RECEIVER_ADDR}:{self.port}"

    def node_of(self, peer: str) -> str:
        """The host whose address `peer` is."""
        return next((n for n in self.net.names if self.net.addr(n) == peer), peer)

    def clear(self) -> None:
        """Forget what arrived so far (the fence floor stays)."""
        with self._cond:
            self.requests.clear()
            self.held.clear()

    def reset(self) -> None:
        """Forget what arrived (and the fence floor), release anything held."""
        self.release()
        with self._cond:
            self.requests.clear()
            self.held.clear()
            self._holds.clear()
            self.highest = 0

    def hold(self, path: str, count: int = 1) -> None:
        """Keep the next `count` requests on `path` waiting until `release()`."""
        with self._cond:
            self._holds[path] = self._holds.get(path, 0) + count
            self._gate.clear()

    def release(self) -> None:
        with self._cond:
            self._holds.clear()
            self._gate.set()

    def receive(
        self, path: str, fence: int | None, action_id: int | None, body: str, peer: str
    ) -> int:
        arrived = time.monotonic()
        with self._cond:
            held = self._holds.get(path, 0) > 0
            if held:
                self._holds[path] -= 1
                self.held.append((arrived, path, fence, action_id))
                self._cond.notify_all()
        if held:
            self._gate.wait(60)
        with self._cond:
            stale = fence is not None and fence < self.highest
            if fence is not None and not stale:
                self.highest = fence
            request = Request(arrived, time.monotonic(), path, fence, action_id, body, peer,
                              409 if stale else 200, held)  # fmt: skip
            self.requests.append(request)
            self._cond.notify_all()
        return request.status

    def wait(self, predicate: Callable[[list[Request]], T | None], timeout: float, what: str) -> T:
        """The first truthy `predicate(requests)`, re-evaluated at every request judged."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = predicate(list(self.requests))
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"receiver: no {what} in {timeout}s; got:\n{self.describe()}"
                    )
                self._cond.wait(left)

    def wait_held(self, timeout: float, what: str = "a held request") -> tuple[float, int, int]:
        """The first held request: (arrival time, fence, action id)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.held:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"receiver: no {what} in {timeout}s; got:\n{self.describe()}"
                    )
                self._cond.wait(left)
            t, _, fence, action = self.held[0]
        assert fence is not None and action is not None, self.held[0]
        return t, fence, action

    def on(self, path: str, *, accepted: bool | None = True) -> list[Request]:
        """The requests on `path` (only the accepted ones by default)."""
        with self._cond:
            return [
                r for r in self.requests
                if r.path == path and (accepted is None or r.accepted == accepted)
            ]  # fmt: skip

    def actions(self, path: str, target: str | None = None) -> list[int]:
        """The distinct action ids accepted on `path` (a repeat of an id counts once), in
        order; with `target`, only those whose body says {"target": target}."""
        seen: list[int] = []
        for r in self.on(path):
            if target is not None and (r.json or {}).get("target") != target:
                continue
            key = r.action_id if r.action_id is not None else -len(seen) - 1
            if key not in seen:
                seen.append(key)
        return seen

    def describe(self) -> str:
        base = min((r.t for r in self.requests), default=0.0)
        return (
            "\n".join(
                f"  +{r.t - base:7.3f}s {r.status} {r.path} fence={r.fence} id={r.action_id} "
                f"from={self.node_of(r.peer)} held={r.held} {r.body}"
                for r in self.requests
            )
            or "  (nothing)"
        )


# -- agents ------------------------------------------------------------------------------


@dataclass
class Agent:
    """`python -m agent run` inside host `host`, node name `node`, its files under `workdir`."""

    net: Hosts
    host: str
    node: str
    workdir: Path
    goals: Sequence[Path]
    endpoints: Sequence[str]
    cluster: str
    ttl: int = TTL
    port: int = AGENT_PORT
    extra: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    killed: list[float] = field(default_factory=list)
    mark: int = 0  # `logged` reads the log from this line on (see `set_mark`)

    @property
    def state_dir(self) -> Path:
        return self.workdir / f"state-{self.node}"

    @property
    def log(self) -> Path:
        return self.workdir / f"agent-{self.node}.log"

    @property
    def ns(self) -> str:
        return self.net.ns(self.host)

    def start(self) -> None:
        """Start (or restart on its state dir) the agent."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            "env", "-C", str(SRC), "PYTHONUNBUFFERED=1", f"PYTHONPATH={SRC}",
            sys.executable, "-m", "agent", "run", "--bus", "none",
            *(f"--goals={g}" for g in self.goals),
            "--state-dir", str(self.state_dir), "--listen", f"127.0.0.1:{self.port}",
            "--tick", "100ms", "--log-level", "info", "--log-format", "text",
            "--etcd-endpoints", ",".join(self.endpoints), "--cluster", self.cluster,
            "--node", self.node, "--lease-ttl", str(self.ttl), *self.extra,
        ]  # fmt: skip
        with self.log.open("a") as out:
            out.write(f"==== start (from {SRC}) {time.strftime('%H:%M:%S')} {' '.join(argv)}\n")
        self.started = time.monotonic()
        self.killed.clear()
        self.proc = self.net.popen(self.host, argv, self.log)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> float:
        """SIGKILL (no lease revoke, nothing cleaned up): the monotonic time it was sent."""
        assert self.proc is not None
        now = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.killed.append(now)
        self.proc.wait(10)
        return now

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the agent revokes its lease), SIGKILL after `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self, lines: int = 30) -> str:
        """The last `lines` of its log, without the etcd client's retry chatter."""
        kept = [ln for ln in self._lines() if not _CHATTER.search(ln)]
        return f"--- {self.node} ({self.log}, retry chatter left out):\n" + "\n".join(kept[-lines:])

    def _check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None and not self.killed:
            raise AssertionError(f"agent {self.node} exited {self.proc.returncode}\n{self.tail()}")

    def metrics(self) -> dict[str, float]:
        """Its /metrics ({} while it does not answer)."""
        self._check()
        try:
            status, body = ns_get(self.ns, f"http://127.0.0.1:{self.port}/metrics", 2.0)
        except OSError:
            return {}
        return parse_metrics(body.decode()) if status == 200 else {}

    def api_status(self) -> dict[str, Any]:
        """Its /api/v1/status ({} while it does not answer)."""
        self._check()
        try:
            status, body = ns_get(self.ns, f"http://127.0.0.1:{self.port}/api/v1/status", 2.0)
        except OSError:
            return {}
        data: dict[str, Any] = json.loads(body) if status == 200 else {}
        return data

    def cli(self, *args: str) -> str:
        """`setpoint ARGS --state-dir DIR` (reads the journal; works while it runs)."""
        done = subprocess.run(
            [sys.executable, "-m", "agent", *args, "--state-dir", str(self.state_dir)],
            capture_output=True, text=True, check=False, cwd=ROOT, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, f"setpoint {' '.join(args)}: {done.stderr}"
        return done.stdout

    def cli_status(self) -> dict[str, Any]:
        """`setpoint status --json`."""
        data: dict[str, Any] = json.loads(self.cli("status", "--json"))
        return data

    def history(self) -> list[dict[str, Any]]:
        """Every journaled entry, newest first (`setpoint history --json`)."""
        out = self.cli("history", "--json", "--limit", "100000")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def _lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []

    def set_mark(self) -> None:
        """From now on `logged` reads only lines written after this moment."""
        self.mark = len(self._lines())

    def logged_at(self, pattern: str, since: float = 0.0) -> list[tuple[float, str]]:
        """(UNIX time, line) of its log lines (since the mark) that match `pattern` and were
        written at or after `since` (a UNIX time; the text log's timestamps have ms)."""
        found: list[tuple[float, str]] = []
        for line in self.logged(pattern):
            stamp = _STAMP.match(line)
            if stamp is None:
                continue
            at = time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S"))
            at += int(stamp.group(2)) / 1000
            if at >= since:
                found.append((at, line))
        return found

    def logged(self, pattern: str) -> list[str]:
        """The lines of its log (since the mark) that match `pattern` (a regex)."""
        found = re.compile(pattern)
        return [ln for ln in self._lines()[self.mark :] if found.search(ln)]


def seed001_goals(receiver: str, *, local: bool = True) -> str:
    """Seed 001 across hosts: the cluster's DatabaseRouting over h1's probe, plus (with `local`)
    a local domain that tells the receiver (/local) when this host's own probe flips."""
    text = f"""\
apiVersion: setpoint/v1
probes:
  db-hz: {{http: {{url: "http://127.0.0.1:{SERVICE_PORT}/health"}}, interval: 200ms,
          timeout: 500ms, failures: 2}}
domains:
  DatabaseRouting:
    scope: cluster
    state:
      primary_ok: {{type: bool, default: true, bind: 'nodes["h1"].probes["db-hz"].healthy'}}
      route: {{type: string, default: primary}}
      paged: {{type: bool, default: false}}
    goal: '(primary_ok && route == "primary") || (!primary_ok && route == "replica" && paged)'
    transitions:
      Failover:
        when: '!primary_ok && route == "primary"'
        effects: [{{http: {{url: "{receiver}/route", body: '{{"target": "replica"}}'}}}}]
        set: {{route: replica}}
      Page:
        when: '!primary_ok && !paged'
        effects: [{{http: {{url: "{receiver}/page", body: '{{"page": true}}'}}}}]
        set: {{paged: true}}
      Restore:
        when: 'primary_ok && route == "replica"'
        effects: [{{http: {{url: "{receiver}/route", body: '{{"target": "primary"}}'}}}}]
        set: {{route: primary, paged: false}}
"""
    if local:
        text += f"""\
  LocalWatch:
    state:
      ok: {{type: bool, default: true, bind: 'probes["db-hz"].healthy'}}
      told: {{type: bool, default: true}}
    goal: 'ok == told'
    transitions:
      TellDown:
        when: '!ok && told'
        effects: [{{http: {{url: "{receiver}/local", body: '{{"healthy": false}}'}}}}]
        set: {{told: false}}
      TellUp:
        when: 'ok && !told'
        effects: [{{http: {{url: "{receiver}/local", body: '{{"healthy": true}}'}}}}]
        set: {{told: true}}
"""
    return text


# -- the whole rig ------------------------------------------------------------------------


@dataclass
class HaCluster:
    """Hosts, etcd, the primary/replica services, the route receiver, and the agents."""

    net: Hosts
    etcd: EtcdCluster
    receiver: Receiver
    services: dict[str, HealthService]
    workdir: Path
    agents: dict[str, Agent] = field(default_factory=dict)
    _runs: int = 0

    @property
    def primary(self) -> HealthService:
        return self.services["h1"]

    def start_agents(
        self,
        cluster: str,
        goals: str | None = None,
        *,
        order: Iterable[str] | None = None,
        ttl: int = TTL,
        per_host: int = 1,
    ) -> dict[str, Agent]:
        """Agents in a cluster named `cluster` (its own key space), on `goals` (default: seed
        001 to this receiver), host by host in `order`; stops agents of an earlier start.

        One per host by default, named after it; with `per_host` > 1 the others on host h1
        are h1-2, h1-3, ... (each on its own port: a simulated larger cluster)."""
        self.stop_agents()
        self._runs += 1
        run = self.workdir / f"{self._runs:02d}-{cluster}"
        run.mkdir(parents=True)
        path = run / "goals.yaml"
        path.write_text(goals if goals is not None else seed001_goals(self.receiver.url))
        for host in order or self.net.names:
            self.add_agents(host, range(per_host), cluster, path, run, ttl)
        return self.agents

    def add_agents(
        self, host: str, ordinals: Iterable[int], cluster: str, goals: Path, run: Path, ttl: int
    ) -> None:
        for i in ordinals:
            node = host if i == 0 else f"{host}-{i + 1}"
            agent = Agent(self.net, host, node, run, [goals], self.etcd.endpoints(first=host),
                          cluster, ttl, AGENT_PORT + i)  # fmt: skip
            agent.start()
            self.agents[node] = agent

    def stop_agents(self) -> None:
        """SIGKILL every agent at once: stopped one by one, the last ones would see the first
        ones vanish and act on it (a vanished host reads as down)."""
        for agent in self.agents.values():
            if agent.alive:
                assert agent.proc is not None
                agent.proc.kill()
        for agent in self.agents.values():
            if agent.proc is not None:
                agent.proc.wait(10)
        self.agents = {}

    def received(
        self, predicate: Callable[[list[Request]], list[Request]], timeout: float, what: str
    ) -> list[Request]:
        """`receiver.wait`, failing with the agents' logs."""
        try:
            return self.receiver.wait(predicate, timeout, what)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.tails()}") from None

    def tails(self) -> str:
        return "\n".join(a.tail() for a in self.agents.values())

    def leaders(self, among: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
        """node -> its metrics, for every agent in `among` whose /metrics says it leads."""
        found = {}
        for name in among or list(self.agents):
            m = self.agents[name].metrics()
            if m.get("setpoint_cluster_leader") == 1.0:
                found[name] = m
        return found

    def wait_one_leader(self, among: Sequence[str] | None = None, timeout: float = 30.0) -> str:
        """Until every agent in `among` is healthy on the cluster, exactly one of them leads,
        and every one of them names it in its status; that leader's name."""
        names = list(among or self.agents)

        def settled() -> str | None:
            views = {n: self.agents[n].api_status().get("cluster") or {} for n in names}
            metrics = {n: self.agents[n].metrics() for n in names}
            if not all(v.get("healthy") for v in views.values()):
                return None
            named = {v.get("leader") for v in views.values()}
            leading = [n for n in names if metrics[n].get("setpoint_cluster_leader") == 1.0]
            if len(named) == 1 and leading == [next(iter(named))]:
                return leading[0]
            return None

        try:
            return wait_for(settled, timeout, f"one leader among {names}", every=0.05)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.tails()}") from None

    def wait_domain(
        self, agent: str, predicate: Callable[[dict[str, Any]], object], timeout: float, what: str
    ) -> dict[str, Any]:
        """Until `agent`'s DatabaseRouting (from /api/v1/status) satisfies `predicate`."""

        def check() -> dict[str, Any] | None:
            dom = (self.agents[agent].api_status().get("domains") or {}).get("DatabaseRouting")
            return dom if dom is not None and predicate(dom) else None

        try:
            return wait_for(check, timeout, f"{agent}: DatabaseRouting {what}", every=0.05)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.tails()}") from None

    def mark(self) -> None:
        """Start counting afresh: the receiver forgets what arrived (not its fence floor),
        `fired` counts log lines written from now on."""
        self.receiver.clear()
        for agent in self.agents.values():
            agent.set_mark()

    def fired(self, transition: str) -> dict[str, int]:
        """node -> how many times it logged that `transition` fired (since the mark)."""
        return {
            name: len(agent.logged(rf"transition {transition} fired"))
            for name, agent in self.agents.items()
        }


@contextlib.contextmanager
def ha_cluster(workdir: Path) -> Iterator[HaCluster]:
    """The whole rig (no agents yet: `start_agents`), torn down however the block ends."""
    with hosts(3) as net:
        try:
            with etcd_cluster(net) as etcd:
                receiver = Receiver(net)
                services: dict[str, HealthService] = {}
                rig = HaCluster(net, etcd, receiver, services, workdir)
                try:
                    services["h1"] = HealthService(net, "h1")
                    services["h2"] = HealthService(net, "h2")
                    yield rig
                finally:
                    rig.stop_agents()
                    receiver.release()
                    for server in [*services.values(), receiver]:
                        server.close()
        finally:
            for ns in [net.switch, *(net.ns(n) for n in net.names)]:
                forget_ns(ns)
