"""Probes at scale and failover latency, with the real agent in-process and real HTTP servers.

(a) 1,000 HTTP probes at a 1 s interval: agent CPU (target <= 25% of a core), RSS (<= 150 MB),
    probe start lateness p99 (<= 20 ms)
(b) failover: the result that completes the K-th consecutive preference -> route effect
    starting (target p99 <= 10 ms)
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.adapters.effects.web import write_file
from agent.app import Daemon, Options
from agent.core.actions import TrackedAction
from agent.core.inputs import Input, ProbeResult
from tests.agentproc import free_port

PROBES = int(os.environ.get("SETPOINT_BENCH_PROBES", "1000"))
SWITCHES = int(os.environ.get("SETPOINT_BENCH_SWITCHES", "100"))
SERVER = """
import sys
from aiohttp import web
state = {"status": 200}
async def hz(request):
    return web.Response(status=state["status"])
async def flip(request):
    state["status"] = int(await request.text())
    return web.Response()
app = web.Application()
app.router.add_get("/{name}", hz)
app.router.add_post("/flip", flip)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_server(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    time.sleep(1.0)
    return proc


async def run_daemon(goals: Path, work: Path) -> tuple[Daemon, asyncio.Task[int]]:
    daemon = Daemon(Options(goals=(goals,), state_dir=work / "state", bus="none", http_port=0))
    task = asyncio.create_task(daemon.serve())
    while daemon.runtime is None or daemon.prober is None:
        if task.done():  # it failed to start: say why instead of waiting forever
            await task
        await asyncio.sleep(0.01)
    return daemon, task


async def scale(work: Path, port: int) -> dict[str, float]:
    goals = work / "scale.yaml"
    goals.write_text("apiVersion: setpoint/v1\nprobes:\n" + "".join(
        f"  p{i}:\n    http: {{url: 'http://127.0.0.1:{port}/p{i}'}}\n    interval: 1s\n"
        for i in range(PROBES)
    ))  # fmt: skip
    daemon, task = await run_daemon(goals, work)
    assert daemon.prober is not None
    await asyncio.sleep(5)  # warm up: first runs are spread over the interval
    daemon.prober.lateness.clear()
    cpu0, t0 = cpu_seconds(), time.monotonic()
    await asyncio.sleep(30)
    cpu = (cpu_seconds() - cpu0) / (time.monotonic() - t0)
    late = list(daemon.prober.lateness)
    rss = rss_mb()
    daemon.request_stop()
    await task
    return {"cpu": cpu * 100, "rss": rss, "late_p99": pct(late, 0.99) * 1000, "runs": len(late)}


async def failover(work: Path, port: int) -> list[float]:
    goals = work / "failover.yaml"
    goals.write_text(f"""apiVersion: setpoint/v1
probes:
  primary-hz: {{http: {{url: 'http://127.0.0.1:{port}/primary'}}, interval: 20ms, failures: 1}}
  replica-hz: {{http: {{url: 'http://127.0.0.1:{port + 1}/replica'}}, interval: 20ms}}
groups:
  db:
    members:
      - {{name: primary, probes: [primary-hz]}}
      - {{name: replica, probes: [replica-hz]}}
    switch_after: 3
    effects: [{{file: {{path: {work / "route"}}}}}]
""")
    daemon, task = await run_daemon(goals, work)
    assert daemon.runtime is not None
    last_result = [0.0]
    delays: list[float] = []

    def tap(inp: Input) -> None:
        if isinstance(inp, ProbeResult):
            last_result[0] = time.perf_counter()

    async def timed_write(action: TrackedAction) -> str:
        delays.append(time.perf_counter() - last_result[0])
        return await write_file(action)

    daemon.runtime.tap = tap
    daemon.runtime.lanes.register("file", timed_write)
    await asyncio.sleep(1)
    for i in range(SWITCHES):
        await flip(port, 503 if i % 2 == 0 else 200)
        target = len(delays) + 1
        async with asyncio.timeout(10):
            while len(delays) < target:  # noqa: ASYNC110 - polling the effect count
                await asyncio.sleep(0.005)
    daemon.request_stop()
    await task
    return delays[1:]  # the first is the initial route, not a switch


async def flip(port: int, status: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = str(status).encode()
    writer.write(
        b"POST /flip HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    await reader.read(1024)
    writer.close()


def main() -> None:
    port = free_port()
    servers = [start_server(port), start_server(port + 1)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "a").mkdir()
            (work / "b").mkdir()
            r = asyncio.run(scale(work / "a", port))
            print(
                f"probes: {PROBES} HTTP probes at 1 s: agent CPU {r['cpu']:.1f}% of a core "
                f"(target <= 25%), RSS {r['rss']:.0f} MB (<= 150), start lateness p99 "
                f"{r['late_p99']:.2f} ms over {r['runs']:.0f} runs (<= 20 ms)"
            )
            delays = asyncio.run(failover(work / "b", port))
            print(
                f"failover: deciding result -> route effect start over {len(delays)} switches: "
                f"p50 {pct(delays, 0.5) * 1000:.2f} ms, p99 {pct(delays, 0.99) * 1000:.2f} ms "
                f"(target p99 <= 10 ms)"
            )
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
