"""Goals: The goal-file schema as pydantic models: strict types, unknown keys forbidden.

Optional fields are None when absent; the builder then takes the defaults from the core's
dataclasses, so each default lives in one place (agent/core/spec.py).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from agent.goals.durations import PATTERN as DURATION_PATTERN
from agent.goals.durations import within

API_VERSION = "setpoint/v1"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".target", ".mount", ".path")
MAX_EXPRESSION = 10_000
MAX_ITEMS = 10_000
"""Names of one kind (services, probes, ...) across all goal files: a large fleet, not more."""
_UNIT = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.[a-z]+$")

_DURATION_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "number", "minimum": 0, "description": "seconds"},
            {"type": "string", "pattern": DURATION_PATTERN, "examples": ["500ms", "5s", "1m30s"]},
        ]
    }
)
_SCALAR_SCHEMA = WithJsonSchema({"type": ["string", "boolean", "integer", "number"]})


def _unit(value: str) -> str:
    if not value.endswith(UNIT_SUFFIXES):
        raise ValueError(f"unit {value[:80]!r} must end in {', '.join(UNIT_SUFFIXES)}")
    if _UNIT.match(value) is None:
        raise ValueError(f"invalid unit name {value[:80]!r}")
    return value


def _argv(value: object) -> object:
    if isinstance(value, str):
        raise ValueError("argv must be a list of arguments, not a shell string")
    if isinstance(value, list) and not value:
        raise ValueError("argv must not be empty")
    return value


def _scalar(value: object) -> object:
    if not isinstance(value, str | bool | int | float):
        raise ValueError(f"expected a string, bool, int or double, got {type(value).__name__}")
    if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        raise ValueError("integer out of range: CEL integers are 64-bit (about ±9.2e18)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("number must be finite")
    return value


Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Unit = Annotated[str, AfterValidator(_unit)]
# Documented ranges (README "Ranges"): nothing a timer or a counter could overflow on.
DAY = 86_400.0
MAX_COUNT = 10_000
INT64 = (-(2**63), 2**63 - 1)
Duration = Annotated[float, BeforeValidator(within(0, 30 * DAY)), _DURATION_SCHEMA]
Interval = Annotated[float, BeforeValidator(within(0.01, DAY)), _DURATION_SCHEMA]
Window = Annotated[float, BeforeValidator(within(1, 30 * DAY)), _DURATION_SCHEMA]
Argv = Annotated[list[str], BeforeValidator(_argv)]
Url = Annotated[str, StringConstraints(pattern=r"^https?://\S+$")]
Expression = Annotated[str, StringConstraints(min_length=1, max_length=MAX_EXPRESSION)]
ScalarValue = Annotated[Any, AfterValidator(_scalar), _SCALAR_SCHEMA]
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class Strict(BaseModel):
    """Base: strict types, unknown keys are errors, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _exactly_one(model: BaseModel, kinds: tuple[str, ...], what: str) -> None:
    given = [k for k in kinds if getattr(model, k) is not None]
    if len(given) != 1:
        found = f"; found {', '.join(given)}" if given else ""
        raise ValueError(f"{what} needs exactly one of {', '.join(kinds)}{found}")


class RestartModel(Strict):
    """`restart:` exponential backoff and give-up policy."""

    backoff: Duration | None = None
    backoff_max: Duration | None = None
    factor: Annotated[float, Field(ge=1, le=100)] | None = None
    limit: Count | None = None
    window: Window | None = None
    stable_for: Duration | None = None


class AlertsModel(Strict):
    """`alerts:` per-service overrides of the lifecycle alert rules."""

    error_for: Duration | None = None
    starting_for: Duration | None = None
    stopping_for: Duration | None = None
    thrash_transitions: Count | None = None
    thrash_window: Window | None = None


class DependencyModel(Strict):
    """A `depends_on` entry written as a mapping: `{service: db, restart: true}` also restarts
    the dependant once `db` restarted and is Running again."""

    service: Name
    restart: bool = False


class PhaseModel(Strict):
    """A phase of a service (seed 000): a CEL condition; `alert_after` fires ServicePhaseTooLong."""

    when: Expression
    alert_after: Duration | None = None


class ServiceModel(Strict):
    """A systemd unit under management."""

    unit: Unit
    desired: Literal["running", "stopped", "unmanaged"] | None = None
    probes: list[Name] = []
    on_unhealthy: Literal["restart", "alert", "none"] | None = None
    restart: RestartModel | None = None
    depends_on: list[Name | DependencyModel] = []
    alerts: AlertsModel | None = None
    stop_grace: Duration | None = None
    phases: Annotated[dict[Name, PhaseModel], Field(max_length=100)] = {}

    @property
    def dependencies(self) -> list[str]:
        """The names in `depends_on`, in order."""
        return [d if isinstance(d, str) else d.service for d in self.depends_on]

    @property
    def restart_with(self) -> list[str]:
        """The dependencies whose restart restarts this service."""
        return [d.service for d in self.depends_on if not isinstance(d, str) and d.restart]


class HttpCheck(Strict):
    """`http:` probe: a request whose answer must match."""

    url: Url
    method: HttpMethod | None = None
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] | None = None
    body_contains: str | None = None
    json_field: str | None = None
    json_equals: str | None = None
    headers: dict[str, str] = {}
    tls_verify: bool | None = None


class TcpCheck(Strict):
    """`tcp:` probe: a connection must open."""

    host: Annotated[str, StringConstraints(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)]


class ExecCheck(Strict):
    """`exec:` probe: a command must exit with an expected status."""

    argv: Argv
    expect_exit: list[Annotated[int, Field(ge=0, le=255)]] | None = None


class JsonRpcCheck(Strict):
    """`jsonrpc:` probe: a JSON-RPC call must answer without error."""

    url: Url
    method: Annotated[str, StringConstraints(min_length=1)]
    params: Annotated[list[JsonValue], Field(max_length=100)] = []
    tls_verify: bool | None = None


PROBE_KINDS = ("http", "tcp", "exec", "jsonrpc")


class ProbeModel(Strict):
    """A health check: exactly one of http, tcp, exec, jsonrpc, plus its timing."""

    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    exec: ExecCheck | None = None
    jsonrpc: JsonRpcCheck | None = None
    interval: Interval | None = None
    timeout: Interval | None = None
    latency_budget: Interval | None = None
    failures: Count | None = None
    successes: Count | None = None
    start_period: Duration | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ProbeModel:
        _exactly_one(self, PROBE_KINDS, "a probe")
        return self


class ExecEffect(Strict):
    """Run a command (never through a shell)."""

    argv: Argv
    env: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str] = {}
    timeout: Interval | None = None


class AlertEffect(Strict):
    """Send an alert to one sink, or to every sink when `sink` is absent."""

    summary: Annotated[str, StringConstraints(min_length=1)]
    severity: Literal["critical", "warning", "info"] | None = None
    sink: Name | None = None


class SystemdEffect(Strict):
    """Start, stop or restart a unit."""

    unit: Unit
    operation: Literal["start", "stop", "restart"]


class HttpEffect(Strict):
    """Make an HTTP request."""

    url: Url
    method: HttpMethod | None = None
    body: str | None = None


class MqttEffect(Strict):
    """Publish an MQTT message."""

    topic: Annotated[str, StringConstraints(min_length=1)]
    payload: str | None = None


class FileEffect(Strict):
    """Write the route target to a file atomically (temp file, fsync, rename)."""

    path: Annotated[str, StringConstraints(min_length=2, pattern=r"^/")]


EFFECT_KINDS = ("exec", "alert", "systemd", "http", "mqtt", "file")


class EffectModel(Strict):
    """A single-key mapping naming the effect's kind."""

    exec: ExecEffect | None = None
    alert: AlertEffect | None = None
    systemd: SystemdEffect | None = None
    http: HttpEffect | None = None
    mqtt: MqttEffect | None = None
    file: FileEffect | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> EffectModel:
        _exactly_one(self, EFFECT_KINDS, "an effect")
        return self


class MemberModel(Strict):
    """A failover group member: a service (with its probes) and/or probes of its own."""

    name: Name
    service: Name | None = None
    probes: list[Name] = []
    node: Name | None = None

    @model_validator(mode="after")
    def _judged(self) -> MemberModel:
        if self.service is None and not self.probes:
            raise ValueError("a member needs a service or probes")
        return self


class GroupModel(Strict):
    """Seed 002: a route among members, switched after consecutive bad verdicts."""

    members: Annotated[list[MemberModel], Field(min_length=1)]
    switch_after: Count | None = None
    auto_restore: bool | None = None
    effects: list[EffectModel] = []
    scope: Literal["local", "cluster"] | None = None

    @model_validator(mode="after")
    def _nodes(self) -> GroupModel:
        cluster = self.scope == "cluster"
        for member in self.members:
            if cluster and member.node is None:
                raise ValueError(f"member '{member.name}' of a cluster group needs a node")
            if not cluster and member.node is not None:
                raise ValueError(f"member '{member.name}' names a node: needs `scope: cluster`")
        return self


class VarModel(Strict):
    """A typed domain variable; `bind` derives it from facts instead of transitions."""

    type: Literal["string", "bool", "int", "double"]
    default: ScalarValue = None
    bind: Expression | None = None


class TransitionModel(Strict):
    """A guarded step: when `when` holds, run `effects`, then apply `set`."""

    model_config = ConfigDict(populate_by_name=False)

    when: Expression
    effects: list[EffectModel] = []
    assign: dict[str, ScalarValue] = Field(default={}, alias="set")
    retry_after: Duration | None = None


class DomainModel(Strict):
    """Seed 001: variables, a goal predicate over them, and transitions."""

    state: dict[str, VarModel] = {}
    goal: Expression
    transitions: dict[Name, TransitionModel] = {}
    scope: Literal["local", "cluster"] | None = None


class AlertmanagerSink(Strict):
    """Alertmanager API v2 base URL."""

    url: Url


class WebhookSink(Strict):
    """A webhook; the request is signed with the secret in `secret_env` when given."""

    url: Url
    secret_env: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None


class MqttSink(Strict):
    """Alerts published under this topic."""

    topic: Annotated[str, StringConstraints(min_length=1)]


SINK_KINDS = ("alertmanager", "webhook", "mqtt")


class SinkModel(Strict):
    """Where alerts go: exactly one of alertmanager, webhook, mqtt."""

    alertmanager: AlertmanagerSink | None = None
    webhook: WebhookSink | None = None
    mqtt: MqttSink | None = None
    repeat_interval: Interval | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SinkModel:
        _exactly_one(self, SINK_KINDS, "a sink")
        return self


class GoalFile(Strict):
    """One goal file (apiVersion: setpoint/v1)."""

    api_version: Literal["setpoint/v1"] = Field(alias="apiVersion")
    services: Annotated[dict[Name, ServiceModel], Field(max_length=MAX_ITEMS)] = {}
    probes: Annotated[dict[Name, ProbeModel], Field(max_length=MAX_ITEMS)] = {}
    groups: Annotated[dict[Name, GroupModel], Field(max_length=MAX_ITEMS)] = {}
    domains: Annotated[dict[Name, DomainModel], Field(max_length=MAX_ITEMS)] = {}
    sinks: Annotated[dict[Name, SinkModel], Field(max_length=MAX_ITEMS)] = {}
