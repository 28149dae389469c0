"""N HTTP checks at a 1 s interval, side by side, against the same local server, in one run.

    Setpoint         the real agent (`python -m agent run --bus none`), N generated probes
    Setpoint, no keep-alive
                     the same with probes.KEEPALIVE off: a new connection for every check, as
                     the peers make (Setpoint keeps them alive between rounds by default)
    blackbox         prometheus-blackbox-exporter, driven by a real Prometheus scraping /probe
                     for N targets (scrape_interval 1s, targets relabeled to __param_target)
    Monit            N `check host ... if failed port protocol http` at `set daemon 1`

For each N (default 100 and 1,000) the peers run one after another against one target server
(bench/peers/server.py, its own process), each with its own config in a temp dir. Each one
warms up until the server has seen all N of its paths, then is measured for WINDOW seconds:
    CPU per check    utime+stime of the whole process tree (/proc) / checks the server received
    checks/s         requests the server received from it per second (N/s is the schedule)
    lateness p99     per target, server-side arrival interval minus 1 s (works for them all;
                     a checker that falls behind shows it here and in checks/s)
    RSS              of the whole tree at the end
The Prometheus column counts blackbox_exporter and Prometheus together (that is what drives
the probes); the exporter alone is printed too. Env: SETPOINT_BENCH_PEERS_WINDOW (seconds,
default 20), SETPOINT_BENCH_PEERS_N (default "100,1000"), SETPOINT_BENCH_PEERS_ONLY (checkers
whose name contains one of these comma-separated words: setpoint (both), setpoint-fresh,
blackbox, monit; default all; without Setpoint the ratios are to the first).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import procstat
from tests.agentproc import ROOT, free_port, wait_until

WINDOW = float(os.environ.get("SETPOINT_BENCH_PEERS_WINDOW", "20"))
SIZES = [int(n) for n in os.environ.get("SETPOINT_BENCH_PEERS_N", "100,1000").split(",")]
ONLY = [w.lower() for w in os.environ.get("SETPOINT_BENCH_PEERS_ONLY", "").split(",") if w]
SETTLE = 3.0
"""Seconds after every target was first checked before the window opens (first rounds are
spread over the interval; Monit's first cycle may run long)."""


@dataclass
class Peer:
    """A running checker: its processes, the prefix of its targets' paths."""

    name: str
    prefix: str
    procs: list[subprocess.Popen[bytes]]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


@dataclass
class Figures:
    cpu_per_check_us: float
    checks_per_s: float
    late_p99_ms: float
    rss_mb: float
    extra: str = ""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def get(port: int, path: str) -> object:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def target_server() -> Iterator[int]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.peers.server", str(port)]
    proc = subprocess.Popen(argv, cwd=ROOT)
    try:
        wait_until(lambda: _answers(port), 20, "the target server")
        yield port
    finally:
        stop([proc])


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError):
        get(port, "/_seen?prefix=/")
        return True
    return False


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spawn(argv: list[str], log: Path, **kwargs: object) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload, no-any-return]


def start_setpoint(work: Path, port: int, n: int) -> Peer:
    return Peer("Setpoint", "/sp/", [_agent(work, port, n, "/sp/", ["-m", "agent"])])


FRESH = "import agent.adapters.probes as p; p.KEEPALIVE = False; import runpy; runpy.run_module('agent', run_name='__main__')"  # noqa: E501
"""`python -m agent` with a new connection for every HTTP check."""


def start_setpoint_fresh(work: Path, port: int, n: int) -> Peer:
    proc = _agent(work, port, n, "/spf/", ["-c", FRESH])
    return Peer("Setpoint, no keep-alive", "/spf/", [proc])


def _agent(work: Path, port: int, n: int, prefix: str, how: list[str]) -> subprocess.Popen[bytes]:
    probes = "".join(
        f"  p{i}: {{http: {{url: 'http://127.0.0.1:{port}{prefix}{i}'}}, interval: 1s}}\n"
        for i in range(n)
    )
    goals = work / "goals.yaml"
    goals.write_text(f"apiVersion: setpoint/v1\nprobes:\n{probes}")
    argv = [
        sys.executable, *how, "run", "--goals", str(goals), "--bus", "none",
        "--state-dir", str(work / "state"), "--tick", "1s", "--log-level", "warning",
        "--listen", f"127.0.0.1:{free_port()}",
    ]  # fmt: skip
    return spawn(argv, work / "agent.log", cwd=ROOT)


def start_blackbox(work: Path, port: int, n: int) -> Peer:
    bb_port, prom_port = free_port(), free_port()
    (work / "blackbox.yml").write_text(
        "modules:\n  http_2xx:\n    prober: http\n    timeout: 1s\n"
        "    http: {preferred_ip_protocol: ip4}\n"
    )
    targets = ", ".join(f"'127.0.0.1:{port}/bb/{i}'" for i in range(n))
    (work / "prometheus.yml").write_text(f"""global: {{scrape_interval: 1s, scrape_timeout: 1s}}
scrape_configs:
  - job_name: blackbox
    metrics_path: /probe
    params: {{module: [http_2xx]}}
    static_configs: [{{targets: [{targets}]}}]
    relabel_configs:
      - {{source_labels: [__address__], target_label: __param_target}}
      - {{source_labels: [__param_target], target_label: instance}}
      - {{target_label: __address__, replacement: '127.0.0.1:{bb_port}'}}
""")
    exporter = spawn(
        ["/usr/bin/prometheus-blackbox-exporter", f"--config.file={work / 'blackbox.yml'}",
         f"--web.listen-address=127.0.0.1:{bb_port}", "--log.level=warn"],
        work / "blackbox.log",
    )  # fmt: skip
    prometheus = spawn(
        ["/usr/bin/prometheus", f"--config.file={work / 'prometheus.yml'}",
         f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
         "--log.level=warn"],
        work / "prometheus.log",
    )  # fmt: skip
    return Peer("blackbox+Prometheus", "/bb/", [exporter, prometheus])


def start_monit(work: Path, port: int, n: int) -> Peer:
    checks = "".join(
        f"check host t{i} with address 127.0.0.1\n"
        f'  if failed port {port} protocol http request "/mon/{i}" then alert\n'
        for i in range(n)
    )
    control = work / "monitrc"
    control.write_text(
        f"set daemon 1\nset logfile {work / 'monit.log'}\nset idfile {work / 'monit.id'}\n"
        f"set statefile {work / 'monit.state'}\nset pidfile {work / 'monit.pid'}\n{checks}"
    )
    control.chmod(0o600)
    argv = ["/usr/bin/monit", "-I", "-c", str(control)]
    return Peer("Monit", "/mon/", [spawn(argv, work / "monit.out")])


STARTERS = [start_setpoint, start_setpoint_fresh, start_blackbox, start_monit]
NAMES = {
    start_setpoint: "setpoint",
    start_setpoint_fresh: "setpoint-fresh",
    start_blackbox: "blackbox+prometheus",
    start_monit: "monit",
}


def chosen() -> list[Callable[[Path, int, int], Peer]]:
    """The starters SETPOINT_BENCH_PEERS_ONLY selects (all without it)."""
    return [s for s in STARTERS if not ONLY or any(w in NAMES[s] for w in ONLY)]


def measure(peer: Peer, port: int, n: int) -> Figures:
    """Wait for every target to be checked, settle, then measure one window."""
    seen = f"/_seen?prefix={peer.prefix}"
    wait_until(lambda: _alive(peer) and get(port, seen) == n, 120, f"{peer.name}: {n} targets")
    time.sleep(SETTLE)
    first = [peer.procs[0].pid]  # the checker itself (the exporter, beside its driver)
    cpu0, own0, t0 = (
        procstat.cpu_seconds(peer.pids()),
        procstat.cpu_seconds(first),
        time.monotonic(),
    )
    time.sleep(WINDOW)
    cpu1, own1, t1 = (
        procstat.cpu_seconds(peer.pids()),
        procstat.cpu_seconds(first),
        time.monotonic(),
    )
    arrivals = get(port, f"/_arrivals?prefix={peer.prefix}&since={t0}&until={t1}")
    assert isinstance(arrivals, dict)
    count = max(1, sum(len(times) for times in arrivals.values()))
    excess = [b - a - 1.0 for times in arrivals.values() for a, b in itertools.pairwise(times)]
    extra = ""
    if len(peer.procs) > 1:
        extra = (
            f"exporter alone: {(own1 - own0) / count * 1e6:.0f} µs/check, "
            f"RSS {procstat.rss_mb(first):.0f} MB"
        )
    return Figures(
        (cpu1 - cpu0) / count * 1e6, count / (t1 - t0), pct(excess, 0.99) * 1000,
        procstat.rss_mb(peer.pids()), extra,
    )  # fmt: skip


def _alive(peer: Peer) -> bool:
    for proc in peer.procs:
        assert proc.poll() is None, f"{peer.name}: {proc.args!r} exited with {proc.returncode}"
    return True


def run_size(port: int, n: int) -> dict[str, Figures]:
    results: dict[str, Figures] = {}
    for start in chosen():
        with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
            peer = start(Path(tmp), port, n)
            try:
                results[peer.name] = measure(peer, port, n)
            finally:
                stop(peer.procs)
    return results


def report(n: int, results: dict[str, Figures]) -> None:
    base = results.get("Setpoint", next(iter(results.values())))
    print(f"peers: {n} HTTP checks at 1 s, {WINDOW:g} s window each (schedule: {n}/s)")
    print(
        f"  {'checker':<24} {'CPU/check':>10} {'x Setpoint':>10} {'checks/s':>9} "
        f"{'late p99':>9} {'RSS':>7} {'x Setpoint':>10}"
    )
    for name, f in results.items():
        print(
            f"  {name:<24} {f.cpu_per_check_us:>7.0f} µs "
            f"{f.cpu_per_check_us / base.cpu_per_check_us:>10.2f} "
            f"{f.checks_per_s:>9.0f} {f.late_p99_ms:>6.1f} ms {f.rss_mb:>4.0f} MB "
            f"{f.rss_mb / base.rss_mb:>10.2f}"
        )
        if f.extra:
            print(f"  {'':<24} ({f.extra})")


def main() -> None:
    with target_server() as port:
        for n in SIZES:
            report(n, run_size(port, n))


if __name__ == "__main__":
    main()
