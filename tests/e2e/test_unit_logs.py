"""Unit logs in alerts under a real PID 1 and a real journald (issue 12 §2): a Debian 12 booted
under systemd-nspawn, Setpoint installed with `make install` and running as user `setpoint`
inside the shipped sandbox (journal access through SupplementaryGroups=systemd-journal).

A service prints numbered lines, each tagged with its own $INVOCATION_ID, and dies. Setpoint
restarts it once (`limit: 1`), it dies again, Setpoint gives up and RestartLimitReached goes to
a webhook receiver: the alert carries the last 20 lines of the second invocation only (the one
that ended last), the newest being its last words, and /api/v1/status shows the same lines.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import nspawn
from tests.e2e.nspawn import Container, wait_for
from tests.e2e.test_production import GOALS, RULE, SETPOINT, agent_log, is_active, polkit_rule
from tests.e2e.test_production_effects import (
    RECEIVER,
    RECEIVER_PORT,
    RECEIVER_READY,
    received,
)

pytestmark = pytest.mark.slow

UNIT = "e2e-dies.service"
DIES = """\
[Service]
ExecStart=/bin/sh -c 'for i in $(seq 1 30); do echo "$INVOCATION_ID line $i"; done; \\
  echo "$INVOCATION_ID last words" >&2; exit 3'
"""
GOALS_TEXT = f"""\
apiVersion: setpoint/v1
sinks:
  hook: {{webhook: {{url: "http://127.0.0.1:{RECEIVER_PORT}/alert"}}}}
services:
  dies: {{unit: {UNIT}, restart: {{backoff: 1s, limit: 1, window: 10m}}}}
"""


@pytest.fixture
def host() -> Iterator[Container]:
    with nspawn.booted_debian() as ct:
        ct.write("/usr/local/bin/e2e-receiver", RECEIVER, 0o755)
        ct.write(
            "/etc/systemd/system/e2e-receiver.service",
            "[Service]\nExecStart=/usr/local/bin/e2e-receiver\n",
        )
        ct.write(f"/etc/systemd/system/{UNIT}", DIES)
        ct.run("systemctl", "daemon-reload")
        ct.run("systemctl", "start", "e2e-receiver.service")
        t = time.monotonic()
        nspawn.make_install(ct)
        ct.timings["make install"] = time.monotonic() - t
        ct.write(f"{GOALS}/e2e.yaml", GOALS_TEXT)
        polkit_rule(ct)
        assert ct.path(RULE).exists()
        wait_for(lambda: ct.path(RECEIVER_READY).exists(), 20, "the receiver to listen")
        yield ct
        nspawn.log(f"timings: {', '.join(f'{k} {v:.1f}s' for k, v in ct.timings.items())}")


def limit_alerts(ct: Container) -> list[dict[str, Any]]:
    docs = [json.loads(r["body"]) for r in received(ct, "/alert")]
    return [d for d in docs if d["labels"]["alertname"] == "RestartLimitReached"]


def test_a_dying_services_alert_carries_its_last_invocations_lines(host: Container) -> None:
    ct = host
    cursor = ct.cursor()
    started = time.monotonic()
    ct.run("systemctl", "enable", "--now", "setpoint")
    assert is_active(ct, "setpoint.service"), agent_log(ct, cursor)
    wait_for(lambda: bool(limit_alerts(ct)), 60, "RestartLimitReached at the webhook")
    nspawn.log(f"alert received {time.monotonic() - started:.1f}s after enabling the agent")
    [doc] = [d for d in limit_alerts(ct) if d["status"] == "firing"][:1]
    logs = doc["logs"]
    invocation = ct.prop(UNIT, "InvocationID")
    assert logs["unit"] == UNIT and logs["invocation"] == invocation
    lines = logs["lines"]
    assert len(lines) == 20 and logs["truncated"], lines
    assert all(line.startswith(invocation + " ") for line in lines), lines  # that run only
    assert lines[-1] == f"{invocation} last words", lines
    assert lines[-2] == f"{invocation} line 30" and lines[0] == f"{invocation} line 12"
    all_runs = ct.run("journalctl", "--no-pager", "-o", "cat", "-u", UNIT).stdout
    earlier = {ln.split()[0] for ln in all_runs.splitlines() if ln.endswith("last words")}
    assert len(earlier - {invocation}) == 1, all_runs  # the first run's lines are not in it
    status = json.loads(ct.run(SETPOINT, "status", "--json").stdout)
    assert any(a["name"] == "RestartLimitReached" for a in status["alerts"])
    api = ct.run("python3", "-c", API).stdout
    [held] = [a for a in json.loads(api)["alerts"] if a["name"] == "RestartLimitReached"]
    assert held["logs"] == logs
    assert "without unit logs" not in agent_log(ct, cursor)


API = (
    "import urllib.request; "
    "print(urllib.request.urlopen('http://127.0.0.1:9477/api/v1/status', timeout=5)"
    ".read().decode())"
)
