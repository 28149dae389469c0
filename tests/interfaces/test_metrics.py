"""Metrics follow Prometheus conventions (checked by the real promtool) and reflect the state."""

from __future__ import annotations

import subprocess
from dataclasses import replace

from aiohttp.test_utils import TestClient, TestServer
from immutables import Map

from agent.core.actions import UnitJob
from agent.core.inputs import (
    ActionCompleted,
    GoalsLoaded,
    GoalsRejected,
    ProbeResult,
    UnitObserved,
)
from agent.core.spec import GoalSet
from agent.core.state import GroupState, State
from agent.core.step import step
from agent.interfaces import http as httpapi
from agent.interfaces.metrics import Metrics
from agent.interfaces.views import status_dict, status_text
from tests.corekit import http_probe, routing_domain, service
from tests.needs import tool


def sample_state() -> State:
    goals = GoalSet(
        services=(service("web", probes=("hz",)), service("db-primary", desired="unmanaged")),
        probes=(http_probe("hz"),),
        domains=(routing_domain(),),
    )
    state, _ = step(State(), GoalsLoaded(goals, 0.0))
    for inp in (
        UnitObserved("web.service", "active", "running", 1.0),
        UnitObserved("db-primary.service", "failed", "failed", 2.0),
        ProbeResult("hz", True, 0.02, 3.0),
    ):
        state, _ = step(state, inp)
    return state


def promtool() -> str:
    return tool("promtool", "prometheus")


def test_promtool_check_metrics_is_clean() -> None:
    metrics = Metrics(sample_state, lambda: 10.0)
    metrics.observe_probe(ProbeResult("hz", True, 0.02, 3.0))
    metrics.completed(UnitJob(1, "web.service", "start", "web"), ActionCompleted(1, True, 4))
    metrics.commit.observe(0.003)
    metrics.watch_link("systemd", lambda: True)
    text = metrics.render()
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.decode() + result.stderr.decode() == ""


def test_series_reflect_the_state() -> None:
    text = Metrics(sample_state, lambda: 10.0).render().decode()
    assert 'setpoint_service_state{service="web",state="Running"} 1.0' in text
    assert 'setpoint_service_state{service="web",state="Error"} 0.0' in text
    assert 'setpoint_service_state{service="db-primary",state="Error"} 1.0' in text
    assert 'setpoint_service_state_seconds{service="db-primary"} 8.0' in text
    assert 'setpoint_probe_healthy{probe="hz"} 1.0' in text
    assert 'setpoint_domain_goal_satisfied{domain="DatabaseRouting"} 0.0' in text
    assert "setpoint_pending_actions 2.0" in text
    assert 'setpoint_build_info{version="0.1.0"} 1.0' in text


def test_link_state_is_read_at_every_scrape() -> None:
    metrics = Metrics(sample_state, lambda: 10.0)
    up = [True]
    metrics.watch_link("mqtt", lambda: up[0])
    assert 'setpoint_link_up{link="mqtt"} 1.0' in metrics.render().decode()
    up[0] = False
    assert 'setpoint_link_up{link="mqtt"} 0.0' in metrics.render().decode()


async def test_http_endpoint_serves_metrics_health_and_status() -> None:
    state = sample_state()
    alive = [True]
    app = httpapi.app(Metrics(lambda: state), lambda: state, lambda: alive[0], lambda: 10.0)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        assert "setpoint_service_state" in await resp.text()
        status = await (await client.get("/api/v1/status")).json()
        assert status["services"]["db-primary"]["lifecycle"] == "Error"
        assert status["domains"]["DatabaseRouting"]["satisfied"] is False
        assert (await client.get("/healthz")).status == 200
        alive[0] = False
        assert (await client.get("/healthz")).status == 503
        assert (await client.post("/metrics")).status == 405
        assert (await client.get("/nope")).status == 404


def test_status_shows_routes_and_firing_alerts() -> None:
    state, _ = step(sample_state(), GoalsRejected(("g.yaml:3:1: unknown key 'x'",), 4.0))
    state = replace(state, groups=Map({"db": GroupState(route="replica", applied="primary",
                                                         switches=2)}))  # fmt: skip
    view = status_dict(state, 64.0)
    assert view["groups"] == {"db": {"route": "replica", "applied": "primary", "switches": 2}}
    [alert] = view["alerts"]
    assert (alert["name"], alert["subject"], alert["for_seconds"]) == ("GoalsInvalid", "goals", 60)
    text = status_text(view)
    assert "group db: route replica (switching from primary); 2 switches" in text
    assert (
        "alerts firing: 1\n  warning  GoalsInvalid (goals) for 1.0m: goal reload rejected" in text
    )
