"""Interfaces: Prometheus metrics. State-derived series are rendered from the committed state at
scrape time (nothing to keep in sync); event series (latencies, outcomes) are observed as they
happen.
The per-service and per-probe series are formatted directly (see `render_state`); the few
agent-wide series go through prometheus_client.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from agent import __version__
from agent.core.actions import TrackedAction
from agent.core.inputs import ActionCompleted, ProbeResult
from agent.core.state import Lifecycle, State

LIFECYCLES: tuple[str, ...] = get_args(Lifecycle)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _label(value: str) -> str:
    """A label value escaped for the text format."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
    return value


def _family(out: list[str], name: str, kind: str, text: str) -> None:
    out.append(f"# HELP {name} {text}")
    out.append(f"# TYPE {name} {kind}")


def render_state(state: State, now: float) -> list[str]:
    """Series derived from the state, as text-format lines.

    Written directly rather than through prometheus_client's collectors, which cost ~5 us per
    sample: with 1,000 services and probes that alone was 170 ms per scrape.
    """
    out: list[str] = []
    names = [(name, _label(name), svc) for name, svc in state.services.items()]
    _family(out, "setpoint_service_state", "gauge", "1 for the lifecycle state the service is in")
    for _name, label, svc in names:
        out.extend(
            f'setpoint_service_state{{service="{label}",state="{value}"}} '
            + ("1.0" if svc.lifecycle == value else "0.0")
            for value in LIFECYCLES
        )
    _family(out, "setpoint_service_state_seconds", "gauge", "Time in the current lifecycle state")
    out.extend(
        f'setpoint_service_state_seconds{{service="{label}"}} {max(0.0, now - svc.since)!r}'
        for _name, label, svc in names
    )
    for key, text in (
        ("transitions", "Lifecycle transitions"),
        ("restarts", "Start or restart jobs issued"),
        ("errors", "Entries into the Error state"),
        ("failures", "Failure cycles: entries into Error and systemd's own restarts"),
    ):
        metric = f"setpoint_service_{key}_total"
        _family(out, metric, "counter", text)
        attr = "restarts_total" if key == "restarts" else key
        out.extend(
            f'{metric}{{service="{label}"}} {float(getattr(svc, attr))!r}'
            for _name, label, svc in names
        )
    _family(out, "setpoint_service_gave_up", "gauge", "1 when the restart limit was reached")
    out.extend(
        f'setpoint_service_gave_up{{service="{label}"}} {"1.0" if svc.gave_up else "0.0"}'
        for _name, label, svc in names
    )
    _phases(out, state, now)
    _family(out, "setpoint_probe_healthy", "gauge", "1 healthy, 0 unhealthy, -1 not yet known")
    for name, probe in state.probes.items():
        value = "-1.0" if probe.healthy is None else ("1.0" if probe.healthy else "0.0")
        out.append(f'setpoint_probe_healthy{{probe="{_label(name)}"}} {value}')
    _family(out, "setpoint_domain_goal_satisfied", "gauge", "1 while the domain's goal holds")
    for name, dom in state.domains.items():
        value = "1.0" if dom.satisfied else "0.0"
        out.append(f'setpoint_domain_goal_satisfied{{domain="{_label(name)}"}} {value}')
    _family(out, "setpoint_domain_paused", "gauge", "1 while an expression of the domain fails")
    for name, dom in state.domains.items():
        value = "1.0" if dom.error else "0.0"
        out.append(f'setpoint_domain_paused{{domain="{_label(name)}"}} {value}')
    c = state.cluster
    _family(out, "setpoint_cluster_healthy", "gauge", "1 while the cluster link is healthy")
    out.append(f"setpoint_cluster_healthy {'1.0' if c.healthy else '0.0'}")
    _family(out, "setpoint_cluster_leader", "gauge", "1 while this node leads the cluster")
    out.append(f"setpoint_cluster_leader {'1.0' if c.fence else '0.0'}")
    _family(out, "setpoint_cluster_fence", "gauge", "This node's fencing token (0: not leading)")
    out.append(f"setpoint_cluster_fence {float(c.fence)!r}")
    _family(out, "setpoint_pending_actions", "gauge", "Tracked actions awaiting a result")
    out.append(f"setpoint_pending_actions {float(len(state.pending))!r}")
    _family(out, "setpoint_maintenance", "gauge", "1 while in maintenance mode")
    out.append(f"setpoint_maintenance {'1.0' if state.maintenance else '0.0'}")
    return out


def _phases(out: list[str], state: State, now: float) -> None:
    """Seed 000's phases: 1 for the one a service is in, 0 for its other declared ones."""
    phased = [(s.name, s.phases) for s in state.goals.services if s.phases]
    _family(out, "setpoint_service_phase", "gauge", "1 for the declared phase the service is in")
    for name, phases in phased:
        svc = state.services.get(name)
        current = svc.phase if svc is not None else ""
        out.extend(
            f'setpoint_service_phase{{service="{_label(name)}",phase="{_label(p.name)}"}} '
            + ("1.0" if p.name == current else "0.0")
            for p in phases
        )
    _family(out, "setpoint_service_phase_seconds", "gauge", "Time in the current phase")
    for name, _ in phased:
        svc = state.services.get(name)
        if svc is not None and svc.phase:
            held = max(0.0, now - svc.phase_since)
            out.append(f'setpoint_service_phase_seconds{{service="{_label(name)}"}} {held!r}')


class ProbeSeries:
    """Per-probe latency histograms and result counters, kept as plain numbers."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self._bounds = buckets
        self._les = [repr(float(b)) for b in buckets] + ["+Inf"]
        self._hist: dict[str, tuple[list[int], list[float]]] = {}
        self._results: dict[tuple[str, str], int] = {}
        self.last: dict[str, float] = {}
        """Each probe's latest latency (the status page shows it)."""

    def observe(self, result: ProbeResult) -> None:
        self.last[result.probe] = result.latency
        counts, total = self._hist.setdefault(result.probe, ([0] * len(self._les), [0.0]))
        counts[bisect.bisect_left(self._bounds, result.latency)] += 1
        total[0] += result.latency
        key = (result.probe, "ok" if result.ok else "fail")
        self._results[key] = self._results.get(key, 0) + 1

    def render(self) -> list[str]:
        out: list[str] = []
        name = "setpoint_probe_latency_seconds"
        _family(out, name, "histogram", "Probe round-trip time")
        for probe, (counts, total) in self._hist.items():
            label = _label(probe)
            running = 0
            for le, count in zip(self._les, counts, strict=True):
                running += count
                out.append(f'{name}_bucket{{le="{le}",probe="{label}"}} {float(running)!r}')
            out.append(f'{name}_count{{probe="{label}"}} {float(running)!r}')
            out.append(f'{name}_sum{{probe="{label}"}} {total[0]!r}')
        _family(out, "setpoint_probe_results_total", "counter", "Probe results")
        for (probe, result), count in self._results.items():
            line = f'setpoint_probe_results_total{{probe="{_label(probe)}",result="{result}"}}'
            out.append(f"{line} {float(count)!r}")
        return out


class Metrics:
    """The agent's registry and the event series the runtime and adapters feed."""

    def __init__(self, state: Callable[[], State], clock: Callable[[], float] = time.time) -> None:
        self._state = state
        self._clock = clock
        self.probes = ProbeSeries()
        reg = self.registry = CollectorRegistry(auto_describe=True)
        Gauge("setpoint_build_info", "Build information", ["version"], registry=reg).labels(
            __version__
        ).set(1)
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
        self.projection_errors = Counter(
            "setpoint_projection_errors",
            "Failures of what follows a commit (the MQTT state publisher...)",
            ["projection"],
            registry=reg,
        )
        self.links = Gauge(
            "setpoint_link_up",
            "1 while the connection is up (systemd: subscribed and resynced; mqtt: to the broker)",
            ["link"],
            registry=reg,
        )

    def watch_link(self, name: str, up: Callable[[], bool]) -> None:
        """Report `up()` as setpoint_link_up{link=name} at every scrape."""
        self.links.labels(name).set_function(lambda: float(up()))

    def watch_runtime(self, degraded: Callable[[], bool], backlog: Callable[[], int]) -> None:
        """setpoint_journal_degraded and setpoint_runtime_backlog, read at every scrape."""
        Gauge(
            "setpoint_journal_degraded",
            "1 while the journal cannot write and the agent supervises without a record",
            registry=self.registry,
        ).set_function(lambda: float(degraded()))
        Gauge(
            "setpoint_runtime_backlog",
            "Inputs waiting for the loop (they back up while a commit is slow)",
            registry=self.registry,
        ).set_function(lambda: float(backlog()))

    def observe_probe(self, result: ProbeResult) -> None:
        self.probes.observe(result)

    # -- the runtime's Observer ----------------------------------------------------------------

    def batch(self, inputs: int, journaled: int, stepping: float, commit: float) -> None:
        self.inputs.inc(inputs)
        self.step.inc(stepping)
        if journaled:
            self.commit.observe(commit)

    def journal_failed(self) -> None:
        self.journal_errors.inc()

    def retried(self, lane: str) -> None:
        self.retries.labels(lane).inc()

    def projection_failed(self, name: str) -> None:
        self.projection_errors.labels(name).inc()

    def completed(self, action: TrackedAction | None, done: ActionCompleted) -> None:
        kind = action.lane.split(":", 1)[0] if action is not None else "unknown"
        outcome = "ok" if done.ok else ("permanent_failure" if done.permanent else "failure")
        self.actions.labels(kind, outcome).inc()

    def observe_reload(self, ok: bool, at: float) -> None:
        self.reload_ok.set(float(ok))
        if ok:
            self.reload_time.set(at)

    def render(self) -> bytes:
        """The whole exposition: state-derived and per-probe series, then the registry's."""
        lines = render_state(self._state(), self._clock())
        lines += self.probes.render()
        return ("\n".join(lines) + "\n").encode() + generate_latest(self.registry)
