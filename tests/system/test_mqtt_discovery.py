"""Home Assistant MQTT discovery with the real agent, a private systemd --user manager and a real
mosquitto: one device per host, a binary_sensor and a sensor per service whose configs hold
Home Assistant's documented discovery keys, availability from the last will, configs cleared
when a service leaves the goals; off unless asked for."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

from tests.agentproc import AgentProcess, wait_until
from tests.brokers import Mosquitto, Watcher
from tests.sysmgr import SystemdUser
from tests.system.test_mqtt import host_name

GOALS = "apiVersion: setpoint/v1\nservices:\n"
SERVICES = {"web": "sp-ha-web.service", "db": "sp-ha-db.service"}

# Home Assistant's MQTT integration docs (binary_sensor.mqtt, sensor.mqtt, "MQTT Discovery"):
# state_topic is required for both; the rest is optional. Keys outside these lists are refused
# by Home Assistant's config schema, so a config may use nothing else.
COMMON_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "device", "device_class", "enabled_by_default", "encoding", "entity_category",
    "expire_after", "force_update", "icon", "json_attributes_template",
    "json_attributes_topic", "name", "object_id", "origin", "payload_available",
    "payload_not_available", "qos", "state_topic", "unique_id", "value_template",
    "default_entity_id", "entity_picture", "platform",
}  # fmt: skip
KEYS = {
    "binary_sensor": COMMON_KEYS | {"off_delay", "payload_off", "payload_on"},
    "sensor": COMMON_KEYS | {"last_reset_value_template", "options", "state_class",
                             "suggested_display_precision", "unit_of_measurement"},
}  # fmt: skip
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
    "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
TOPIC = re.compile(
    r"^homeassistant/(binary_sensor|sensor)/([a-zA-Z0-9_-]+)/([a-zA-Z0-9_-]+)/config$"
)


def write_goals(path: Path, names: list[str]) -> None:
    path.write_text(GOALS + "".join(f"  {n}: {{unit: {SERVICES[n]}}}\n" for n in names))


def configs(watch: Watcher, host: str) -> dict[str, dict[str, Any]]:
    """The latest non-empty discovery config per topic of `host`'s device."""
    found: dict[str, dict[str, Any]] = {}
    for msg in watch.messages:
        if msg.topic.startswith("homeassistant/") and f"/setpoint_{host}/" in msg.topic:
            if msg.payload:
                found[msg.topic] = msg.json()
            else:
                found.pop(msg.topic, None)
    return found


def check_config(topic: str, config: dict[str, Any], base: str) -> None:
    """Against the documented keys: required ones present, no unknown ones."""
    match = TOPIC.match(topic)
    assert match is not None, topic
    component = match.group(1)
    assert set(config) <= KEYS[component], set(config) - KEYS[component]
    assert config["state_topic"].startswith(f"{base}/services/")
    assert config["availability_topic"] == f"{base}/status"
    assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
    assert set(config["device"]) <= DEVICE_KEYS and config["device"]["identifiers"]
    assert "value_json.lifecycle" in config["value_template"]
    if component == "binary_sensor":
        assert config["device_class"] == "running"
        assert (config["payload_on"], config["payload_off"]) == ("ON", "OFF")
        assert "'ON'" in config["value_template"] and "'OFF'" in config["value_template"]


def test_discovery_device_entities_availability_and_removal(
    tmp_path: Path, mosquitto: Mosquitto, systemd_user: SystemdUser
) -> None:
    for unit in SERVICES.values():
        systemd_user.write_unit(unit, "[Service]\nExecStart=/bin/sleep infinity\n")
    systemd_user.daemon_reload()
    host = host_name()
    base = f"setpoint/{host}"
    goals = tmp_path / "goals.yaml"
    write_goals(goals, ["web", "db"])
    watch = Watcher(mosquitto.port, "homeassistant/#", f"{base}/#")
    args = ("--hostname", host, "--mqtt-url", mosquitto.url, "--mqtt-discovery")
    try:
        with AgentProcess(
            goals, tmp_path / "state", bus="user", env=systemd_user.env, extra=args
        ) as agent:
            agent.wait_started()
            wait_until(lambda: len(configs(watch, host)) == 4, 20, "4 discovery configs")
            found = configs(watch, host)
            for topic, config in found.items():
                check_config(topic, config, base)
            assert len({c["unique_id"] for c in found.values()}) == 4
            assert len({tuple(c["device"]["identifiers"]) for c in found.values()}) == 1
            web = f"{base}/services/web"
            wait_until(lambda: (watch.doc(web) or {}).get("lifecycle") == "Running", 20, "web")
            assert {c["state_topic"] for c in found.values()} == {web, f"{base}/services/db"}
            assert watch.payload(f"{base}/status") == b"online"

            write_goals(goals, ["web"])
            agent.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: len(configs(watch, host)) == 2, 20, "db's configs cleared")
            gone = [m for m in watch.messages if "/db_" in m.topic and not m.payload]
            assert len(gone) == 2
            assert all("/web_" in t for t in configs(watch, host))

            agent.kill(signal.SIGKILL)  # the broker publishes the last will
            wait_until(lambda: watch.payload(f"{base}/status") == b"offline", 20, "the will")
    finally:
        watch.close()
        for unit in SERVICES.values():
            systemd_user.systemctl("stop", unit)
    late = Watcher(mosquitto.port, "homeassistant/#")  # what a Home Assistant starting now sees
    try:
        wait_until(lambda: len(configs(late, host)) == 2, 10, "web's retained configs")
        assert all("/web_" in t for t in configs(late, host))
    finally:
        late.close()


def test_no_discovery_unless_asked(
    tmp_path: Path, mosquitto: Mosquitto, systemd_user: SystemdUser
) -> None:
    systemd_user.write_unit(SERVICES["web"], "[Service]\nExecStart=/bin/sleep infinity\n")
    systemd_user.daemon_reload()
    host = host_name()
    goals = tmp_path / "goals.yaml"
    write_goals(goals, ["web"])
    watch = Watcher(mosquitto.port, "homeassistant/#", f"setpoint/{host}/#")
    args = ("--hostname", host, "--mqtt-url", mosquitto.url)
    try:
        with AgentProcess(
            goals, tmp_path / "state", bus="user", env=systemd_user.env, extra=args
        ) as agent:
            agent.wait_started()
            watch.wait(f"setpoint/{host}/services/web", 20, "web's state")
            assert agent.stop() == 0
        assert not [m for m in watch.messages if host in m.topic and "homeassistant" in m.topic]
    finally:
        watch.close()
        systemd_user.systemctl("stop", SERVICES["web"])
