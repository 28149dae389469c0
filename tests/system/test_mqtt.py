"""MQTT with the real agent and a real mosquitto: status and last will, retained state, alerts
and effects at QoS 1, a broker restarted mid-stream, commands, credentials kept secret."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess, cli, journal_rows, status, wait_until
from tests.brokers import PASSWORD, USER, Mosquitto, Watcher, publish
from tests.sysmgr import SystemdUser

GOALS = """\
apiVersion: setpoint/v1
services:
  web: {{unit: sp-web.service}}
  db: {{unit: sp-db.service}}
probes:
  gate: {{exec: {{argv: [/bin/false]}}, interval: 200ms, failures: 1}}
domains:
  Gate:
    state:
      up: {{type: bool, bind: 'probes["gate"].healthy'}}
      told: {{type: bool, default: false}}
    goal: up || told
    transitions:
      Tell:
        when: "!up && !told"
        effects: [{{mqtt: {{topic: "ext/{host}/gate", payload: "down"}}}}]
        set: {{told: true}}
sinks:
  mq: {{mqtt: {{topic: alerts}}}}
"""


MQTT_UP = 'setpoint_link_up{link="mqtt"}'


def host_name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def goals_for(tmp_path: Path, host: str) -> Path:
    path = tmp_path / "goals.yaml"
    path.write_text(GOALS.format(host=host))
    return path


def agent_for(
    tmp_path: Path, host: str, url: str, *extra: str, name: str = "state"
) -> AgentProcess:
    goals = goals_for(tmp_path, host)
    args = ("--hostname", host, "--mqtt-url", url, *extra)
    return AgentProcess(goals, tmp_path / name, extra=args)


def break_goals(agent: AgentProcess, tmp_path: Path, host: str, broken: bool) -> None:
    (tmp_path / "goals.yaml").write_text(GOALS.format(host=host) + ("bogus: 1\n" if broken else ""))
    agent.proc.send_signal(signal.SIGHUP)


def test_status_will_retained_state_alerts_and_effects(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    host = host_name()
    base = f"setpoint/{host}"
    watch = Watcher(mosquitto.port, f"{base}/#", f"ext/{host}/#")
    try:
        with agent_for(tmp_path, host, mosquitto.url) as agent:
            agent.wait_started()
            online = watch.wait(f"{base}/status", 10, "online")
            assert online.payload == b"online"
            web = watch.wait(f"{base}/services/web", 10, "web's retained state").json()
            assert set(web) >= {"lifecycle", "active", "health", "reason"}
            gate = watch.wait(f"ext/{host}/gate", 10, "the mqtt effect")
            assert gate.payload == b"down"
            domain = f"{base}/domains/Gate"
            wait_until(lambda: watch.doc(domain)["values"]["told"] is True, 10, "domain values")
            break_goals(agent, tmp_path, host, broken=True)
            firing = watch.wait(f"{base}/alerts/GoalsInvalid", 10, "the alert").json()
            assert firing["status"] == "firing" and firing["labels"]["host"] == host
            break_goals(agent, tmp_path, host, broken=False)
            alert = f"{base}/alerts/GoalsInvalid"
            wait_until(lambda: watch.doc(alert)["status"] == "resolved", 10, "the resolution")
            agent.kill()  # no goodbye: the broker publishes the last will
            wait_until(lambda: watch.payload(f"{base}/status") == b"offline", 10, "the last will")
        with agent_for(tmp_path, host, mosquitto.url) as agent:
            agent.wait_started()
            wait_until(lambda: watch.payload(f"{base}/status") == b"online", 10, "online again")
            assert agent.stop() == 0
            assert watch.payload(f"{base}/status") == b"offline"
    finally:
        watch.close()
    late = Watcher(mosquitto.port, f"{base}/status", f"{base}/services/+")
    try:  # a subscriber arriving later finds the retained status and state
        assert late.wait(f"{base}/status", 10).payload == b"offline"
        assert late.wait(f"{base}/services/db", 10).retain
    finally:
        late.close()


def test_broker_restart_mid_stream_loses_nothing(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    host = host_name()
    base = f"setpoint/{host}"
    watch = Watcher(broker.port, f"{base}/#", client_id=f"w-{host}", persistent=True)
    try:
        with agent_for(tmp_path, host, broker.url) as agent:
            agent.wait_started()
            watch.wait(f"{base}/services/web", 10)
            assert agent.metric(MQTT_UP) == 1.0
            broker.stop()
            wait_until(lambda: "retrying in" in agent.output(), 10, "the agent to notice")
            assert agent.metric(MQTT_UP) == 0.0
            break_goals(agent, tmp_path, host, broken=True)  # an alert while the broker is down
            result = cli("maintenance", "on", "web", "--state-dir", str(tmp_path / "state"))
            assert result.returncode == 0, result.stderr  # still reconciling
            wait_until(
                lambda: status(tmp_path / "state")["services"]["web"]["maintenance"], 10,
                "maintenance without a broker",
            )  # fmt: skip
            wait_until(lambda: "will retry" in agent.output(), 10, "the alert to be retried")
            broker.start()
            alert = watch.wait(f"{base}/alerts/GoalsInvalid", 40, "the alert after the restart")
            assert alert.json()["status"] == "firing"
            wait_until(
                lambda: watch.doc(f"{base}/services/web")["maintenance"] is True, 20,
                "the state that changed while the broker was down",
            )  # fmt: skip
            assert watch.payload(f"{base}/status") == b"online"
            assert agent.metric(MQTT_UP) == 1.0
            assert agent.stop() == 0
    finally:
        watch.close()
        broker.stop()


ALLOW = ("--mqtt-commands", "--mqtt-allow", "maintenance_on,maintenance_off,resync",
         "--mqtt-allow-services", "web")  # fmt: skip


def test_bad_commands_change_nothing_and_get_a_reply(tmp_path: Path, mosquitto: Mosquitto) -> None:
    host = host_name()
    base = f"setpoint/{host}"
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD + "\n")
    auth = (f"mqtt://127.0.0.1:{mosquitto.auth_port}", "--mqtt-username", USER,
            "--mqtt-password-file", str(secret), *ALLOW)  # fmt: skip
    state = tmp_path / "state"
    watch = Watcher(mosquitto.port, f"{base}/commands/response")
    stale = b'{"command": "maintenance_on", "service": "web", "id": "stale"}'
    publish(mosquitto.port, f"{base}/commands", stale, retain=True)  # left from long ago
    try:
        with agent_for(tmp_path, host, *auth) as agent:
            agent.wait_started()
            wait_until(lambda: len(watch.messages) == 1, 10, "the stale command's refusal")
            assert watch.messages[0].json() == {
                "ok": False, "id": "stale",
                "error": "retained commands are refused; publish with retain=false",
            }  # fmt: skip
            publish(mosquitto.port, f"{base}/commands", b"", retain=True)  # cleared: ignored
            before = status(state)
            bad = [
                b"{not json",
                b'{"command": "reset", "service": "web", "id": 1}',
                b'{"command": "maintenance_on", "service": "db", "id": 2}',
                b'{"command": "maintenance_on", "id": 3}',
                b'{"command": "rm -rf", "id": 4}',
            ]
            for n, payload in enumerate(bad, 2):
                publish(mosquitto.port, f"{base}/commands", payload)
                wait_until(lambda n=n: len(watch.messages) >= n, 10, "a reply")  # type: ignore[misc]
            replies = [m.json() for m in watch.messages[1:]]
            assert all(r["ok"] is False and r["error"] for r in replies), replies
            assert [r.get("id") for r in replies] == [None, 1, 2, 3, 4]
            after = status(state)
            assert after["maintenance"] == before["maintenance"] is False
            for svc in (*after["services"].values(), *before["services"].values()):
                del svc["for_seconds"]
            assert after["services"] == before["services"]
            assert not after["services"]["web"]["maintenance"]
            commands = [r for r in journal_rows(state) if r["input"]["type"] == "OperatorCommand"]
            assert commands == []
            assert agent.output().count("MQTT command rejected") == 6
            good = b'{"command": "maintenance_on", "service": "web", "id": "ok"}'
            publish(mosquitto.port, f"{base}/commands", good)
            wait_until(lambda: len(watch.messages) == 7, 10, "the accepted reply")
            assert watch.messages[-1].json() == {
                "ok": True, "error": None, "command": "maintenance_on", "service": "web",
                "id": "ok",
            }  # fmt: skip
            wait_until(lambda: status(state)["services"]["web"]["maintenance"], 10, "maintenance")
            with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/api/v1/status") as resp:
                api = resp.read().decode()
            cmdline = Path(f"/proc/{agent.proc.pid}/cmdline").read_bytes().decode()
            assert agent.stop() == 0
    finally:
        watch.close()
    for text in (agent.output(), api, cmdline, json.dumps(status(state))):
        assert PASSWORD not in text


def test_wrong_password_keeps_the_agent_reconciling(tmp_path: Path, mosquitto: Mosquitto) -> None:
    host = host_name()
    url = f"mqtt://127.0.0.1:{mosquitto.auth_port}"
    env_password = "wrong-" + uuid.uuid4().hex
    goals = goals_for(tmp_path, host)
    args = ("--hostname", host, "--mqtt-url", url, "--mqtt-username", USER,
            "--shutdown-timeout", "1s")  # fmt: skip
    env = {**os.environ, "SETPOINT_MQTT_PASSWORD": env_password}
    with AgentProcess(goals, tmp_path / "state", env=env, extra=args) as agent:
        agent.wait_started()
        wait_until(lambda: "Not authorized" in agent.output(), 10, "the refusal")
        wait_until(  # the domain still works: its mqtt effect is retried, not blocking anything
            lambda: status(tmp_path / "state")["domains"]["Gate"]["values"]["up"] is False, 10,
            "the probe verdict",
        )  # fmt: skip
        assert agent.stop() == 0
    assert env_password not in agent.output()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--mqtt-url", "mqtt://u:hunter2@b"), "no password in the MQTT URL"),
        (("--mqtt-url", "mqtt://b", "--mqtt-commands", "--mqtt-allow", "resync"),
         "requires broker authentication"),
    ],
)  # fmt: skip
def test_unsafe_mqtt_options_are_refused(
    tmp_path: Path, argv: tuple[str, ...], message: str
) -> None:
    goals = goals_for(tmp_path, "h")
    result = cli("run", "--goals", str(goals), "--state-dir", str(tmp_path / "s"), *argv)
    assert result.returncode == 2 and message in result.stderr
    assert "hunter2" not in result.stderr


@pytest.mark.systemd
def test_service_state_follows_systemd(
    tmp_path: Path, mosquitto: Mosquitto, systemd_user: SystemdUser
) -> None:
    systemd_user.write_unit("sp-mq.service", "[Service]\nExecStart=/bin/sleep infinity\n")
    systemd_user.daemon_reload()
    host = host_name()
    topic = f"setpoint/{host}/services/mq"
    goals = tmp_path / "goals.yaml"
    goals.write_text("apiVersion: setpoint/v1\nservices:\n  mq: {unit: sp-mq.service}\n")
    watch = Watcher(mosquitto.port, topic)
    args = ("--hostname", host, "--mqtt-url", mosquitto.url)
    try:
        with AgentProcess(
            goals, tmp_path / "state", bus="user", env=systemd_user.env, extra=args
        ) as agent:
            agent.wait_started()
            wait_until(lambda: (watch.doc(topic) or {}).get("lifecycle") == "Running", 20, "up")
            assert watch.doc(topic)["active"] == "active"
            systemd_user.systemctl("kill", "--signal=KILL", "sp-mq.service")
            wait_until(
                lambda: any(m.json()["lifecycle"] != "Running" for m in watch.on(topic)[1:]), 20,
                "the crash to be published",
            )  # fmt: skip
            wait_until(lambda: watch.doc(topic)["lifecycle"] == "Running", 20, "the restart")
            assert agent.stop() == 0
    finally:
        watch.close()
        systemd_user.systemctl("stop", "sp-mq.service")


def test_tls_to_the_broker(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", tls=True)
    host = host_name()
    url = f"mqtts://127.0.0.1:{broker.tls_port}"
    watch = Watcher(broker.port, f"setpoint/{host}/status")
    try:
        with agent_for(tmp_path, host, url, "--mqtt-ca-file", str(broker.ca_file)) as agent:
            agent.wait_started()
            assert watch.wait(f"setpoint/{host}/status", 10, "online over TLS").payload == b"online"
            assert agent.stop() == 0
        untrusted = agent_for(tmp_path, host_name(), url, name="state2")  # system CAs only
        with untrusted as agent:
            agent.wait_started()
            wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in agent.output(), 10, "the refusal")
            assert agent.stop() == 0
    finally:
        watch.close()
        broker.stop()
