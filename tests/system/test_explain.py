"""`setpoint explain` and the readable `setpoint history`, on journals the real agent wrote
(issue 12, section 3)."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess, cli, marker, status, wait_until
from tests.sysmgr import SystemdUser

CLOCK = r"\d\d:\d\d:\d\d\.\d{3}"
LOCAL_ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"
EPOCH = re.compile(r"\b1\d{9}\.\d+")
"""A raw epoch float (seconds since 1970, this century)."""


def explain(state: Path, *args: str) -> str:
    result = cli("explain", *args, "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.systemd
def test_explain_a_killed_service_and_its_restart_job(
    systemd_user: SystemdUser, tmp_path: Path
) -> None:
    mgr = systemd_user
    mgr.write_unit("sp-why.service", "[Service]\nExecStart=/bin/sleep infinity\n")
    mgr.daemon_reload()
    goals = tmp_path / "goals.yaml"
    goals.write_text("apiVersion: setpoint/v1\nservices:\n  why: {unit: sp-why.service}\n")
    state = tmp_path / "state"
    with AgentProcess(goals, state, bus="user", env=mgr.env) as agent:
        agent.wait_started()
        wait_until(lambda: status(state)["services"]["why"]["lifecycle"] == "Running", 15, "up")
        os.kill(mgr.main_pid("sp-why.service"), signal.SIGKILL)
        wait_until(lambda: status(state)["services"]["why"]["restarts"] == 1, 15, "a restart")
        wait_until(lambda: "active again" in explain(state, "why").splitlines()[-1], 15, "back")
        assert agent.stop() == 0
    text = explain(state, "why")
    chain = text.splitlines()[-1]
    found = re.search(
        rf"^  ({CLOCK}) why's main process was killed \([^)]*SIGKILL\) → \w+ job #(\d+)"
        rf".* → active again ({CLOCK}), (\d+) ms; restarts 1/5 in the window$",
        chain,
    )
    assert found, text
    assert found[1] <= found[3]
    assert text.startswith("why (sp-why.service): Running, health ")
    job = explain(state, found[2])
    assert f"job #{found[2]} for sp-why.service" in job
    assert re.search(rf"^{CLOCK} sp-why.service is failed\S* \(main process was killed", job, re.M)
    assert re.search(rf"→ done {CLOCK}, \d+ ms", job), job
    assert re.search(rf"→ active again {CLOCK}, \d+ ms", job), job


def test_explain_a_domain_episode_and_the_readable_history(tmp_path: Path) -> None:
    flag = tmp_path / "primary-ok"
    flag.touch()
    goals = tmp_path / "goals.yaml"
    goals.write_text(f"""apiVersion: setpoint/v1
probes:
  gate: {{exec: {{argv: [/usr/bin/test, -e, "{flag}"]}}, interval: 100ms, failures: 1}}
domains:
  Routing:
    state:
      ok: {{type: bool, default: true, bind: 'probes["gate"].healthy'}}
      route: {{type: string, default: primary}}
    goal: '(ok && route == "primary") || (!ok && route == "replica")'
    transitions:
      Failover:
        when: '!ok && route == "primary"'
        effects: [{{exec: {{argv: [/bin/true]}}}}]
        set: {{route: replica}}
""")
    state = tmp_path / "state"
    with AgentProcess(goals, state) as agent:
        agent.wait_started()
        flag.unlink()

        def failed_over() -> bool:
            return bool(status(state)["domains"]["Routing"]["values"]["route"] == "replica")

        wait_until(failed_over, 15, "the failover")
        assert agent.stop() == 0
    text = explain(state, "Routing")
    assert text.startswith("Routing: goal holds (ok=False, route=replica)"), text
    assert re.search(
        rf"^  {CLOCK} goal broken \(probe gate failed in [\d.]+ ms[^)]*\) → exec effect #(\d+) "
        rf"for domain:Routing Failover \(/bin/true\) → transition Failover fired → #\1 done "
        rf"{CLOCK} → transition Failover completed → goal holds again {CLOCK}, \d+ ms$",
        text,
        re.MULTILINE,
    ), text

    history = cli("history", "--limit", "500", "--state-dir", str(state))
    assert history.returncode == 0, history.stderr
    assert not EPOCH.search(history.stdout), history.stdout
    assert re.search(rf"^{LOCAL_ISO} #\d+ probe gate failed in [\d.]+ ms", history.stdout, re.M)
    assert "→ [Routing] transition Failover fired" in history.stdout
    machine = cli("history", "--json", "--limit", "1", "--state-dir", str(state)).stdout
    assert isinstance(json.loads(machine)["at"], float)


def test_explain_names_who_asked_and_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    goals = tmp_path / "goals.yaml"
    goals.write_text("apiVersion: setpoint/v1\nservices:\n  web: {unit: web.service}\n")
    state = tmp_path / "state"
    with AgentProcess(goals, state) as agent:
        agent.wait_started()
        marker(state, "maintenance_on", "web")
        assert agent.stop() == 0
    told = explain(state, "web")
    assert re.search(rf"{CLOCK} operator by uid {os.getuid()} pid \d+ via control socket: "
                     "maintenance on for web$", told, re.M), told  # fmt: skip
    result = cli("explain", "nosuch", "--state-dir", str(state))
    assert result.returncode == 2
    assert "no service, domain or action id 'nosuch' (known: web)" in result.stderr
    missing = cli("explain", "#999", "--state-dir", str(state))
    assert missing.returncode == 0 and "action #999 is not in the journal" in missing.stdout
