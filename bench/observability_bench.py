"""Observability figures.

(a) event -> alert visible on MQTT: an input that fires (or resolves) an alert is submitted to
    a real Runtime (journal commit with fsync included) whose mqtt sink publishes through the
    MQTT link to a real mosquitto; a subscriber on the same broker timestamps arrival
    (target p99 <= 100 ms)
(b) /metrics rendered for a state with 1,000 services and 1,000 probes, with a latency
    histogram observed for every probe (target <= 50 ms)

The journal goes to a temporary directory under $SETPOINT_BENCH_DIR (default: the system's).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import aiomqtt

from agent.adapters.mqtt.config import MqttConfig
from agent.app import wire_outputs
from agent.core.inputs import GoalsLoaded, GoalsRejected, Input, ProbeResult, UnitObserved
from agent.core.spec import AlertSink, GoalSet, ProbeSpec, ServiceSpec
from agent.core.state import State
from agent.core.step import step
from agent.interfaces.metrics import Metrics
from agent.journal.store import Journal
from agent.runtime.loop import Runtime
from tests.brokers import MOSQUITTO, Mosquitto

ALERTS = int(os.environ.get("SETPOINT_BENCH_ALERTS", "200"))
SCALE = 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def alert_latency(broker: Mosquitto, directory: Path) -> list[float]:
    """Seconds from submit to arrival, for `ALERTS` alternating firing/resolved alerts."""
    sink = AlertSink("mq", "mqtt", topic="alerts")
    goals = GoalSet(services=(ServiceSpec("web", "web.service"),), sinks=(sink,), digest="b")
    journal = await Journal.open(directory)
    rt = Runtime(journal, State())
    wired = wire_outputs(rt, MqttConfig("127.0.0.1", broker.port), "bench")
    assert wired.mqtt is not None
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(rt.run(), name="runtime"),
        asyncio.create_task(wired.mqtt.run(stop), name="mqtt"),
    ]
    arrivals: asyncio.Queue[float] = asyncio.Queue()
    rt.submit(GoalsLoaded(goals, time.time()))
    latencies: list[float] = []
    async with aiomqtt.Client("127.0.0.1", broker.port) as sub:
        await sub.subscribe("setpoint/bench/alerts/#", qos=1)

        async def listen() -> None:
            async for _message in sub.messages:
                arrivals.put_nowait(time.perf_counter())

        listener = asyncio.create_task(listen(), name="subscriber")
        assert await wired.mqtt.wait_connected(10), "the MQTT link did not connect"
        for i in range(ALERTS + 10):
            event: Input = (
                GoalsRejected(("bench",), time.time()) if i % 2 == 0
                else GoalsLoaded(goals, time.time())
            )  # fmt: skip
            started = time.perf_counter()
            rt.submit(event)
            arrived = await asyncio.wait_for(arrivals.get(), 10)
            if i >= 10:  # warm-up
                latencies.append(arrived - started)
            await asyncio.sleep(0.005)
        listener.cancel()
    stop.set()
    rt.stop()
    await asyncio.gather(*tasks)
    await rt.settle(5)
    await wired.sinks.close()
    await journal.close()
    return latencies


def big_state() -> State:
    probes = tuple(ProbeSpec(f"p{i}", "http", url="http://127.0.0.1:1/") for i in range(SCALE))
    services = tuple(
        ServiceSpec(f"svc{i}", f"svc{i}.service", probes=(f"p{i}",)) for i in range(SCALE)
    )
    state, _ = step(State(), GoalsLoaded(GoalSet(services=services, probes=probes), 0.0))
    for i in range(SCALE):
        state, _ = step(state, UnitObserved(f"svc{i}.service", "active", "running", 1.0))
        state, _ = step(state, ProbeResult(f"p{i}", i % 7 != 0, 0.01 + i * 1e-5, 2.0))
    return state


def render_times(runs: int = 30) -> tuple[list[float], int]:
    state = big_state()
    metrics = Metrics(lambda: state, lambda: 100.0)
    for i in range(SCALE):
        metrics.observe_probe(ProbeResult(f"p{i}", True, 0.01 + i * 1e-5, 2.0))
    size = len(metrics.render())
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        metrics.render()
        times.append(time.perf_counter() - started)
    return times, size


def main() -> None:
    logger = logging.getLogger("setpoint")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        measure()
    finally:
        logger.setLevel(level)  # later benches (flapping) log as the agent does


def measure() -> None:
    times, size = render_times()
    print(
        f"/metrics, {SCALE} services + {SCALE} probes: median {statistics.median(times) * 1e3:.1f}"
        f" ms, p99 {pct(times, 0.99) * 1e3:.1f} ms, {size / 1024:.0f} KiB (target <= 50 ms)"
    )
    if not Path(MOSQUITTO).exists():
        print("event -> alert on MQTT: skipped (mosquitto not installed)")
        return
    base = os.environ.get("SETPOINT_BENCH_DIR")
    with tempfile.TemporaryDirectory(prefix="setpoint-bench-", dir=base) as tmp:
        broker = Mosquitto(Path(tmp) / "broker")
        try:
            lat = asyncio.run(alert_latency(broker, Path(tmp)))
        finally:
            broker.stop()
    print(
        f"event -> alert on MQTT ({len(lat)} alerts, journal fsync included, "
        f"{socket.gethostname()}): p50 {pct(lat, 0.5) * 1e3:.1f} ms, "
        f"p99 {pct(lat, 0.99) * 1e3:.1f} ms, max {max(lat) * 1e3:.1f} ms (target p99 <= 100 ms)"
    )


if __name__ == "__main__":
    main()
