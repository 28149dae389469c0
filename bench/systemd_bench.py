"""Reaction to a killed unit, against systemd's own Restart=always floor; and idle cost at scale.

(a) D-Bus signal received -> restart job issued inside the agent (target p99 <= 20 ms)
(b) kill -9 -> unit active again, end to end, versus an identical unit restarted by systemd
    itself (Restart=always, RestartSec=0), measured the same way in the same run (ratio <= 1),
    and versus one restarted by the least a D-Bus client can do (bench/dbus_restarter.py)
(c) 1,000 watched units, nothing changing: agent CPU (< 1% of a core) and RSS (< 100 MB)
(d) could a client hear of a death sooner than the signal? A pidfd on the main process turns
    readable at its exit; Gets of ActiveState sent from then on show the death only once
    systemd has handled it, which is when it sends the signal too
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbus_fast import Message
from dbus_fast.aio import MessageBus

from agent.adapters.systemd.bus import SystemdAdapter
from agent.adapters.systemd.protocol import (
    MANAGER,
    MANAGER_PATH,
    UNIT,
    unit_path,
)
from agent.app import Daemon, Options
from agent.core.actions import TrackedAction, UnitJob
from agent.core.inputs import Input, UnitObserved
from agent.core.state import State
from agent.journal.store import Entry
from agent.runtime.lanes import RetryPolicy
from agent.runtime.loop import Runtime
from bench.dbus_restarter import get_property, start_unit, subscribe
from tests.agentproc import ROOT, AgentProcess, status, wait_until
from tests.sysmgr import SystemdUser

KILLS = int(os.environ.get("SETPOINT_BENCH_KILLS", "100"))
IDLE_UNITS = int(os.environ.get("SETPOINT_BENCH_UNITS", "1000"))
SLEEPER = "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/sleep infinity\n"
FLOOR = SLEEPER + "Restart=always\nRestartSec=0\n"
AGENT_UNIT, FLOOR_UNIT = "sp-bench-agent.service", "sp-bench-floor.service"
CLIENT_UNIT = "sp-bench-client.service"
LOOK_UNIT = "sp-bench-look.service"
LOOKS = 40
GOALS = f"""apiVersion: setpoint/v1
services:
  agent-managed:
    unit: {AGENT_UNIT}
    restart: {{backoff: 0s, limit: 10000, window: 1s}}
  systemd-managed: {{unit: {FLOOR_UNIT}, desired: unmanaged}}
  client-managed: {{unit: {CLIENT_UNIT}, desired: unmanaged}}
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Commit = Callable[[Sequence[Entry], State], Coroutine[Any, Any, None]]


def _death(inp: Input) -> bool:
    return isinstance(inp, UnitObserved) and inp.active in ("failed", "inactive")


class Probe:
    """Timestamps from inside the agent: observations and job calls."""

    def __init__(self) -> None:
        self.failed_at: dict[str, float] = {}
        self.down_seen: dict[str, float] = {}
        self.active_at: dict[str, float] = {}
        self.reaction: list[float] = []
        self.commits: list[float] = []
        """durations of the journal commits that carried a unit's death (write-ahead)"""
        self.changed = asyncio.Event()

    def timed_commit(self, commit: Commit) -> Commit:
        """`commit`, timing those that carry a unit's death."""

        async def timed(entries: Sequence[Entry], state: State) -> None:
            started = time.perf_counter()
            await commit(entries, state)
            if any(_death(e.input) for e in entries):
                self.commits.append(time.perf_counter() - started)

        return timed

    def tap(self, inp: Input) -> None:
        if isinstance(inp, UnitObserved):
            now = time.time()
            if inp.active in ("failed", "inactive", "deactivating"):
                self.failed_at.setdefault(inp.unit, inp.at)
                self.down_seen.setdefault(inp.unit, inp.at)
            elif inp.active == "active":
                self.active_at[inp.unit] = now
            self.changed.set()


async def reaction(mgr: SystemdUser, work: Path) -> dict[str, float]:
    """Kill the three units in turn KILLS times (the agent's jobs start while their batch
    commits: unit jobs need no write-ahead, see agent/runtime/loop.py)."""
    with restarter(mgr, CLIENT_UNIT):
        return await _reaction(mgr, work)


@contextlib.contextmanager
def restarter(mgr: SystemdUser, unit: str) -> Iterator[None]:
    """bench/dbus_restarter.py for `unit`, in its own process, ready."""
    argv = [sys.executable, "-m", "bench.dbus_restarter", unit]
    proc = subprocess.Popen(argv, env=mgr.env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.wait()


async def _reaction(mgr: SystemdUser, work: Path) -> dict[str, float]:
    (work / "goals.yaml").write_text(GOALS)
    os.environ["DBUS_SESSION_BUS_ADDRESS"] = mgr.bus_address
    opts = Options(goals=(work / "goals.yaml",), state_dir=work / "state", bus="user", http_port=0)
    daemon = Daemon(opts)
    probe = Probe()
    task = asyncio.create_task(daemon.serve())
    while daemon.runtime is None or daemon.systemd is None:
        if task.done():  # it failed to start (bad goals...): say why instead of waiting forever
            await task
        await asyncio.sleep(0.01)
    wire(daemon.runtime, daemon.systemd, probe)
    kills: dict[str, list[Kill]] = {AGENT_UNIT: [], FLOOR_UNIT: [], CLIENT_UNIT: []}
    for unit in kills:
        await wait_active(mgr, unit)
    probe.reaction.clear()  # the agent's first start of its unit is no reaction to a kill
    probe.commits.clear()
    units = list(kills)
    for i in range(KILLS):
        for unit in units[i % 3 :] + units[: i % 3]:  # each unit first, second, third in turn
            kills[unit].append(await kill_and_time(mgr, probe, unit))
    daemon.request_stop()
    await task
    return {**figures(probe, kills[AGENT_UNIT], kills[FLOOR_UNIT]),
            **client_figures(kills[AGENT_UNIT], kills[CLIENT_UNIT]),
            "idle_call_ms": await idle_call_ms(mgr.bus_address),
            "idle_start_ms": await idle_start_ms(mgr)}  # fmt: skip


async def idle_call_ms(address: str, calls: int = 200) -> float:
    """Median round trip of a small call to an idle systemd (Get Manager.Version) over the
    same bus: what the agent's StartUnit costs when systemd is not busy."""
    bus = await MessageBus(bus_address=address).connect()
    get = get_property(MANAGER_PATH, MANAGER, "Version")
    took = []
    try:
        for _ in range(calls):
            began = time.perf_counter()
            await bus.call(get)
            took.append(time.perf_counter() - began)
    finally:
        bus.disconnect()
    return statistics.median(took) * 1000


async def idle_start_ms(mgr: SystemdUser, starts: int = 40) -> float:
    """Median time from sending StartUnit for a stopped unit to its start job beginning
    (ConditionTimestamp), systemd otherwise idle: the job machinery's own cost."""
    bus = await MessageBus(bus_address=mgr.bus_address).connect()
    start = start_unit(LOOK_UNIT)
    took = []
    try:
        for _ in range(starts):
            await asyncio.to_thread(mgr.systemctl, "stop", LOOK_UNIT, check=True)
            await asyncio.sleep(0.05)
            sent = time.time()
            await bus.call(start)
            await wait_active(mgr, LOOK_UNIT)
            began, _ = await asyncio.to_thread(timestamps, mgr, LOOK_UNIT)
            took.append(began - sent)
    finally:
        bus.disconnect()
    return statistics.median(took) * 1000


def wire(rt: Runtime, adapter: SystemdAdapter, probe: Probe) -> None:
    """The probe's tap and timed commit, and a timed `systemd` lane."""
    rt.tap = probe.tap
    rt.journal.commit = probe.timed_commit(rt.journal.commit)  # type: ignore[method-assign,assignment]

    async def timed_job(action: TrackedAction) -> str:
        assert isinstance(action, UnitJob)
        seen = probe.failed_at.pop(action.unit, None)
        if seen is not None:
            probe.reaction.append(time.time() - seen)
        return await adapter.run_job(action.unit, action.op, 30)

    rt.lanes.register("systemd", timed_job, RetryPolicy(attempts=3, initial=0.2))


def figures(probe: Probe, agent: list[Kill], floor: list[Kill]) -> dict[str, float]:
    return {
        "reaction_p50_ms": pct(probe.reaction, 0.5) * 1000,
        "reaction_p99_ms": pct(probe.reaction, 0.99) * 1000,
        "agent_median_ms": median_ms(agent, "total"),
        "floor_median_ms": median_ms(floor, "total"),
        "ratio": median_ms(agent, "total") / median_ms(floor, "total"),
        "paired_ms": paired_ms(agent, floor),
        "samples": len(probe.reaction),
        "commit_p50_ms": pct(probe.commits, 0.5) * 1000,
        "floor_job_ms": median_ms(floor, "job_began"),
        "signal_ms": median_ms(agent, "down_seen"),
        "agent_job_ms": median_ms(agent, "job_began"),
        "agent_spawn_ms": median_ms(agent, "spawned"),
        "floor_spawn_ms": median_ms(floor, "spawned"),
    }


def paired_ms(agent: list[Kill], other: list[Kill]) -> float:
    """Median of the agent's totals minus the other's, kill by kill (steadier than the
    difference of two medians)."""
    return statistics.median(a.total - o.total for a, o in zip(agent, other, strict=True)) * 1000


def client_figures(agent: list[Kill], client: list[Kill]) -> dict[str, float]:
    """The agent beside the least a D-Bus client can do."""
    return {
        "client_median_ms": median_ms(client, "total"),
        "client_job_ms": median_ms(client, "job_began"),
        "client_paired_ms": paired_ms(agent, client),
    }


@dataclass
class Kill:
    """One kill, in seconds from the kill; job_began and spawned come from systemd's clock."""

    total: float
    """until the agent saw the unit active again"""
    down_seen: float
    """until the agent saw the unit go down (the D-Bus signal)"""
    job_began: float
    """until the start job began running in systemd (ConditionTimestamp)"""
    spawned: float
    """from the job beginning until the unit was active (ActiveEnterTimestamp)"""


def median_ms(kills: list[Kill], name: str) -> float:
    values: list[float] = [getattr(k, name) for k in kills]
    return statistics.median(values) * 1000


async def wait_active(mgr: SystemdUser, unit: str) -> None:
    for _ in range(500):
        if await asyncio.to_thread(mgr.active_state, unit) == "active":
            return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"{unit} never became active")


async def kill_and_time(mgr: SystemdUser, probe: Probe, unit: str) -> Kill:
    pid = await asyncio.to_thread(mgr.main_pid, unit)
    await asyncio.sleep(0.05)
    for seen in (probe.active_at, probe.failed_at, probe.down_seen):
        seen.pop(unit, None)
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        while probe.active_at.get(unit, 0.0) <= killed:
            probe.changed.clear()
            await probe.changed.wait()
    began, active = await asyncio.to_thread(timestamps, mgr, unit)
    return Kill(
        total=probe.active_at[unit] - killed,
        down_seen=probe.down_seen.get(unit, killed) - killed,
        job_began=began - killed,
        spawned=active - began,
    )


def timestamps(mgr: SystemdUser, unit: str) -> tuple[float, float]:
    """systemd's ConditionTimestamp and ActiveEnterTimestamp of `unit`, in seconds."""
    argv = ["busctl", "--user", "get-property", "org.freedesktop.systemd1", unit_path(unit)]
    argv += ["org.freedesktop.systemd1.Unit", "ConditionTimestamp", "ActiveEnterTimestamp"]
    out = subprocess.run(argv, env=mgr.env, capture_output=True, text=True, check=True).stdout
    began, active = (int(line.split()[1]) / 1e6 for line in out.splitlines())
    return began, active


async def early_look(mgr: SystemdUser) -> dict[str, float]:
    """Medians, in ms from a kill -9. Half the kills: the main process's pidfd turning
    readable, the reply of the first Get (ActiveState, sent in a loop from that moment) that
    shows the death, the PropertiesChanged signal that shows it. The other half: the signal,
    and the reply to one small Get sent the moment it arrives (is systemd still busy?)."""
    bus = await MessageBus(bus_address=mgr.bus_address).connect()
    path = unit_path(LOOK_UNIT)
    await subscribe(bus, path)
    state = get_property(path, UNIT, "ActiveState")
    version = get_property(MANAGER_PATH, MANAGER, "Version")
    times: dict[str, list[float]] = {
        name: [] for name in ("pidfd", "get", "signal", "answer", "answered")
    }
    at: dict[str, float] = {}
    wanted: set[str] = set()
    all_seen = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    def mark(name: str) -> None:
        at.setdefault(name, time.perf_counter())
        if wanted <= at.keys():
            all_seen.set()

    def spawn(work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def look() -> None:
        while (await bus.call(state)).body[0].value == "active":
            pass
        mark("get")

    async def answer() -> None:
        await bus.call(version)
        mark("answer")

    def on_signal(msg: Message) -> None:
        changed = msg.body[1] if msg.member == "PropertiesChanged" and msg.path == path else {}
        if "ActiveState" in changed and changed["ActiveState"].value != "active":
            if "signal" in at:
                return
            mark("signal")
            if "answer" in wanted:
                spawn(answer())

    bus.add_message_handler(on_signal)
    loop = asyncio.get_running_loop()
    try:
        for i in range(LOOKS):
            await asyncio.to_thread(mgr.systemctl, "start", LOOK_UNIT, check=True)
            pid = await asyncio.to_thread(mgr.main_pid, LOOK_UNIT)
            await asyncio.sleep(0.05)
            at.clear()
            all_seen.clear()
            wanted.clear()
            wanted.update(("pidfd", "get", "signal") if i % 2 == 0 else ("signal", "answer"))
            fd = os.pidfd_open(pid)

            def readable(fd: int = fd) -> None:
                loop.remove_reader(fd)
                mark("pidfd")
                if "get" in wanted:
                    spawn(look())

            loop.add_reader(fd, readable)
            killed = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            await asyncio.wait_for(all_seen.wait(), 10)
            loop.remove_reader(fd)
            os.close(fd)
            for name in wanted:
                times[name].append((at[name] - killed) * 1000)
            if "answer" in wanted:
                times["answered"].append((at["answer"] - at["signal"]) * 1000)
    finally:
        bus.disconnect()
    return {name: statistics.median(values) for name, values in times.items()}


def idle(mgr: SystemdUser, work: Path) -> dict[str, float]:
    services = "".join(f"  s{i}: {{unit: sp-idle-{i}.service}}\n" for i in range(IDLE_UNITS))
    goals = work / "idle.yaml"
    goals.write_text(f"apiVersion: setpoint/v1\nservices:\n{services}")
    for i in range(IDLE_UNITS):
        mgr.write_unit(f"sp-idle-{i}.service", SLEEPER)
    mgr.daemon_reload()
    state = work / "idle-state"
    with AgentProcess(goals, state, bus="user", env=mgr.env, extra=("--tick", "1s")) as agent:
        agent.wait_started(60)
        wait_until(lambda: all_running(state), 300, "every unit Running")
        time.sleep(5)
        cpu0, t0 = cpu_seconds(agent.proc.pid), time.monotonic()
        time.sleep(30)
        cpu = (cpu_seconds(agent.proc.pid) - cpu0) / (time.monotonic() - t0)
        rss = rss_mb(agent.proc.pid)
        agent.stop(120)
    return {"units": IDLE_UNITS, "cpu_percent": cpu * 100, "rss_mb": rss}


def all_running(state: Path) -> bool:
    with contextlib.suppress(Exception):
        services = status(state)["services"]
        return len(services) == IDLE_UNITS and all(
            s["lifecycle"] == "Running" for s in services.values()
        )
    return False


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def report(r: dict[str, float]) -> None:
    print(
        f"reaction (signal -> job issued, {r['samples']:.0f} kills): "
        f"p50 {r['reaction_p50_ms']:.2f} ms, p99 {r['reaction_p99_ms']:.2f} ms "
        f"(target p99 <= 20 ms)"
    )
    print(
        f"kill -> active again: agent median {r['agent_median_ms']:.1f} ms, "
        f"systemd Restart=always median {r['floor_median_ms']:.1f} ms, "
        f"ratio {r['ratio']:.2f}, overhead {r['agent_median_ms'] - r['floor_median_ms']:+.1f} ms "
        f"(target <= +1.0 ms); median of the {KILLS} paired kills' differences "
        f"{r['paired_ms']:+.1f} ms"
    )
    print(
        f"  beside the least a D-Bus client can do (StartUnit the moment the death signal "
        f"arrives, bench/dbus_restarter.py): median {r['client_median_ms']:.1f} ms, its job "
        f"began at {r['client_job_ms']:.1f} ms; the agent over it "
        f"{r['agent_median_ms'] - r['client_median_ms']:+.1f} ms (paired "
        f"{r['client_paired_ms']:+.1f} ms)"
    )
    print(
        f"  medians from the kill: systemd began its own restart job at "
        f"{r['floor_job_ms']:.1f} ms; the unit's death signal reached the agent at "
        f"{r['signal_ms']:.1f} ms and the agent's start job began at "
        f"{r['agent_job_ms']:.1f} ms; job -> active took {r['agent_spawn_ms']:.1f} ms "
        f"(agent) and {r['floor_spawn_ms']:.1f} ms (systemd)"
    )
    print(
        f"  inside the agent, signal -> job issued p50 {r['reaction_p50_ms']:.2f} ms (the "
        f"batch's journal commit, p50 {r['commit_p50_ms']:.2f} ms, runs alongside the job); "
        f"job issued -> job began in systemd "
        f"{r['agent_job_ms'] - r['signal_ms'] - r['reaction_p50_ms']:.1f} ms (D-Bus call)"
    )
    print(
        f"  an idle systemd answers a call over the same bus in {r['idle_call_ms']:.2f} ms and "
        f"begins the job of a StartUnit {r['idle_start_ms']:.1f} ms after it is sent (medians): "
        f"the job machinery's own cost, which any D-Bus client pays after the signal"
    )


def main() -> None:
    mgr = SystemdUser.start()
    try:
        mgr.write_unit(AGENT_UNIT, SLEEPER)
        mgr.write_unit(FLOOR_UNIT, FLOOR)
        mgr.write_unit(LOOK_UNIT, SLEEPER)
        mgr.write_unit(CLIENT_UNIT, SLEEPER)
        mgr.daemon_reload()
        mgr.systemctl("start", FLOOR_UNIT, CLIENT_UNIT, check=True)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "reaction").mkdir()
            report(asyncio.run(reaction(mgr, Path(tmp) / "reaction")))
            e = asyncio.run(early_look(mgr))
            print(
                f"  a look sooner than the signal, {LOOKS} kills (medians from the kill): the "
                f"pidfd turned readable at {e['pidfd']:.1f} ms; Gets sent from then on showed "
                f"the death at {e['get']:.1f} ms, the signal came at {e['signal']:.1f} ms; a "
                f"call sent the moment the signal arrives is answered {e['answered']:.2f} ms later"
            )
            i = idle(mgr, Path(tmp))
            print(
                f"idle with {i['units']:.0f} watched units: CPU {i['cpu_percent']:.2f}% of a core "
                f"(target < 1%), RSS {i['rss_mb']:.0f} MB (target < 100 MB)"
            )
    finally:
        mgr.stop()


if __name__ == "__main__":
    main()
