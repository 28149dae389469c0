"""Alert sinks in-process: payloads, signatures, error classification at the edge, fallbacks;
MQTT option checking, the command allowlist and the retained-state projection."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.adapters.alerts.sinks import Sinks, alertmanager_body, rfc3339, sign
from agent.adapters.mqtt import config as mqtt_config
from agent.adapters.mqtt.commands import CommandPolicy, authorise, reply
from agent.adapters.mqtt.discovery import Discovery
from agent.adapters.mqtt.projection import Projection
from agent.core.actions import Alert, Owner, RunEffect, SendAlert
from agent.core.alerts import effect_alert
from agent.core.inputs import GoalsLoaded, UnitObserved
from agent.core.spec import AlertSink, Effect, GoalSet
from agent.core.state import State
from agent.core.step import step
from agent.errors import PermanentError, TransientError
from tests.agentproc import free_port
from tests.corekit import service

FIRING = Alert(
    "ServiceError:web", "ServiceError",
    (("alertname", "ServiceError"), ("severity", "critical"), ("subject", "web")),
    "web in Error", "critical", True, 1000.0, 1240.0,
)  # fmt: skip
RESOLVED = replace(FIRING, firing=False, ends_at=1100.0)


def test_rfc3339_is_utc_with_z() -> None:
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
    assert datetime.fromisoformat(rfc3339(1700000000.25)).timestamp() == 1700000000.25


def test_alertmanager_body_follows_the_v2_client_contract() -> None:
    [doc] = json.loads(alertmanager_body(FIRING, "h1", 1010.0, "http://h1:9477/api/v1/status"))
    assert doc["labels"] == {
        "alertname": "ServiceError", "severity": "critical", "subject": "web", "host": "h1",
    }  # fmt: skip
    assert doc["annotations"] == {"summary": "web in Error"}
    assert doc["startsAt"] == rfc3339(1000.0) and doc["endsAt"] == rfc3339(1240.0)
    assert doc["generatorURL"] == "http://h1:9477/api/v1/status"
    [late] = json.loads(alertmanager_body(FIRING, "h1", 5000.0, "x:"))  # restored after expiry
    assert late["endsAt"] > rfc3339(5000.0)
    [res] = json.loads(alertmanager_body(RESOLVED, "h1", 5000.0, "x:"))
    assert res["endsAt"] == rfc3339(1100.0)


class Endpoint:
    """An in-process HTTP endpoint answering `status` and recording requests."""

    def __init__(self) -> None:
        self.status = 200
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            self.requests.append((request.path, dict(request.headers), await request.read()))
            return web.Response(status=self.status, text="nope" if self.status >= 400 else "")

        application = web.Application()
        application.router.add_post("/{tail:.*}", handle)
        return application


def sinks_for(*sinks: AlertSink, env: dict[str, str] | None = None) -> Sinks:
    return Sinks(lambda: sinks, "h1", generator_url="http://h1/", clock=lambda: 1010.0,
                 env=env or {})  # fmt: skip


async def test_alertmanager_and_webhook_delivery_and_error_classes() -> None:
    endpoint = Endpoint()
    async with TestServer(endpoint.app()) as server:
        base = str(server.make_url("")).rstrip("/")
        am = AlertSink("am", "alertmanager", url=base)
        hook = AlertSink("hook", "webhook", url=f"{base}/hook", secret_env="HOOK_SECRET")
        sinks = sinks_for(am, hook, env={"HOOK_SECRET": "s3cret"})
        try:
            assert "HTTP 200" in await sinks.send(SendAlert(7, "am", FIRING))
            path, _headers, body = endpoint.requests[-1]
            assert path == "/api/v2/alerts" and json.loads(body)[0]["labels"]["host"] == "h1"
            await sinks.send(SendAlert(8, "hook", RESOLVED))
            path, headers, body = endpoint.requests[-1]
            doc = json.loads(body)
            assert path == "/hook" and doc["status"] == "resolved"
            assert doc["fingerprint"] == "ServiceError:web" and doc["severity"] == "critical"
            assert doc["endsAt"] == rfc3339(1100.0) and doc["labels"]["subject"] == "web"
            expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
            assert headers["X-Setpoint-Signature"] == expected == sign(b"s3cret", body)
            assert headers["X-Setpoint-Action-Id"] == "8"
            for status, error in ((500, TransientError), (503, TransientError),
                                  (429, TransientError), (400, PermanentError),
                                  (404, PermanentError)):  # fmt: skip
                endpoint.status = status
                with pytest.raises(error, match=f"HTTP {status}"):
                    await sinks.send(SendAlert(9, "am", FIRING))
        finally:
            await sinks.close()


async def test_unreachable_sink_is_transient_bad_config_permanent() -> None:
    refused = AlertSink("down", "webhook", url=f"http://127.0.0.1:{free_port()}/x")
    nosecret = AlertSink("signed", "webhook", url="http://127.0.0.1:1/x", secret_env="NOPE_SECRET")
    mqtt = AlertSink("mq", "mqtt", topic="alerts")
    sinks = sinks_for(refused, nosecret, mqtt, env={"OTHER": "value-not-shown"})
    try:
        with pytest.raises(TransientError):
            await sinks.send(SendAlert(1, "down", FIRING))
        with pytest.raises(PermanentError, match="NOPE_SECRET is not set") as err:
            await sinks.send(SendAlert(2, "signed", FIRING))
        assert "value-not-shown" not in str(err.value)
        with pytest.raises(PermanentError, match="no MQTT broker configured"):
            await sinks.send(SendAlert(3, "mq", FIRING))
        with pytest.raises(PermanentError, match="no alert sink named 'gone'"):
            await sinks.send(SendAlert(4, "gone", FIRING))
    finally:
        await sinks.close()


def alert_effect(sink: str = "", target: str = "") -> RunEffect:
    effect = Effect("alert", sink=sink, severity="critical", summary="route now {target}")
    owner = Owner("group", "db") if target else Owner("domain", "Routing")
    return RunEffect(5, effect, owner, "route" if target else "Page", target)


def test_effect_alert_labels() -> None:
    alert = effect_alert(alert_effect(), 50.0)
    assert dict(alert.labels) == {"alertname": "Page", "severity": "critical", "subject": "Routing"}
    assert alert.firing and alert.ends_at > 50.0
    routed = effect_alert(alert_effect(target="replica"), 50.0)
    assert routed.name == "RouteChanged" and routed.summary == "route now replica"
    assert dict(routed.labels)["target"] == "replica"


async def test_alert_effect_goes_to_every_sink_and_fails_if_one_refuses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "setpoint.alert"):
        assert "logged" in await sinks_for().effect(alert_effect())
    assert "ALERT critical: route now " in caplog.text
    good, bad = Endpoint(), Endpoint()
    bad.status = 503
    async with TestServer(good.app()) as s1, TestServer(bad.app()) as s2:
        a = AlertSink("a", "webhook", url=str(s1.make_url("/a")))
        b = AlertSink("b", "webhook", url=str(s2.make_url("/b")))
        sinks = sinks_for(a, b)
        try:
            with pytest.raises(TransientError, match="b: POST"):
                await sinks.effect(alert_effect())
            assert json.loads(good.requests[-1][2])["labels"]["alertname"] == "Page"
            bad.status = 200
            assert await sinks.effect(alert_effect()) == "delivered to a, b"
            assert await sinks.effect(alert_effect(sink="b")) == "delivered to b"
            with pytest.raises(PermanentError, match="no alert sink named 'c'"):
                await sinks.effect(alert_effect(sink="c"))
        finally:
            await sinks.close()


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    mqtt_config.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_mqtt_options(tmp_path: Path) -> None:
    assert mqtt_config.from_args(args(), {}) is None
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    env = {mqtt_config.PASSWORD_ENV: "from-env"}
    cfg = mqtt_config.from_args(
        args("--mqtt-url", "mqtts://broker", "--mqtt-username", "u", "--mqtt-password-file",
             str(pw)), env,
    )  # fmt: skip
    assert cfg is not None and (cfg.host, cfg.port, cfg.tls) == ("broker", 8883, True)
    assert cfg.password == "hunter2" and "hunter2" not in repr(cfg)
    assert env == {}  # effects the agent runs do not inherit the password
    env = {mqtt_config.PASSWORD_ENV: "from-env"}
    cfg = mqtt_config.from_args(args("--mqtt-url", "mqtt://u@b:1884"), env)
    assert cfg is not None and (cfg.username, cfg.password, cfg.port) == ("u", "from-env", 1884)
    bad = [
        (("--mqtt-url", "http://b"), "mqtt:// or mqtts://"),
        (("--mqtt-url", "mqtt://u:hunter2@b"), "no password in the MQTT URL"),
        (("--mqtt-commands",), "needs --mqtt-url"),
        (("--mqtt-discovery",), "--mqtt-discovery needs --mqtt-url"),
        (("--mqtt-url", "mqtt://b", "--mqtt-discovery", "ha/#"), "not a topic prefix"),
        (("--mqtt-url", "mqtt://b", "--mqtt-commands", "--mqtt-allow", "resync"),
         "requires broker authentication"),
        (("--mqtt-url", "mqtt://b", "--mqtt-username", "u", "--mqtt-password-file", str(pw),
          "--mqtt-commands"), "requires --mqtt-allow"),
        (("--mqtt-url", "mqtt://b", "--mqtt-username", "u", "--mqtt-password-file", str(pw),
          "--mqtt-commands", "--mqtt-allow", "rm"), "unknown command"),
    ]  # fmt: skip
    for argv, message in bad:
        with pytest.raises(ValueError, match=message) as err:
            mqtt_config.from_args(args(*argv), {})
        assert "hunter2" not in str(err.value)
    plain = mqtt_config.from_args(args("--mqtt-url", "mqtt://b"), {})
    assert plain is not None and plain.discovery is None
    ha = mqtt_config.from_args(args("--mqtt-url", "mqtt://b", "--mqtt-discovery"), {})
    assert ha is not None and ha.discovery == "homeassistant"
    own = mqtt_config.from_args(args("--mqtt-url", "mqtt://b", "--mqtt-discovery", "/ha/x/"), {})
    assert own is not None and own.discovery == "ha/x"


def test_discovery_configs_follow_the_services() -> None:
    disc = Discovery("homeassistant", "h.example", "setpoint/h.example")
    first = dict(disc.changes({"web": 1, "db.main": 2}))
    assert set(first) == {
        "homeassistant/binary_sensor/setpoint_h_example/web_running/config",
        "homeassistant/sensor/setpoint_h_example/web_state/config",
        "homeassistant/binary_sensor/setpoint_h_example/db_main_running/config",
        "homeassistant/sensor/setpoint_h_example/db_main_state/config",
    }
    db = json.loads(first["homeassistant/sensor/setpoint_h_example/db_main_state/config"])
    assert db["state_topic"] == "setpoint/h.example/services/db.main"
    assert db["unique_id"] == "setpoint_h_example_db_main_state"
    same = {"web": 1, "db.main": 3}
    assert list(disc.changes(same)) == [] and list(disc.changes(same)) == []
    gone = list(disc.changes({"web": 1}))
    assert sorted(t for t, _ in gone) == sorted(disc.topics("db.main"))
    assert all(p == b"" for _, p in gone)


POLICY = CommandPolicy(frozenset({"maintenance_on", "resync"}), frozenset({"web"}))


@pytest.mark.parametrize(
    ("payload", "retained", "error"),
    [
        (b"{nope", False, "body is not JSON"),
        (b"[1]", False, "JSON object"),
        (b'{"command": "reset", "service": "web"}', False, "'reset' is not allowed"),
        (b'{"command": "maintenance_on", "service": "db"}', False, "'db' is not allowed"),
        (b'{"command": "maintenance_on", "service": "nope"}', False, "no service named"),
        (b'{"command": "maintenance_on"}', False, "whole agent needs '*'"),
        (b'{"command": "maintenance_on", "service": "web", "x": 1}', False, "unknown field"),
        (b'{"command": "resync"}', True, "retained commands are refused"),
        (b'{"command": "resync", "id": [1]}', False, "id must be"),
        (b"x" * 5000, False, "larger than"),
    ],
)
def test_command_allowlist_rejects(payload: bytes, retained: bool, error: str) -> None:
    request, _ident, why = authorise(payload, retained, {"web", "db"}, POLICY)
    assert request is None and error in why
    assert json.loads(reply(request, None, why)) == {"ok": False, "error": why}


def test_command_allowlist_accepts() -> None:
    body = b'{"command": "maintenance_on", "service": "web", "id": "c1"}'
    request, ident, why = authorise(body, False, {"web", "db"}, POLICY)
    assert request is not None and (request.command, request.service, ident) == (
        "maintenance_on", "web", "c1",
    )  # fmt: skip
    assert json.loads(reply(request, ident, why)) == {
        "ok": True, "error": None, "command": "maintenance_on", "service": "web", "id": "c1",
    }  # fmt: skip
    assert authorise(b'{"command": "resync"}', False, set(), POLICY)[0] is not None


def test_projection_publishes_only_what_changed() -> None:
    goals = GoalSet(services=(service("web"), service("db")))
    state, _ = step(State(), GoalsLoaded(goals, 0.0))
    proj = Projection("setpoint/h")
    first = dict(proj.changes(state))
    assert set(first) == {"setpoint/h/services/web", "setpoint/h/services/db"}
    assert proj.changes(state) == []
    state, _ = step(state, UnitObserved("web.service", "active", "running", 1.0))
    changed = dict(proj.changes(state))
    assert list(changed) == ["setpoint/h/services/web"]
    assert json.loads(changed["setpoint/h/services/web"])["active"] == "active"
    state, _ = step(state, GoalsLoaded(GoalSet(services=(service("web"),)), 2.0))
    assert dict(proj.changes(state)).get("setpoint/h/services/db") == b""
