"""A fleet at rest: the real agent watching 10,000 units that are up, nothing changing
(goal < 1% of a core, RSS < 150 MB); the same for 1,000 units in the same run, for the ratio.

A private systemd user manager runs two template units, `Type=oneshot` with
`RemainAfterExit=yes` and no process (`ExecStop=/bin/true` only, so starting one forks
nothing): 1,000 instances of `sp-small@.service`, then 10,000 of `sp-fleet@.service`. For
each size the agent (`python -m agent run --bus user`, production tick and log level) gets
goal files with one `desired: running` service per instance (PER_FILE a file) and starts them
itself; start-up is the time from launching the agent to every service Running in `setpoint
status`. Then it
rests (REST s) and its CPU (utime + stime of its whole process tree, from /proc) is measured
over WINDOW s, which holds one periodic resync (every 60 s), as % of one core, and its RSS
at the end. Idle means settled: a service the agent started has its restart counters reset
after `stable_for` Running and until then a Tick visits it, so the fleet's services have
`stable_for: STABLE` (default 2 min, which would make this bench twice as long). The
machine is shared: CPU figures are noisy; SETPOINT_BENCH_FLEET_REPEAT measures several
windows back to back and prints the range.

SETPOINT_BENCH_FLEET (10000), SETPOINT_BENCH_FLEET_WINDOW (60) and
SETPOINT_BENCH_FLEET_REPEAT (1) override the defaults.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import procstat
from tests.agentproc import AgentProcess, status, wait_until
from tests.sysmgr import SystemdUser

FLEET = int(os.environ.get("SETPOINT_BENCH_FLEET", "10000"))
SMALL = min(1000, FLEET)
WINDOW = float(os.environ.get("SETPOINT_BENCH_FLEET_WINDOW", "60"))
REPEAT = int(os.environ.get("SETPOINT_BENCH_FLEET_REPEAT", "1"))
STABLE = 10.0
PER_FILE = 1000
REST = STABLE + 5.0
CPU_GOAL, RSS_GOAL = 1.0, 150.0
UNIT = """\
[Unit]
DefaultDependencies=no
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStop=/bin/true
"""


@dataclass
class Figures:
    units: int
    startup_s: float
    cpu_percent: list[float] = field(default_factory=list)
    rss_mb: float = 0.0

    def cpu(self) -> str:
        lo, hi = min(self.cpu_percent), max(self.cpu_percent)
        return f"{lo:.2f}%" if len(self.cpu_percent) == 1 else f"{lo:.2f}-{hi:.2f}%"


def goals(template: str, numbers: range) -> str:
    services = "".join(
        f"  f{i}: {{unit: '{template}@{i}.service', restart: {{stable_for: {STABLE:g}s}}}}\n"
        for i in numbers
    )
    return f"apiVersion: setpoint/v1\nservices:\n{services}"


def write_goals(folder: Path, template: str, count: int) -> Path:
    """One goal file per PER_FILE services (a file holds at most 50,000 YAML nodes)."""
    folder.mkdir()
    for at in range(0, count, PER_FILE):
        text = goals(template, range(at, min(at + PER_FILE, count)))
        (folder / f"fleet-{at // PER_FILE:03d}.yaml").write_text(text)
    return folder


def all_running(state: Path, count: int) -> bool:
    with contextlib.suppress(Exception):
        services = status(state)["services"]
        return len(services) == count and all(
            s["lifecycle"] == "Running" for s in services.values()
        )
    return False


def fleet(mgr: SystemdUser, work: Path, template: str, count: int) -> Figures:
    """Run the agent on `count` instances of `template`; its start-up, idle CPU and RSS."""
    work.mkdir()
    folder = write_goals(work / "goals.d", template, count)
    state = work / "state"
    extra = ("--tick", "1s", "--log-level", "info")
    started = time.monotonic()
    with AgentProcess(folder, state, bus="user", env=mgr.env, extra=extra) as agent:
        agent.wait_started(120)
        wait_until(lambda: all_running(state, count), 300, "every service Running", every=2.0)
        figures = Figures(count, time.monotonic() - started)
        time.sleep(REST)
        for _ in range(REPEAT):
            cpu0, t0 = procstat.cpu_seconds([agent.proc.pid]), time.monotonic()
            time.sleep(WINDOW)
            cpu = procstat.cpu_seconds([agent.proc.pid]) - cpu0
            figures.cpu_percent.append(cpu / (time.monotonic() - t0) * 100)
        figures.rss_mb = procstat.rss_mb([agent.proc.pid])
        agent.stop(120)
    return figures


def main() -> None:
    mgr = SystemdUser.start()
    try:
        mgr.write_unit("sp-small@.service", UNIT)
        mgr.write_unit("sp-fleet@.service", UNIT)
        mgr.daemon_reload()
        with tempfile.TemporaryDirectory() as tmp:
            small = fleet(mgr, Path(tmp) / "small", "sp-small", SMALL)
            big = fleet(mgr, Path(tmp) / "fleet", "sp-fleet", FLEET)
    finally:
        mgr.stop()
    for f in (big, small):
        print(
            f"fleet of {f.units} units, all Running, idle over {WINDOW:.0f} s: CPU {f.cpu()} of "
            f"a core (goal < {CPU_GOAL:g}%)"
        )
        print(f"fleet of {f.units} units: RSS {f.rss_mb:.0f} MB (goal < {RSS_GOAL:g} MB)")
        print(f"fleet of {f.units} units: start-up to all Running {f.startup_s:.1f} s")
    cpu_ratio = statistics.median(big.cpu_percent) / max(statistics.median(small.cpu_percent), 1e-9)
    print(
        f"fleet {big.units} / {small.units} units: CPU x{cpu_ratio:.1f} (medians), "
        f"RSS x{big.rss_mb / small.rss_mb:.1f}"
    )


if __name__ == "__main__":
    main()
