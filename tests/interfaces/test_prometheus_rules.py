"""deploy/prometheus: rules and config checked and unit-tested by the real promtool, and every
metric the rules use is one the agent exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from agent.interfaces.metrics import Metrics
from tests.interfaces.test_metrics import promtool, sample_state

DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def run_promtool(*args: str) -> str:
    result = subprocess.run(
        [promtool(), *args], cwd=DIR, capture_output=True, text=True, check=False, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_rules_are_valid() -> None:
    assert "SUCCESS: 12 rules found" in run_promtool("check", "rules", "setpoint-rules.yml")


def test_rules_unit_tests_pass() -> None:
    assert "SUCCESS" in run_promtool("test", "rules", "setpoint-rules.test.yml")


def test_scrape_config_example_is_valid() -> None:
    assert "is valid prometheus config" in run_promtool("check", "config", "prometheus.yml")


def test_rules_use_only_metrics_the_agent_exports() -> None:
    rules = yaml.safe_load((DIR / "setpoint-rules.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {name for e in exprs for name in re.findall(r"\bsetpoint_[a-z_]+", e)}
    assert used >= {"setpoint_service_state", "setpoint_journal_errors_total"}
    exported = Metrics(sample_state, lambda: 10.0).render().decode()
    names = set(re.findall(r"^# TYPE (\S+)", exported, re.M))
    names |= {f"{n}_total" for n in names}
    assert used <= names, used - names
    tested = (DIR / "setpoint-rules.test.yml").read_text()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert f"alertname: {rule['alert']}" in tested, f"{rule['alert']} has no unit test"
