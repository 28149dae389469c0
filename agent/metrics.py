"""Prometheus metrics. State-derived series are rendered from the committed state at scrape
time (nothing to keep in sync); event series (latencies, outcomes) are observed as they happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import __version__
from agent.core.actions import TrackedAction
from agent.core.inputs import ActionCompleted, ProbeResult
from agent.core.state import Lifecycle, State

LIFECYCLES: tuple[str, ...] = get_args(Lifecycle)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class StateCollector(Collector):
    """Series derived from the state: lifecycle, time in state, counters, goals, pending."""

    def __init__(self, state: Callable[[], State], clock: Callable[[], float]) -> None:
        self._state = state
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        state, now = self._state(), self._clock()
        lifecycle = GaugeMetricFamily(
            "setpoint_service_state",
            "1 for the lifecycle state the service is in",
            labels=["service", "state"],
        )
        since = GaugeMetricFamily(
            "setpoint_service_state_seconds",
            "Time in the current lifecycle state",
            labels=["service"],
        )
        counters = {
            key: CounterMetricFamily(f"setpoint_service_{key}", text, labels=["service"])
            for key, text in (
                ("transitions", "Lifecycle transitions"),
                ("restarts", "Start or restart jobs issued"),
                ("errors", "Entries into the Error state"),
            )
        }
        gave_up = GaugeMetricFamily(
            "setpoint_service_gave_up", "1 when the restart limit was reached", labels=["service"]
        )
        for name, svc in state.services.items():
            for value in LIFECYCLES:
                lifecycle.add_metric([name, value], 1.0 if svc.lifecycle == value else 0.0)
            since.add_metric([name], max(0.0, now - svc.since))
            counters["transitions"].add_metric([name], svc.transitions)
            counters["restarts"].add_metric([name], svc.restarts_total)
            counters["errors"].add_metric([name], svc.errors)
            gave_up.add_metric([name], float(svc.gave_up))
        yield from (lifecycle, since, *counters.values(), gave_up)
        yield from self._others(state)

    def _others(self, state: State) -> Iterator[Metric]:
        healthy = GaugeMetricFamily(
            "setpoint_probe_healthy", "1 healthy, 0 unhealthy, -1 not yet known", labels=["probe"]
        )
        for name, probe in state.probes.items():
            healthy.add_metric([name], -1.0 if probe.healthy is None else float(probe.healthy))
        goal = GaugeMetricFamily(
            "setpoint_domain_goal_satisfied", "1 while the domain's goal holds", labels=["domain"]
        )
        for name, dom in state.domains.items():
            goal.add_metric([name], float(dom.satisfied))
        pending = GaugeMetricFamily("setpoint_pending_actions", "Tracked actions awaiting a result")
        pending.add_metric([], len(state.pending))
        maintenance = GaugeMetricFamily("setpoint_maintenance", "1 while in maintenance mode")
        maintenance.add_metric([], float(state.maintenance))
        yield from (healthy, goal, pending, maintenance)


class Metrics:
    """The agent's registry and the event series the runtime and adapters feed."""

    def __init__(self, state: Callable[[], State], clock: Callable[[], float] = time.time) -> None:
        reg = self.registry = CollectorRegistry(auto_describe=True)
        reg.register(StateCollector(state, clock))
        Gauge("setpoint_build_info", "Build information", ["version"], registry=reg).labels(
            __version__
        ).set(1)
        self.probe_latency = Histogram(
            "setpoint_probe_latency_seconds",
            "Probe round-trip time",
            ["probe"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.probe_results = Counter(
            "setpoint_probe_results", "Probe results", ["probe", "result"], registry=reg
        )
        self.actions = Counter(
            "setpoint_actions", "Tracked actions finished", ["kind", "outcome"], registry=reg
        )
        self.retries = Counter("setpoint_action_retries", "Effect retries", ["lane"], registry=reg)
        self.commit = Histogram(
            "setpoint_journal_commit_seconds",
            "Journal commit latency (one per batch)",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.step = Counter("setpoint_step_seconds", "CPU time spent in step", registry=reg)
        self.inputs = Counter("setpoint_inputs", "Inputs processed", registry=reg)
        self.reload_ok = Gauge(
            "setpoint_config_last_reload_successful",
            "1 if the last goal load succeeded",
            registry=reg,
        )
        self.reload_time = Gauge(
            "setpoint_config_last_reload_success_timestamp_seconds",
            "When goals were last loaded successfully",
            registry=reg,
        )
        self.journal_errors = Counter(
            "setpoint_journal_errors", "Journal operations that failed", registry=reg
        )

    def observe_probe(self, result: ProbeResult) -> None:
        self.probe_latency.labels(result.probe).observe(result.latency)
        self.probe_results.labels(result.probe, "ok" if result.ok else "fail").inc()

    def observe_completion(self, action: TrackedAction | None, done: ActionCompleted) -> None:
        kind = action.lane.split(":", 1)[0] if action is not None else "unknown"
        outcome = "ok" if done.ok else ("permanent_failure" if done.permanent else "failure")
        self.actions.labels(kind, outcome).inc()

    def observe_reload(self, ok: bool, at: float) -> None:
        self.reload_ok.set(float(ok))
        if ok:
            self.reload_time.set(at)

    def render(self) -> bytes:
        return generate_latest(self.registry)
