"""Unit logs in alerts under a real PID 1 and a real journald (issue 12 §2): a Debian 12 booted
under systemd-nspawn, Setpoint installed with `make install` and running as user `setpoint`
inside the shipped sandbox (journal access through SupplementaryGroups=systemd-journal).

A service prints numbered lines, each tagged with its own $INVOCATION_ID, and dies. Setpoint
restarts it once (`limit: 1`), it dies again, Setpoint gives up and RestartLimitReached goes to
a webhook receiver: the alert carries the last 20 lines of the second invocation only (the one
that ended last), the newest being its last words, and /api/v1/status shows the same lines.

A second service does the same while journald is frozen (SIGSTOP in ExecStartPre, SIGCONT from
its OnFailure= unit): journald reads its lines once the unit has failed and cannot tag them with
the invocation, as happens on a busy host to a service that prints and exits at once. The alert
carries them all the same, found by the main process's PID.
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
UNTAGGED = "e2e-untagged.service"
DIES = """\
[Service]
ExecStart=/bin/sh -c 'for i in $(seq 1 30); do echo "$INVOCATION_ID line $i"; done; \\
  echo "$INVOCATION_ID last words" >&2; exit 3'
"""
JOURNALD = "systemd-journald.service"
FROZEN = f"""\
[Unit]
OnFailure=e2e-thaw.service
[Service]
ExecStartPre=/bin/systemctl kill --signal=SIGSTOP {JOURNALD}
"""
THAW = f"[Service]\nType=oneshot\nExecStart=/bin/systemctl kill --signal=SIGCONT {JOURNALD}\n"
GOALS_TEXT = f"""\
apiVersion: setpoint/v1
sinks:
  hook: {{webhook: {{url: "http://127.0.0.1:{RECEIVER_PORT}/alert"}}}}
services:
  dies: {{unit: {UNIT}, restart: {{backoff: 1s, limit: 1, window: 10m}}}}
  untagged: {{unit: {UNTAGGED}, restart: {{backoff: 1s, limit: 1, window: 10m}}}}
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
        ct.write(f"/etc/systemd/system/{UNTAGGED}", FROZEN + DIES.removeprefix("[Service]\n"))
        ct.write("/etc/systemd/system/e2e-thaw.service", THAW)
        ct.run("systemctl", "daemon-reload")
        ct.run("systemctl", "start", "e2e-receiver.service")
        t = time.monotonic()
        nspawn.make_install(ct)
        ct.timings["make install"] = time.monotonic() - t
        ct.write(f"{GOALS}/e2e.yaml", GOALS_TEXT)
        polkit_rule(ct)
        assert ct.path(RULE).exists()
        wait_for(lambda: ct.path(RECEIVER_READY).exists(), 20, "the receiver to listen")
        try:
            yield ct
        finally:
            ct.run("systemctl", "kill", "--signal=SIGCONT", JOURNALD, check=False)
        nspawn.log(f"timings: {', '.join(f'{k} {v:.1f}s' for k, v in ct.timings.items())}")


def limit_alerts(ct: Container, subject: str) -> list[dict[str, Any]]:
    docs = [json.loads(r["body"]) for r in received(ct, "/alert")]
    return [
        d for d in docs
        if d["labels"]["alertname"] == "RestartLimitReached" and d["labels"]["subject"] == subject
    ]  # fmt: skip


def test_a_dying_services_alert_carries_its_last_invocations_lines(host: Container) -> None:
    ct = host
    cursor = ct.cursor()
    started = time.monotonic()
    ct.run("systemctl", "enable", "--now", "setpoint")
    assert is_active(ct, "setpoint.service"), agent_log(ct, cursor)
    units = {"dies": UNIT, "untagged": UNTAGGED}
    wait_for(lambda: all(limit_alerts(ct, s) for s in units), 60, "both alerts at the webhook")
    nspawn.log(f"alerts received {time.monotonic() - started:.1f}s after enabling the agent")
    status = json.loads(ct.run(SETPOINT, "status", "--json").stdout)
    api = json.loads(ct.run("python3", "-c", API).stdout)
    invocations = {}
    for subject, unit in units.items():
        [doc] = [d for d in limit_alerts(ct, subject) if d["status"] == "firing"][:1]
        logs = doc["logs"]
        invocations[subject] = last_invocations_lines(ct, unit, logs)
        assert any(
            a["name"] == "RestartLimitReached" and a["subject"] == subject for a in status["alerts"]
        ), status["alerts"]
        [held] = [
            a for a in api["alerts"]
            if a["name"] == "RestartLimitReached" and a["subject"] == subject
        ]  # fmt: skip
        assert held["logs"] == logs
    untagged = journal_entries(ct, UNTAGGED)
    tagged = [(e["MESSAGE"], e.get("_COMM")) for e in untagged if "_SYSTEMD_INVOCATION_ID" in e]
    assert untagged and not tagged, tagged
    assert invocations["untagged"] in {e["MESSAGE"].split()[0] for e in untagged}
    assert "without unit logs" not in agent_log(ct, cursor)


def last_invocations_lines(ct: Container, unit: str, logs: dict[str, Any]) -> str:
    """Check an alert's `logs` are the last 20 lines of `unit`'s invocation that ended last and
    of no other; that invocation's id."""
    invocation = ct.prop(unit, "InvocationID")
    assert logs["unit"] == unit and logs["invocation"] == invocation
    lines = logs["lines"]
    assert len(lines) == 20 and logs["truncated"], lines
    assert all(line.startswith(invocation + " ") for line in lines), lines  # that run only
    assert lines[-1] == f"{invocation} last words", lines
    assert lines[-2] == f"{invocation} line 30" and lines[0] == f"{invocation} line 12"
    all_runs = ct.run("journalctl", "--no-pager", "-o", "cat", "-u", unit).stdout
    earlier = {ln.split()[0] for ln in all_runs.splitlines() if ln.endswith("last words")}
    assert len(earlier - {invocation}) == 1, all_runs  # the first run's lines are not in it
    return invocation


def journal_entries(ct: Container, unit: str) -> list[dict[str, Any]]:
    """The lines `unit`'s processes printed, as journald stored them."""
    out = ct.run("journalctl", "--no-pager", "-o", "json", f"_SYSTEMD_UNIT={unit}").stdout
    docs = [json.loads(line) for line in out.splitlines()]
    return [d for d in docs if "_STREAM_ID" in d]


API = (
    "import urllib.request; "
    "print(urllib.request.urlopen('http://127.0.0.1:9477/api/v1/status', timeout=5)"
    ".read().decode())"
)
