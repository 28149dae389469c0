"""The hand-written exposition of per-service and per-probe series: parseable, promtool-clean
at scale, histogram semantics right, label values escaped."""

from __future__ import annotations

import subprocess

from prometheus_client.parser import text_string_to_metric_families

from agent.core.inputs import GoalsLoaded, ProbeResult, UnitObserved
from agent.core.spec import GoalSet, ProbeSpec, ServiceSpec
from agent.core.state import State
from agent.core.step import step
from agent.interfaces.metrics import Metrics, _label
from tests.interfaces.test_metrics import promtool, sample_state


def test_probe_histogram_counts_are_cumulative_with_le_inclusive() -> None:
    metrics = Metrics(sample_state, lambda: 10.0)
    for latency in (0.001, 0.02, 0.02, 30.0):
        metrics.observe_probe(ProbeResult("hz", latency < 1, latency, 3.0))
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    hist = {
        (s.name, s.labels.get("le")): s.value
        for s in families["setpoint_probe_latency_seconds"].samples
    }
    assert hist[("setpoint_probe_latency_seconds_bucket", "0.001")] == 1
    assert hist[("setpoint_probe_latency_seconds_bucket", "0.025")] == 3
    assert hist[("setpoint_probe_latency_seconds_bucket", "10.0")] == 3
    assert hist[("setpoint_probe_latency_seconds_bucket", "+Inf")] == 4
    assert hist[("setpoint_probe_latency_seconds_count", None)] == 4
    assert abs(hist[("setpoint_probe_latency_seconds_sum", None)] - 30.041) < 1e-9
    results = {s.labels["result"]: s.value for s in families["setpoint_probe_results"].samples}
    assert results == {"ok": 3, "fail": 1}


def test_label_values_are_escaped() -> None:
    assert _label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert _label("web-1.example@x") == "web-1.example@x"


def test_a_thousand_services_and_probes_are_promtool_clean() -> None:
    n = 1000
    probes = tuple(ProbeSpec(f"p{i}", "http", url="http://127.0.0.1:1/") for i in range(n))
    services = tuple(ServiceSpec(f"s{i}", f"s{i}.service", probes=(f"p{i}",)) for i in range(n))
    state, _ = step(State(), GoalsLoaded(GoalSet(services=services, probes=probes), 0.0))
    state, _ = step(state, UnitObserved("s1.service", "active", "running", 1.0))
    metrics = Metrics(lambda: state, lambda: 5.0)
    for i in range(n):
        metrics.observe_probe(ProbeResult(f"p{i}", True, i / 1000, 2.0))
    text = metrics.render()
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    assert len(families["setpoint_service_state"].samples) == 6 * n
    assert len(families["setpoint_probe_latency_seconds"].samples) == 16 * n
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
