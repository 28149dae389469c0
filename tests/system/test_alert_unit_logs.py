"""Unit logs in alerts with the real agent and a private systemd --user manager, where no journald
runs (the manager's /run/systemd is a private tmpfs): the journal cannot be read, and the alert
still goes out, complete but without logs, and one warning line says why. With a real journald
the lines are checked in tests/e2e/test_unit_logs.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.agentproc import AgentProcess, free_port, wait_until
from tests.brokers import PostRecorder
from tests.sysmgr import SystemdUser

UNIT = "sp-logs-dies.service"
DIES = "[Service]\nExecStart=/bin/sh -c 'echo \"about to die\"; exit 3'\n"


def test_unreadable_journal_the_alert_goes_out_without_logs(
    tmp_path: Path, systemd_user: SystemdUser
) -> None:
    systemd_user.write_unit(UNIT, DIES)
    systemd_user.daemon_reload()
    port = free_port()
    goals = tmp_path / "goals.yaml"
    goals.write_text(
        "apiVersion: setpoint/v1\n"
        f"sinks:\n  hook: {{webhook: {{url: 'http://127.0.0.1:{port}/'}}}}\n"
        f"services:\n  dies: {{unit: {UNIT}, restart: {{backoff: 100ms, limit: 1, window: 10m}}}}\n"
    )
    hook = PostRecorder(port)
    try:
        with AgentProcess(goals, tmp_path / "state", bus="user", env=systemd_user.env) as agent:
            agent.wait_started()

            def limit_alert() -> list[dict[str, Any]]:
                return [
                    b for b in hook.bodies() if b["labels"]["alertname"] == "RestartLimitReached"
                ]

            wait_until(lambda: bool(limit_alert()), 30, "RestartLimitReached at the webhook")
            [doc] = limit_alert()[:1]
            assert doc["status"] == "firing" and doc["labels"]["subject"] == "dies"
            assert "logs" not in doc and doc["summary"]
            lines = [ln for ln in agent.output().splitlines() if "goes out without unit logs" in ln]
            assert len(lines) == 1 and "RestartLimitReached about dies" in lines[0], lines
            assert agent.stop() == 0
    finally:
        hook.close()
        systemd_user.systemctl("reset-failed", UNIT)
