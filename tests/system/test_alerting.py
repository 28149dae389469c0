"""Alerts from the real agent to a real Alertmanager and to webhooks.

The agent's own GoalsInvalid alert is the trigger: it fires when a reload (SIGHUP) finds
invalid goals and resolves when a reload succeeds, no systemd needed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import time
import uuid
from datetime import datetime
from pathlib import Path

from tests.agentproc import AgentProcess, free_port, status, wait_until
from tests.brokers import Alertmanager, PostRecorder


def host_name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def reload(agent: AgentProcess, goals: Path, text: str) -> None:
    goals.write_text(text)
    agent.proc.send_signal(signal.SIGHUP)


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_alert_fires_then_resolves_in_alertmanager(
    tmp_path: Path, alertmanager: Alertmanager
) -> None:
    host, goals = host_name(), tmp_path / "goals.yaml"
    good = (
        "apiVersion: setpoint/v1\nsinks:\n"
        f"  am: {{alertmanager: {{url: '{alertmanager.url}'}}, repeat_interval: 1s}}\n"
    )
    goals.write_text(good)
    with AgentProcess(goals, tmp_path / "state", extra=("--hostname", host)) as agent:
        agent.wait_started()
        reload(agent, goals, good + "bogus: 1\n")
        wait_until(lambda: bool(alertmanager.alerts(host=host)), 15, "the alert in Alertmanager")
        [alert] = alertmanager.alerts(host=host)
        assert alert["labels"] == {
            "alertname": "GoalsInvalid", "severity": "warning", "subject": "goals", "host": host,
        }  # fmt: skip
        assert alert["status"]["state"] == "active"
        assert "reload rejected" in alert["annotations"]["summary"]
        assert ts(alert["endsAt"]) > time.time()
        assert alert["generatorURL"].startswith(f"http://{host}:")
        first_update = alert["updatedAt"]
        wait_until(  # re-sent while firing (Alertmanager's client contract)
            lambda: alertmanager.alerts(host=host)[0]["updatedAt"] != first_update, 10, "a re-send"
        )
        wait_until(
            lambda: any(n["status"] == "firing" and n["commonLabels"].get("host") == host
                        for n in alertmanager.notifications()),
            15, "Alertmanager's firing notification",
        )  # fmt: skip
        reload(agent, goals, good)
        wait_until(lambda: not alertmanager.alerts(host=host), 15, "the alert to be resolved")

        def resolved() -> list[dict[str, str]]:
            return [a for n in alertmanager.notifications() if n["status"] == "resolved"
                    for a in n["alerts"] if a["labels"].get("host") == host]  # fmt: skip

        wait_until(lambda: bool(resolved()), 15, "Alertmanager's resolved notification")
        assert ts(resolved()[0]["endsAt"]) <= time.time()
        wait_until(lambda: not status(tmp_path / "state")["pending"], 10, "deliveries settled")
        assert agent.stop() == 0


def test_webhook_down_then_up_receives_what_it_missed(tmp_path: Path) -> None:
    host, goals, port = host_name(), tmp_path / "goals.yaml", free_port()
    good = (
        "apiVersion: setpoint/v1\nsinks:\n"
        f"  hook: {{webhook: {{url: 'http://127.0.0.1:{port}/hook', secret_env: HOOK_KEY}}}}\n"
    )
    goals.write_text(good)
    secret = "k-" + uuid.uuid4().hex
    env = {**os.environ, "HOOK_KEY": secret}
    state = tmp_path / "state"
    with AgentProcess(goals, state, env=env, extra=("--hostname", host)) as agent:
        agent.wait_started()
        reload(agent, goals, good + "bogus: 1\n")
        wait_until(lambda: "will retry" in agent.output(), 15, "the delivery to be retried")
        reload(agent, goals, good)  # resolved while the sink is still down
        wait_until(lambda: "GoalsInvalid resolved" in agent.output(), 10, "the resolution")
        wait_until(  # the sink stays down through a retry after the resolution
            lambda: "will retry" in agent.output().split("GoalsInvalid resolved", 1)[1], 30,
            "a failed retry after the resolution",
        )  # fmt: skip
        hook = PostRecorder(port)  # the sink comes up
        try:
            wait_until(lambda: len(hook.posts) >= 1, 60, "the missed alert")
            wait_until(lambda: not status(state)["pending"], 60, "every delivery settled")
            bodies = hook.bodies()
            assert bodies[-1]["status"] == "resolved"
            assert all(b["fingerprint"] == "GoalsInvalid:goals" for b in bodies)
            assert all(b["labels"]["host"] == host for b in bodies)
            for headers, body in hook.posts:
                mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
                assert headers["x-setpoint-signature"] == f"sha256={mac}"
        finally:
            hook.close()
        assert agent.stop() == 0
    assert secret not in agent.output()


def test_pending_alert_survives_an_agent_restart(tmp_path: Path) -> None:
    host, goals, port = host_name(), tmp_path / "goals.yaml", free_port()
    good = f"apiVersion: setpoint/v1\nsinks:\n  hook: {{webhook: {{url: 'http://127.0.0.1:{port}/'}}}}\n"
    goals.write_text(good)
    state, extra = tmp_path / "state", ("--hostname", host, "--shutdown-timeout", "500ms")
    with AgentProcess(goals, state, extra=extra) as agent:
        agent.wait_started()
        reload(agent, goals, good + "bogus: 1\n")
        wait_until(lambda: "will retry" in agent.output(), 15, "the delivery to be retried")
        assert agent.stop() == 0
    assert [p for p in status(state)["pending"] if "GoalsInvalid firing to hook" in p]
    goals.write_text(good)  # fixed while the agent was down: it resolves at start
    hook = PostRecorder(port)
    try:
        with AgentProcess(goals, state, extra=extra) as agent:
            wait_until(lambda: len(hook.posts) >= 2, 20, "the alert after the restart")
            assert [b["status"] for b in hook.bodies()] == ["firing", "resolved"]
            assert agent.stop() == 0
            assert not status(state)["pending"]
    finally:
        hook.close()


PAGING = """\
apiVersion: setpoint/v1
probes:
  gate: {{exec: {{argv: [/bin/false]}}, interval: 200ms, failures: 1}}
domains:
  Paging:
    state:
      up: {{type: bool, bind: 'probes["gate"].healthy'}}
      paged: {{type: bool, default: false}}
    goal: up || paged
    transitions:
      Page:
        when: "!up && !paged"
        effects: [{{alert: {{summary: gate is down, severity: critical}}}}]
        set: {{paged: true}}
        retry_after: 300ms
{sinks}"""


def paged(state: Path) -> object:
    return status(state)["domains"].get("Paging", {}).get("values", {}).get("paged")


def test_alert_effect_reaches_every_sink_before_the_domain_moves_on(tmp_path: Path) -> None:
    host, goals, up_port, down_port = host_name(), tmp_path / "goals.yaml", free_port(), free_port()
    sinks = (
        "sinks:\n"
        f"  a: {{webhook: {{url: 'http://127.0.0.1:{up_port}/a'}}}}\n"
        f"  b: {{webhook: {{url: 'http://127.0.0.1:{down_port}/b'}}}}\n"
    )
    goals.write_text(PAGING.format(sinks=sinks))
    state = tmp_path / "state"
    first, second = PostRecorder(up_port), None
    try:
        with AgentProcess(goals, state, extra=("--hostname", host)) as agent:
            agent.wait_started()
            wait_until(lambda: len(first.posts) >= 1, 15, "the page on the sink that is up")
            doc = first.bodies()[0]
            assert doc["status"] == "firing" and doc["severity"] == "critical"
            assert doc["labels"] == {
                "alertname": "Page", "severity": "critical", "subject": "Paging", "host": host,
            }  # fmt: skip
            assert doc["summary"] == "gate is down"
            # A second post to sink a is the effect's retry: its first attempt ended and did
            # not count as done, since sink b refused it. The domain has not moved on.
            wait_until(lambda: len(first.posts) >= 2, 30, "the page to be retried")
            assert paged(state) is False
            second = PostRecorder(down_port)
            wait_until(lambda: paged(state) is True, 30, "the effect to succeed on both sinks")
            assert second.bodies()[-1]["labels"]["alertname"] == "Page"
            assert agent.stop() == 0
    finally:
        first.close()
        if second is not None:
            second.close()


HELD = """\
apiVersion: setpoint/v1
probes:
  gate: {{exec: {{argv: [/usr/bin/test, "!", -e, "{fail}"]}}, interval: 200ms, failures: 1}}
domains:
  Paging:
    state:
      up: {{type: bool, bind: 'probes["gate"].healthy'}}
      paged: {{type: bool, default: false}}
    goal: (up && !paged) || (!up && paged)
    transitions:
      Page:
        when: "!up && !paged"
        effects: [{{alert: {{summary: gate is down, severity: critical}}}}]
        set: {{paged: true}}
      Clear: {{when: up && paged, set: {{paged: false}}}}
sinks:
  am: {{alertmanager: {{url: "{url}"}}, repeat_interval: 1s}}
"""


def test_a_page_stays_active_in_alertmanager_until_the_domain_clears_it(
    tmp_path: Path, alertmanager: Alertmanager
) -> None:
    host, goals, fail = host_name(), tmp_path / "goals.yaml", tmp_path / "gate.fail"
    goals.write_text(HELD.format(fail=fail, url=alertmanager.url))
    state = tmp_path / "state"
    with AgentProcess(goals, state, extra=("--hostname", host)) as agent:
        agent.wait_started()
        wait_until(lambda: status(state)["domains"]["Paging"]["satisfied"], 15, "the gate up")
        fail.touch()
        wait_until(lambda: bool(alertmanager.alerts(host=host)), 15, "the page in Alertmanager")
        [page] = alertmanager.alerts(host=host)
        assert page["labels"]["alertname"] == "Page" and page["status"]["state"] == "active"
        wait_until(  # kept firing: re-sent like the built-in alerts
            lambda: alertmanager.alerts(host=host)[0]["updatedAt"] != page["updatedAt"], 10,
            "a re-send of the page",
        )  # fmt: skip
        fail.unlink()  # the gate is back: Clear resets `paged`, which the page stood for
        wait_until(lambda: not alertmanager.alerts(host=host), 15, "the page to be resolved")
        wait_until(
            lambda: any(n["status"] == "resolved" and n["commonLabels"].get("host") == host
                        for n in alertmanager.notifications()),
            15, "Alertmanager's resolved notification",
        )  # fmt: skip
        assert agent.stop() == 0


def test_alert_effect_without_sinks_is_logged(tmp_path: Path) -> None:
    goals = tmp_path / "goals.yaml"
    goals.write_text(PAGING.format(sinks=""))
    state = tmp_path / "state"
    with AgentProcess(goals, state) as agent:
        agent.wait_started()
        wait_until(lambda: paged(state) is True, 15, "the logged page")
        assert "ALERT critical: gate is down (domain:Paging, Page)" in agent.output()
        assert agent.stop() == 0
