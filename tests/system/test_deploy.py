"""deploy/: the Grafana dashboard only queries metrics the agent really exposes, and every PromQL
expression parses (promtool); the Prometheus and Alertmanager examples pass their own checkers."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from agent.core.actions import UnitJob
from agent.core.inputs import ActionCompleted, GoalsLoaded, ProbeResult, UnitObserved
from agent.core.spec import GoalSet
from agent.core.state import State
from agent.core.step import step
from agent.interfaces.metrics import Metrics
from tests import needs
from tests.agentproc import ROOT
from tests.corekit import http_probe, routing_domain, service

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "setpoint-dashboard.json"
METRIC = re.compile(r"\bsetpoint_[a-z0-9_]+")
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "$instance": ".*"}


def exposed_names() -> set[str]:
    """Every sample name in /metrics for a state with services, probes, a domain and events."""
    goals = GoalSet(
        services=(service("web", probes=("hz",)), service("db-primary")),
        probes=(http_probe("hz"),),
        domains=(routing_domain(),),
    )
    state, _ = step(State(), GoalsLoaded(goals, 0.0))
    state, _ = step(state, UnitObserved("web.service", "active", "running", 1.0))
    metrics = Metrics(lambda: state, lambda: 10.0)
    metrics.observe_probe(ProbeResult("hz", True, 0.02, 3.0))
    job = UnitJob(1, "web.service", "start", "web")
    metrics.completed(job, ActionCompleted(1, True, 4.0))
    metrics.observe_reload(True, 5.0)
    metrics.commit.observe(0.001)
    text = metrics.render().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p["targets"]]


def test_dashboard_is_valid_json_with_the_expected_panels() -> None:
    dash = dashboard()
    panels = dash["panels"]
    assert dash["uid"] == "setpoint" and dash["schemaVersion"] >= 30
    assert len({p["id"] for p in panels}) == len(panels)
    assert len({p["title"] for p in panels}) == len(panels)
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("state", "restarts", "probe latency", "failover", "alerts", "pending actions"):
        assert topic in titles, topic
    for p in panels:
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"][
            "w"
        ] <= 24


def test_every_panel_queries_metrics_the_agent_exposes() -> None:
    names = exposed_names()
    assert {"setpoint_service_state", "setpoint_probe_latency_seconds_bucket"} <= names
    assert {"setpoint_actions_total", "setpoint_pending_actions"} <= names
    for title, expr in exprs():
        used = set(METRIC.findall(expr))
        assert used, f"{title}: {expr} queries no setpoint_ metric"
        assert used <= names, f"{title}: {sorted(used - names)} not exposed by the agent"


def test_prometheus_rules_use_exposed_metrics() -> None:
    names = exposed_names()
    rules = yaml.safe_load((DEPLOY / "prometheus" / "setpoint-rules.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        used = set(METRIC.findall(rule["expr"]))
        assert used <= names, f"{rule['alert']}: {sorted(used - names)} not exposed"


def tool(name: str) -> str:
    return needs.tool(name, "prometheus" if name == "promtool" else "prometheus-alertmanager")


def run(*argv: str | Path) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """promtool has no query linter: each expression becomes a recording rule it must parse."""
    rules = []
    for i, (_, expr) in enumerate(exprs()):
        promql = expr
        for var, value in GRAFANA_VARS.items():
            promql = promql.replace(var, value)
        assert "$" not in promql, promql
        rules.append({"record": f"dashboard:expr_{i}", "expr": promql})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run(tool("promtool"), "check", "rules", path)


def test_prometheus_example_is_valid() -> None:
    promtool = tool("promtool")
    run(promtool, "check", "config", DEPLOY / "prometheus" / "prometheus.yml")
    run(promtool, "check", "rules", DEPLOY / "prometheus" / "setpoint-rules.yml")


def test_alertmanager_example_is_valid() -> None:
    run(tool("amtool"), "check-config", DEPLOY / "alertmanager" / "alertmanager.yml")
