"""Goals: Build the core's frozen GoalSet from merged, checked models; sorted by name, with a
digest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from agent.core.spec import (
    AlertSink,
    AlertThresholds,
    DomainSpec,
    Effect,
    FailoverGroup,
    GoalSet,
    Member,
    Phase,
    ProbeSpec,
    RestartPolicy,
    Scalar,
    ServiceSpec,
    StateVar,
    Transition,
)
from agent.goals.merged import Entry, Merged
from agent.goals.model import (
    DomainModel,
    EffectModel,
    GroupModel,
    ProbeModel,
    ServiceModel,
    SinkModel,
    VarModel,
)

_ZERO: dict[str, Scalar] = {"string": "", "bool": False, "int": 0, "double": 0.0}


def given(**fields: Any) -> dict[str, Any]:
    """Only the fields that were set, so the dataclass defaults apply to the rest."""
    return {k: v for k, v in fields.items() if v is not None}


def build(merged: Merged) -> GoalSet:
    """The GoalSet with every mapping sorted by name and `digest` over its content."""
    goals = GoalSet(
        services=tuple(service(n, merged.services[n].model) for n in sorted(merged.services)),
        probes=tuple(probe(n, merged.probes[n].model) for n in sorted(merged.probes)),
        domains=tuple(_domain(merged.domains[n]) for n in sorted(merged.domains)),
        groups=tuple(group(n, merged.groups[n].model) for n in sorted(merged.groups)),
        sinks=tuple(sink(n, merged.sinks[n].model) for n in sorted(merged.sinks)),
    )
    return dataclasses.replace(goals, digest=digest(goals))


def digest(goals: GoalSet) -> str:
    """sha256 of the canonical JSON of the content: not the digest, not where things are written."""
    domains = tuple(dataclasses.replace(d, origins=()) for d in goals.domains)
    return _sha256(dataclasses.asdict(dataclasses.replace(goals, digest="", domains=domains)))


def _sha256(content: dict[str, Any]) -> str:
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def service(name: str, m: ServiceModel) -> ServiceSpec:
    """A ServiceSpec; restart.backoff -> backoff_initial, restart.factor -> backoff_factor."""
    r, a = m.restart, m.alerts
    restart = RestartPolicy()
    if r is not None:
        restart = RestartPolicy(
            **given(
                backoff_initial=r.backoff,
                backoff_max=r.backoff_max,
                backoff_factor=r.factor,
                limit=r.limit,
                window=r.window,
                stable_for=r.stable_for,
            )
        )
    alerts = AlertThresholds(**given(**a.model_dump())) if a is not None else AlertThresholds()
    return ServiceSpec(
        name=name,
        unit=m.unit,
        probes=tuple(m.probes),
        restart=restart,
        depends_on=tuple(m.dependencies),
        restart_with=tuple(m.restart_with),
        alerts=alerts,
        phases=tuple(
            Phase(n, p.when, **given(alert_after=p.alert_after)) for n, p in m.phases.items()
        ),
        **given(desired=m.desired, on_unhealthy=m.on_unhealthy, stop_grace=m.stop_grace),
    )


def probe(name: str, m: ProbeModel) -> ProbeSpec:
    """A ProbeSpec carrying the fields of its one check kind."""
    timing = given(
        interval=m.interval,
        timeout=m.timeout,
        latency_budget=m.latency_budget,
        failures=m.failures,
        successes=m.successes,
        start_period=m.start_period,
    )
    if m.http is not None:
        h = m.http
        check = given(
            url=h.url,
            method=h.method,
            expect_status=tuple(h.expect_status) if h.expect_status is not None else None,
            body_contains=h.body_contains,
            json_field=h.json_field,
            json_equals=h.json_equals,
            headers=tuple(sorted(h.headers.items())),
            tls_verify=h.tls_verify,
        )
        return ProbeSpec(name=name, kind="http", **timing, **check)
    if m.tcp is not None:
        return ProbeSpec(name=name, kind="tcp", host=m.tcp.host, port=m.tcp.port, **timing)
    if m.exec is not None:
        exits = tuple(m.exec.expect_exit) if m.exec.expect_exit is not None else None
        check = given(argv=tuple(m.exec.argv), expect_exit=exits)
        return ProbeSpec(name=name, kind="exec", **timing, **check)
    assert m.jsonrpc is not None  # the model guarantees exactly one kind
    rpc = m.jsonrpc
    params = json.dumps(rpc.params, separators=(",", ":")) if rpc.params else None
    check = given(url=rpc.url, rpc_method=rpc.method, rpc_params=params, tls_verify=rpc.tls_verify)
    return ProbeSpec(name=name, kind="jsonrpc", **timing, **check)


def effect(m: EffectModel) -> Effect:
    """An Effect of the one kind the mapping names."""
    if m.exec is not None:
        env = tuple(sorted(m.exec.env.items()))
        return Effect("exec", argv=tuple(m.exec.argv), env=env, **given(timeout=m.exec.timeout))
    if m.alert is not None:
        a = m.alert
        return Effect("alert", summary=a.summary, **given(severity=a.severity, sink=a.sink))
    if m.systemd is not None:
        return Effect("systemd", unit=m.systemd.unit, operation=m.systemd.operation)
    if m.http is not None:
        return Effect("http", url=m.http.url, **given(method=m.http.method, body=m.http.body))
    if m.file is not None:
        return Effect("file", path=m.file.path)
    assert m.mqtt is not None  # the model guarantees exactly one kind
    return Effect("mqtt", topic=m.mqtt.topic, **given(payload=m.mqtt.payload))


def variable(name: str, m: VarModel) -> StateVar:
    """A StateVar; a missing default is the type's zero, an int default of a double widens."""
    default: Scalar = _ZERO[m.type] if m.default is None else m.default
    if m.type == "double":
        default = float(default)
    return StateVar(name=name, type=m.type, default=default, bind=m.bind or "")


def domain(name: str, m: DomainModel) -> DomainSpec:
    """A DomainSpec; variables and transitions keep their file order."""
    transitions = tuple(
        Transition(
            name=t_name,
            guard=t.when,
            effects=tuple(effect(e) for e in t.effects),
            assign=tuple((k, _widen(v, m.state[k].type)) for k, v in t.assign.items()),
            **given(retry_after=t.retry_after),
        )
        for t_name, t in m.transitions.items()
    )
    variables = tuple(variable(n, v) for n, v in m.state.items())
    spec = DomainSpec(name=name, variables=variables, goal=m.goal, transitions=transitions,
                      scope=m.scope or "local")  # fmt: skip
    return dataclasses.replace(spec, digest=_sha256(dataclasses.asdict(spec)))


def _domain(entry: Entry[DomainModel]) -> DomainSpec:
    """The DomainSpec with the file position of each of its expressions."""
    m = entry.model
    spec = domain(entry.name, m)
    places: list[tuple[str, tuple[str, ...]]] = [(m.goal, ("goal",))]
    places += [(v.bind, ("state", n, "bind")) for n, v in m.state.items() if v.bind]
    places += [(t.when, ("transitions", n, "when")) for n, t in m.transitions.items()]
    origins = []
    for text, loc in places:
        node = entry.node(*loc)
        if node is not None:
            mark = node.start_mark
            origins.append((text, f"{entry.doc.file}:{mark.line + 1}:{mark.column + 1}"))
    return dataclasses.replace(spec, origins=tuple(origins))


def _widen(value: Scalar, kind: str) -> Scalar:
    return float(value) if kind == "double" else value


def group(name: str, m: GroupModel) -> FailoverGroup:
    """A FailoverGroup; members keep their order of preference."""
    members = tuple(
        Member(name=x.name, service=x.service or "", probes=tuple(x.probes), node=x.node or "")
        for x in m.members
    )
    effects = tuple(effect(e) for e in m.effects)
    opts = given(switch_after=m.switch_after, auto_restore=m.auto_restore)
    spec = FailoverGroup(name=name, members=members, effects=effects, scope=m.scope or "local",
                         **opts)  # fmt: skip
    return dataclasses.replace(spec, digest=_sha256(dataclasses.asdict(spec)))


def sink(name: str, m: SinkModel) -> AlertSink:
    """An AlertSink of the one kind the mapping names."""
    opts = given(repeat_interval=m.repeat_interval)
    if m.alertmanager is not None:
        return AlertSink(name=name, kind="alertmanager", url=m.alertmanager.url, **opts)
    if m.webhook is not None:
        secret = m.webhook.secret_env or ""
        return AlertSink(name=name, kind="webhook", url=m.webhook.url, secret_env=secret, **opts)
    assert m.mqtt is not None  # the model guarantees exactly one kind
    return AlertSink(name=name, kind="mqtt", topic=m.mqtt.topic, **opts)
