"""`make run`: a private systemd user manager with demo services, and the agent watching them.

Starts the manager (as the tests do), installs the demo units, runs `setpoint run --bus user`
on config/demo.yaml and prints what to look at. Ctrl-C (or SIGTERM) stops the agent cleanly,
then the manager and every process it started.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.sysmgr import SystemdUnavailable, SystemdUser  # noqa: E402

DEMO = Path(__file__).resolve().parent
PY = sys.executable


def units(work: Path) -> dict[str, str]:
    """The demo units: a web service, a worker that crashes now and then, a db pair."""

    def http(port: int, name: str) -> str:
        return (
            f"[Unit]\nDescription=Setpoint demo {name}\n[Service]\n"
            f"ExecStart={PY} {DEMO / 'httpd.py'} {port} {work / (name + '.fail')}\n"
        )

    return {
        "setpoint-demo-web.service": http(18080, "web"),
        "setpoint-demo-db-primary.service": http(18081, "db-primary"),
        "setpoint-demo-db-replica.service": http(18082, "db-replica"),
        "setpoint-demo-worker.service": (
            "[Unit]\nDescription=Setpoint demo worker (crashes now and then)\n[Service]\n"
            f"ExecStart={PY} {DEMO / 'worker.py'} 15 45\n"
        ),
    }


def banner(state: Path, work: Path, port: int) -> str:
    cli = f"{PY} -m agent"
    return f"""
Setpoint demo running.
  Status page (live):   http://127.0.0.1:{port}/
In another terminal:
  {cli} status --state-dir {state}            # services, domains, pending actions
  {cli} history --state-dir {state} --limit 20
  {cli} explain worker --state-dir {state}     # why it was restarted, step by step
  curl -s http://127.0.0.1:{port}/metrics | grep setpoint_service_state
  touch {work}/db-primary.fail                 # primary unhealthy: route fails over
  rm {work}/db-primary.fail                    # primary back: auto-restore
  touch {work}/web.fail                        # web unhealthy: restarted (liveness)
The worker crashes every 15-45 s: watch restarts, then the give-up after 3 in a minute.
Ctrl-C stops everything.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=ROOT / "run" / "state")
    parser.add_argument("--metrics-port", type=int, default=9477)
    args = parser.parse_args()
    work = ROOT / "run" / "demo"
    work.mkdir(parents=True, exist_ok=True)
    try:
        mgr = SystemdUser.start()
    except SystemdUnavailable as err:
        print(f"cannot start a private systemd user manager: {err}", file=sys.stderr)
        return 1
    try:
        return serve(mgr, args.state_dir, work, args.metrics_port)
    finally:
        left = mgr.stop()
        print(f"systemd user manager stopped; {len(left)} stray processes", flush=True)


def serve(mgr: SystemdUser, state: Path, work: Path, port: int) -> int:
    for name, text in units(work).items():
        mgr.write_unit(name, text)
    mgr.daemon_reload()
    argv = [PY, "-m", "agent", "run", "--bus", "user", "--goals", str(ROOT / "config"),
            "--state-dir", str(state), "--listen", f"127.0.0.1:{port}"]  # fmt: skip
    agent = subprocess.Popen(argv, env=mgr.env, cwd=ROOT)
    signal.signal(signal.SIGTERM, lambda *_: agent.send_signal(signal.SIGTERM))
    time.sleep(1.0)
    print(banner(state, work, port), flush=True)
    try:
        return agent.wait()
    except KeyboardInterrupt:
        agent.send_signal(signal.SIGTERM)
        return agent.wait()
    finally:
        if agent.poll() is None:
            agent.kill()


if __name__ == "__main__":
    sys.exit(main())
