"""Memory of a small host: the agent process idle with 10 services and 10 probes (goal <= 50 MB).

The real agent (`python -m agent run --bus user`) on a private systemd user manager with 10
sleeper units and 10 HTTP probes at 1 s against a local server; once every service is Running,
it rests a few seconds and its RSS is read from /proc. Also printed: the site-packages
distributions whose native code it mapped, a hint of what it imported.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

from bench import procstat
from bench.peers.checks_bench import target_server
from tests.agentproc import AgentProcess, status, wait_until
from tests.sysmgr import SystemdUser

SERVICES = PROBES = 10
SLEEPER = "[Service]\nExecStart=/bin/sleep infinity\n"
REST = 5.0


def goals(port: int) -> str:
    services = "".join(
        f"  s{i}: {{unit: sp-mem-{i}.service, probes: [p{i}]}}\n" for i in range(SERVICES)
    )
    probes = "".join(
        f"  p{i}: {{http: {{url: 'http://127.0.0.1:{port}/mem/{i}'}}, interval: 1s}}\n"
        for i in range(PROBES)
    )
    return f"apiVersion: setpoint/v1\nservices:\n{services}probes:\n{probes}"


def all_running(state: Path) -> bool:
    with contextlib.suppress(Exception):
        services = status(state)["services"]
        return len(services) == SERVICES and all(
            s["lifecycle"] == "Running" and s["health"] == "healthy" for s in services.values()
        )
    return False


def idle_rss(mgr: SystemdUser, work: Path, port: int) -> tuple[float, list[str]]:
    for i in range(SERVICES):
        mgr.write_unit(f"sp-mem-{i}.service", SLEEPER)
    mgr.daemon_reload()
    (work / "goals.yaml").write_text(goals(port))
    state = work / "state"
    with AgentProcess(work / "goals.yaml", state, bus="user", env=mgr.env) as agent:
        agent.wait_started(60)
        wait_until(lambda: all_running(state), 60, "every service Running and healthy")
        time.sleep(REST)
        rss = procstat.rss_mb([agent.proc.pid])
        libs = procstat.native_libraries(agent.proc.pid)
        agent.stop()
    return rss, libs


def main() -> None:
    mgr = SystemdUser.start()
    try:
        with target_server() as port, tempfile.TemporaryDirectory() as tmp:
            rss, libs = idle_rss(mgr, Path(tmp), port)
    finally:
        mgr.stop()
    print(
        f"memory: idle with {SERVICES} services and {PROBES} probes: RSS {rss:.1f} MB "
        f"(goal <= 50 MB); native code mapped from: {', '.join(libs)}"
    )


if __name__ == "__main__":
    main()
