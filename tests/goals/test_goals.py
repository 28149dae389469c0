"""The goal-file edge: good files load into the core's GoalSet; every bad one is located exactly."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent

import pytest

from agent.core.spec import Effect, GoalSet, ProbeSpec, RestartPolicy, ServiceSpec
from agent.errors import ConfigError
from agent.goals import goals_schema, load_goals
from agent.goals.durations import parse_duration

CONFIG = Path(__file__).resolve().parents[2] / "config"

FULL = """\
apiVersion: setpoint/v1
services:
  web:
    unit: demo-web.service
    desired: running
    probes: [web-health]
    on_unhealthy: restart
    restart: {backoff: 2s, backoff_max: 1m, factor: 3, limit: 4, window: 5m, stable_for: 90s}
    depends_on: [db]
    alerts: {error_for: 5m, starting_for: 10m, stopping_for: 2m, thrash_transitions: 8,
             thrash_window: 10m}
probes:
  web-health:
    http: {url: "http://127.0.0.1:8080/healthz", method: GET, expect_status: [200, 204],
           body_contains: ok, json_field: status, json_equals: ok, headers: {X-A: b},
           tls_verify: true}
    interval: 5s
    timeout: 1s
    latency_budget: 300ms
    failures: 3
    successes: 1
    start_period: 10s
groups:
  db-route:
    members:
      - {name: primary, service: db-primary}
      - {name: replica, probes: [replica-health]}
    switch_after: 3
    auto_restore: true
    effects:
      - exec: {argv: [/usr/local/bin/set-route, "{target}"]}
domains:
  DatabaseRouting:
    state:
      primary_status: {type: string, default: healthy,
                       bind: 'services["db-primary"].healthy ? "healthy" : "failed"'}
      active_route: {type: string, default: primary}
      alert_sent: {type: bool, default: false}
    goal: |
      (primary_status == "healthy" && active_route == "primary") ||
      (primary_status == "failed" && active_route == "replica" && alert_sent == true)
    transitions:
      ExecuteFailover:
        when: primary_status == "failed" && active_route == "primary"
        effects:
          - exec: {argv: [/usr/local/bin/update-dns, replica], timeout: 10s, env: {A: b}}
        set: {active_route: replica}
        retry_after: 5s
      TriggerPagerDuty:
        when: primary_status == "failed" && alert_sent == false
        effects:
          - alert: {summary: Primary DB Down, severity: critical}
        set: {alert_sent: true}
sinks:
  am: {alertmanager: {url: "http://127.0.0.1:9093"}, repeat_interval: 1h}
  hook: {webhook: {url: "http://127.0.0.1:9999/hook", secret_env: SETPOINT_WEBHOOK_SECRET}}
  bus: {mqtt: {topic: alerts}}
"""

SUPPORT = """\
apiVersion: setpoint/v1
services:
  db: {unit: demo-db.service}
  db-primary: {unit: demo-db-primary.service, probes: [replica-health]}
probes:
  replica-health: {tcp: {host: 127.0.0.1, port: 5432}, interval: 1.5}
"""

HEAD = "apiVersion: setpoint/v1\n"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test writes its files into a fresh directory and names them relatively."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def write(name: str, text: str) -> str:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return name


def problems(*names: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_goals(names)
    return [str(p) for p in info.value.problems]


def bad(body: str) -> list[str]:
    """Problems of one file `g.yaml` made of the apiVersion line and `body` (line 2 onward)."""
    return problems(write("g.yaml", HEAD + dedent(body)))


def timed(*names: str) -> tuple[list[str], float]:
    start = time.perf_counter()
    found = problems(*names)
    return found, time.perf_counter() - start


# --- good files ---------------------------------------------------------------------------


def test_the_full_example_loads_across_two_files() -> None:
    goals = load_goals([write("full.yaml", FULL), write("support.yaml", SUPPORT)])
    assert [s.name for s in goals.services] == ["db", "db-primary", "web"]
    web = goals.services[2]
    assert web == ServiceSpec(
        name="web",
        unit="demo-web.service",
        probes=("web-health",),
        restart=RestartPolicy(2.0, 60.0, 3.0, 4, 300.0, 90.0),
        depends_on=("db",),
        alerts=web.alerts,
    )
    assert (web.alerts.error_for, web.alerts.thrash_transitions) == (300.0, 8)
    health = goals.probes[1]
    assert health == ProbeSpec(
        name="web-health",
        kind="http",
        interval=5.0,
        timeout=1.0,
        latency_budget=0.3,
        start_period=10.0,
        url="http://127.0.0.1:8080/healthz",
        expect_status=(200, 204),
        body_contains="ok",
        json_field="status",
        json_equals="ok",
        headers=(("X-A", "b"),),
    )
    assert goals.probes[0].kind == "tcp"
    assert goals.probes[0].interval == 1.5
    assert goals.probes[0].port == 5432
    (group,) = goals.groups
    assert [(m.name, m.service, m.probes) for m in group.members] == [
        ("primary", "db-primary", ()),
        ("replica", "", ("replica-health",)),
    ]
    assert group.effects == (Effect("exec", argv=("/usr/local/bin/set-route", "{target}")),)
    (domain,) = goals.domains
    assert [(v.name, v.type, v.default) for v in domain.variables] == [
        ("primary_status", "string", "healthy"),
        ("active_route", "string", "primary"),
        ("alert_sent", "bool", False),
    ]
    assert domain.variables[0].bind.startswith('services["db-primary"]')
    failover, page = domain.transitions
    assert failover.effects == (
        Effect(
            "exec", argv=("/usr/local/bin/update-dns", "replica"), env=(("A", "b"),), timeout=10
        ),
    )
    assert (failover.assign, failover.retry_after) == ((("active_route", "replica"),), 5.0)
    assert page.effects == (Effect("alert", summary="Primary DB Down", severity="critical"),)
    assert page.assign == (("alert_sent", True),)
    assert [(s.name, s.kind) for s in goals.sinks] == [
        ("am", "alertmanager"),
        ("bus", "mqtt"),
        ("hook", "webhook"),
    ]
    assert goals.sinks[0].repeat_interval == 3600.0
    assert goals.sinks[2].secret_env == "SETPOINT_WEBHOOK_SECRET"
    assert len(goals.digest) == 64


def test_defaults_come_from_the_core_spec() -> None:
    text = HEAD + "services: {a: {unit: a.service}}\nprobes: {p: {tcp: {host: h, port: 1}}}\n"
    goals = load_goals([write("g.yaml", text)])
    assert goals.services == (ServiceSpec("a", "a.service"),)
    assert goals.probes == (ProbeSpec("p", "tcp", host="h", port=1),)


def test_an_empty_goal_set_is_valid() -> None:
    assert load_goals([write("g.yaml", HEAD)]) == GoalSet(digest=load_goals([]).digest)


def test_digest_depends_on_content_not_on_files_or_order() -> None:
    one = load_goals([write("full.yaml", FULL), write("support.yaml", SUPPORT)])
    assert load_goals(["support.yaml", "full.yaml"]) == one
    write("c/b.yaml", "# moved, same content\n" + FULL)
    write("c/a.yaml", SUPPORT)
    assert load_goals(["c"]).digest == one.digest
    changed = FULL.replace("failures: 3", "failures: 4")
    assert load_goals([write("d.yaml", changed), "support.yaml"]).digest != one.digest


def test_a_directory_means_its_yaml_and_yml_files_sorted() -> None:
    write("goals.d/b.yml", HEAD + "services: {web: {unit: web.service}}\n")
    write("goals.d/a.yaml", HEAD + "services: {web: {unit: web.service}}\n")
    write("goals.d/notes.txt", "not yaml at all: [")
    write("goals.d/sub/c.yaml", "not read: [")
    assert problems("goals.d") == [
        "goals.d/b.yml:2:12: service 'web' is already defined at goals.d/a.yaml:2:12"
    ]
    Path("goals.d/b.yml").write_text(HEAD + "services: {db: {unit: db.service}}\n")
    goals = load_goals(["goals.d", "goals.d/a.yaml"])  # a file named twice is read once
    assert [s.name for s in goals.services] == ["db", "web"]


def test_anchors_and_merge_keys_work() -> None:
    text = HEAD + dedent("""\
        probes:
          a: &timing {tcp: {host: h, port: 1}, interval: 2s, timeout: 1s}
          b:
            <<: *timing
            tcp: {host: h, port: 2}
        """)
    goals = load_goals([write("g.yaml", text)])
    assert [(p.name, p.port, p.interval) for p in goals.probes] == [("a", 1, 2.0), ("b", 2, 2.0)]


def test_every_file_in_config_validates() -> None:
    files = sorted([*CONFIG.glob("*.yaml"), *CONFIG.glob("*.yml")])
    assert files, "config/ holds example goal files"
    for file in files:
        load_goals([file])
    load_goals([CONFIG])  # and they can be installed together
    demo = load_goals([CONFIG / "demo.yaml"])
    assert [s.name for s in demo.services] == [
        "db-primary",
        "db-replica",
        "demo-web",
        "demo-worker",
    ]
    worker = demo.services[3]
    assert (worker.unit, worker.depends_on) == ("setpoint-demo-worker.service", ("demo-web",))
    assert (worker.restart.limit, worker.restart.window, worker.restart.stable_for) == (3, 60, 30)
    assert {p.url for p in demo.probes} == {
        "http://127.0.0.1:18080/healthz",
        "http://127.0.0.1:18081/healthz",
        "http://127.0.0.1:18082/healthz",
    }
    assert demo.domains[0].name == "DatabaseRouting"


def test_schema_describes_goal_files() -> None:
    schema = goals_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["required"] == ["apiVersion"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {
        "apiVersion",
        "services",
        "probes",
        "groups",
        "domains",
        "sinks",
    }
    assert schema["properties"]["services"]["additionalProperties"] is False  # names only
    service = schema["$defs"]["ServiceModel"]
    assert service["required"] == ["unit"]
    assert "set" in schema["$defs"]["TransitionModel"]["properties"]
    backoff = schema["$defs"]["RestartModel"]["properties"]["backoff"]
    assert "500ms" in str(backoff)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5.0), ("10m", 600.0), ("1h", 3600.0), ("1m30s", 90.0), (5, 5.0)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-5s", "duration must not be negative, got '-5s'"),
        (-1, "duration must not be negative, got -1"),
        ("5x", "invalid duration '5x'"),
        ("", "invalid duration ''"),
        ("nan", "invalid duration 'nan'"),
        (True, "invalid duration True"),
    ],
)
def test_bad_durations(text: object, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        parse_duration(text)


# --- reading and YAML ---------------------------------------------------------------------


def test_yaml_syntax_error_is_located() -> None:
    assert bad('services: "web\n') == [
        "g.yaml:3:1: YAML syntax error: found unexpected end of stream "
        "(while scanning a quoted scalar at 2:11)"
    ]


def test_missing_file_and_non_utf8() -> None:
    Path("latin1.yaml").write_bytes(HEAD.encode() + b"x: caf\xe9\n")
    assert problems("missing.yaml", "latin1.yaml") == [
        "latin1.yaml:1:1: file is not valid UTF-8 (byte offset 30)",
        "missing.yaml:1:1: no such file or directory",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "g.yaml:1:1: empty file: expected a mapping with 'apiVersion: setpoint/v1'"),
        ("- a\n", "g.yaml:1:1: expected a mapping at the top level"),
        ("services: {}\n", "g.yaml:1:1: missing apiVersion: expected 'apiVersion: setpoint/v1'"),
        (
            "services: {}\napiVersion: setpoint/v2\n",
            "g.yaml:2:13: unsupported apiVersion 'setpoint/v2': expected 'setpoint/v1'",
        ),
        (HEAD + "---\nx: 1\n", "g.yaml:2:1: expected a single YAML document, found another one"),
        (HEAD + "x: &a [1, *a]\n", "g.yaml:2:11: recursive alias '*a' is not allowed"),
        (HEAD + "x: *nope\n", "g.yaml:2:4: undefined alias '*nope'"),
        (
            HEAD + 'x: !!python/object/apply:os.system ["true"]\n',
            "g.yaml:2:4: unsupported YAML tag 'tag:yaml.org,2002:python/object/apply:os.system'",
        ),
        (
            HEAD + "x: !!python/name:os.system ''\n",
            "g.yaml:2:4: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/name:os.system'",
        ),
        (HEAD + "? [a]\n: 1\n", "g.yaml:2:3: mapping keys must be scalars, not lists or mappings"),
    ],
)
def test_file_level_problems(text: str, message: str) -> None:
    assert problems(write("g.yaml", text)) == [message]


def test_file_size_is_capped() -> None:
    write("g.yaml", HEAD + "#" * (1024 * 1024) + "\n")
    found, seconds = timed("g.yaml")
    assert found == ["g.yaml:1:1: file is larger than 1 MiB (1048576 bytes); refusing to parse it"]
    assert seconds < 0.5


def test_nesting_depth_is_capped() -> None:
    # Setpoint's contract, not a library's wording: one located problem that says "nesting",
    # found fast (PyYAML >= 6.0.3's own libyaml limit may fire before ours does).
    write("g.yaml", HEAD + "x: " + "[" * 200_000)
    found, seconds = timed("g.yaml")
    assert len(found) == 1 and re.fullmatch(r"g\.yaml:2:\d+: .*nesting.*", found[0]), found
    assert seconds < 0.5


def test_nesting_past_our_cap_but_under_the_librarys_is_ours() -> None:
    write("g.yaml", HEAD + "x: " + "[" * 100 + "]" * 100 + "\n")
    assert problems("g.yaml") == ["g.yaml:2:67: nesting is deeper than 64 levels"]


def test_aliases_cannot_nest_past_the_depth_cap() -> None:
    write("g.yaml", HEAD + "a: &a " + "[" * 60 + "]" * 60 + "\nb: [[[[*a]]]]\n")
    assert problems("g.yaml") == ["g.yaml:3:8: nesting is deeper than 64 levels"]


def test_node_count_is_capped() -> None:
    write("g.yaml", HEAD + "x: [" + "0," * 60_000 + "0]\n")
    found, seconds = timed("g.yaml")
    assert found == ["g.yaml:2:99995: too many YAML nodes (more than 50000)"]
    assert seconds < 1.0


def test_alias_bombs_are_cut_off_before_expanding() -> None:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    write("g.yaml", HEAD + "\n".join(lines) + "\n")
    found, seconds = timed("g.yaml")
    assert found == [
        "g.yaml:7:8: aliases expand to more than 100000 nodes; refusing to expand them"
    ]
    assert seconds < 0.5


def test_problems_are_capped_at_one_hundred() -> None:
    body = "services:\n  web:\n    unit: a.service\n" + "".join(
        f"    k{i}: 1\n" for i in range(150)
    )
    found = bad(body)
    assert len(found) == 101
    assert found[:2] == [
        "g.yaml:5:5: unknown key 'k0'; expected one of: unit, desired, probes, on_unhealthy, "
        "restart, depends_on, alerts, stop_grace, phases",
        "g.yaml:6:5: unknown key 'k1'; expected one of: unit, desired, probes, on_unhealthy, "
        "restart, depends_on, alerts, stop_grace, phases",
    ]
    assert found[-1] == "g.yaml:105:5: too many problems; stopped after 100"


def test_named_things_are_capped_per_kind() -> None:
    body = "services:\n" + "".join(f"  s{i}: {{unit: a.service}}\n" for i in range(10_001))
    assert bad(body) == ["g.yaml:3:3: services: has too many entries (at most 10000)"]


# --- schema: unknown keys, types, required fields, enums -----------------------------------


def test_unknown_keys_get_a_hint_and_missing_fields_are_named() -> None:
    body = """\
        servics: {}
        services:
          web:
            unitt: web.service
            desired: runing
        """
    assert bad(body) == [
        "g.yaml:2:1: unknown key 'servics'; did you mean 'services'?",
        "g.yaml:4:3: missing required field 'unit'",
        "g.yaml:5:5: unknown key 'unitt'; did you mean 'unit'?",
        "g.yaml:6:14: desired: invalid value 'runing'; expected 'running', 'stopped' or "
        "'unmanaged'; did you mean 'running'?",
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "services: {web: {unit: a.service, colour: red}}",
            "2:35: unknown key 'colour'; expected one of: unit, desired, probes, on_unhealthy, "
            "restart, depends_on, alerts, stop_grace, phases",
        ),
        (
            "services: {web: {unit: a.service, probes: web-health}}",
            "2:43: probes: expected a list, got a string",
        ),
        ("services: {web: 5}", "2:17: web: expected a mapping, got an integer"),
        (
            "services: {web: {unit: web}}",
            "2:24: unit 'web' must end in .service, .socket, .timer, .target, .mount, .path",
        ),
        (
            "services: {'bad name': {unit: a.service}}",
            "2:12: invalid name 'bad name': use letters, digits, '_', '.', '@', '-', "
            "starting with a letter or digit, at most 128 characters",
        ),
        (
            "services: {web: {unit: a.service, restart: {backoff: -1s}}}",
            "2:54: backoff: duration must not be negative, got '-1s'",
        ),
        (
            "services: {web: {unit: a.service, restart: {backoff: 5 sec}}}",
            "2:54: backoff: invalid duration '5 sec': use seconds (5, 0.5) or a string like "
            "500ms, 5s, 10m, 1h, 1m30s",
        ),
        (
            "probes: {p: {tcp: {host: h, port: '80'}}}",
            "2:35: port: expected an integer, got a string",
        ),
        ("probes: {p: {tcp: {host: h, port: 0}}}", "2:35: port: must be at least 1, got 0"),
        (
            "probes: {p: {tcp: {host: h, port: 1}, interval: 0}}",
            "2:49: interval: duration must be between 10ms and 1d, got 0",
        ),
        (
            "probes: {p: {http: {url: 'ftp://x'}}}",
            "2:26: url: invalid URL 'ftp://x': expected http://... or https://...",
        ),
        (
            "probes: {p: {exec: {argv: curl -f http://x}}}",
            "2:27: argv must be a list of arguments, not a shell string",
        ),
        ("probes: {p: {exec: {argv: []}}}", "2:27: argv must not be empty"),
        (
            "probes: {p: {interval: 1s}}",
            "2:10: a probe needs exactly one of http, tcp, exec, jsonrpc",
        ),
        (
            "probes: {p: {tcp: {host: h, port: 1}, exec: {argv: [x]}}}",
            "2:10: a probe needs exactly one of http, tcp, exec, jsonrpc; found tcp, exec",
        ),
        (
            "sinks: {s: {repeat_interval: 1h}}",
            "2:9: a sink needs exactly one of alertmanager, webhook, mqtt",
        ),
        (
            "groups: {g: {members: [{name: m}]}}",
            "2:24: a member needs a service or probes",
        ),
        ("groups: {g: {members: []}}", "2:23: members: needs at least 1 item(s)"),
    ],
)
def test_schema_problems_are_located(body: str, message: str) -> None:
    assert bad(body + "\n") == [f"g.yaml:{message}"]


def test_effects_are_single_key_mappings() -> None:
    body = """\
        groups:
          g:
            members: [{name: m, probes: [p]}]
            effects:
              - {exec: {argv: [a]}, mqtt: {topic: t}}
              - shell: {cmd: x}
              - exce: {argv: [a]}
              - systemd: {unit: a.service, operation: reload}
              - exec: {argv: [a], env: {BAD-NAME: x}}
        """
    assert bad(body) == [
        "g.yaml:6:9: an effect needs exactly one of exec, alert, systemd, http, mqtt, file; "
        "found exec, mqtt",
        "g.yaml:7:9: unknown key 'shell'; expected one of: exec, alert, systemd, http, mqtt, file",
        "g.yaml:8:9: unknown key 'exce'; did you mean 'exec'?",
        "g.yaml:9:47: operation: invalid value 'reload'; expected 'start', 'stop' or 'restart'",
        "g.yaml:10:33: invalid environment variable name 'BAD-NAME'",
    ]


def test_a_name_defined_twice_in_one_file() -> None:
    body = """\
        services:
          web: {unit: a.service}
          web: {unit: b.service, unit: c.service}
        """
    assert bad(body) == [
        "g.yaml:4:3: service 'web' is already defined at g.yaml:3:3",
    ]
    body = "services: {web: {unit: a.service, unit: b.service}}\n"
    assert bad(body) == ["g.yaml:2:35: key 'unit' is already defined at g.yaml:2:18"]


def test_a_name_defined_twice_across_files() -> None:
    write(
        "a.yaml",
        HEAD + "services:\n  web: {unit: a.service}\nprobes: {p: {tcp: {host: h, port: 1}}}\n",
    )
    write(
        "b.yaml",
        HEAD + "probes:\n  p: {tcp: {host: h, port: 2}}\nservices:\n  web: {unit: b.service}\n",
    )
    assert problems("a.yaml", "b.yaml") == [
        "b.yaml:3:3: probe 'p' is already defined at a.yaml:4:10",
        "b.yaml:5:3: service 'web' is already defined at a.yaml:3:3",
    ]


def test_every_file_problem_is_reported_together() -> None:
    write("a.yaml", HEAD + "services: {web: {}}\nprobes: {p: {}}\n")
    write("b.yaml", "apiVersion: v0\n")
    write("c.yaml", HEAD + "x: [\n")
    assert problems("a.yaml", "b.yaml", "c.yaml") == [
        "a.yaml:2:12: missing required field 'unit'",
        "a.yaml:3:10: a probe needs exactly one of http, tcp, exec, jsonrpc",
        "b.yaml:1:13: unsupported apiVersion 'v0': expected 'setpoint/v1'",
        "c.yaml:3:1: YAML syntax error: did not find expected node content "
        "(while parsing a flow node at 3:1)",
    ]


# --- cross-file checks ---------------------------------------------------------------------


def test_unknown_references_get_a_hint() -> None:
    body = """\
        services:
          web: {unit: a.service, probes: [web-helth], depends_on: [dbb]}
          db: {unit: db.service}
        probes:
          web-health: {tcp: {host: h, port: 1}}
        groups:
          g:
            members:
              - {name: m, service: wbe}
              - {name: m, probes: [nothing-like-it]}
            effects:
              - alert: {summary: down, sink: pagr}
        sinks:
          pager: {webhook: {url: "http://127.0.0.1:1/x"}}
        """
    assert bad(body) == [
        "g.yaml:3:35: unknown probe 'web-helth'; did you mean 'web-health'?",
        "g.yaml:3:60: unknown service 'dbb'; did you mean 'db'?",
        "g.yaml:10:28: unknown service 'wbe'; did you mean 'web'?",
        "g.yaml:11:16: member 'm' is already defined at g.yaml:10:16",
        "g.yaml:11:28: unknown probe 'nothing-like-it'",
        "g.yaml:13:38: unknown sink 'pagr'; did you mean 'pager'?",
    ]


def test_mqtt_sinks_and_effects_need_an_agent_with_a_broker() -> None:
    body = """\
        groups:
          g:
            members: [{name: m, service: web}]
            effects:
              - mqtt: {topic: routes, payload: "{target}"}
        domains:
          d:
            state: {up: {type: bool, default: true}}
            goal: up
            transitions:
              t: {when: up, effects: [{alert: {summary: x}}, {mqtt: {topic: d}}]}
        services:
          web: {unit: a.service}
        sinks:
          hook: {webhook: {url: "http://127.0.0.1:1/x"}}
          bus: {mqtt: {topic: alerts}}
        """
    name = write("g.yaml", HEAD + dedent(body))
    assert load_goals([name]).groups[0].name == "g"  # a broker is assumed unless told otherwise
    with pytest.raises(ConfigError) as info:
        load_goals([name], broker=False)
    no_broker = "but the agent runs without an MQTT broker (--mqtt-url)"
    assert [str(p) for p in info.value.problems] == [
        f"g.yaml:6:9: an mqtt effect, {no_broker}",
        f"g.yaml:12:55: an mqtt effect, {no_broker}",
        f"g.yaml:17:9: sink 'bus' publishes to MQTT, {no_broker}",
    ]


def test_references_may_point_into_other_files() -> None:
    write("a.yaml", HEAD + "services: {web: {unit: a.service, probes: [p], depends_on: [db]}}\n")
    write(
        "b.yaml",
        HEAD + "services: {db: {unit: db.service}}\nprobes: {p: {tcp: {host: h, port: 1}}}\n",
    )
    goals = load_goals(["a.yaml", "b.yaml"])
    assert goals.services[1].depends_on == ("db",)


def test_dependency_cycles_are_named() -> None:
    body = """\
        services:
          c: {unit: c.service, depends_on: [a]}
          b: {unit: b.service, depends_on: [c]}
          a: {unit: a.service, depends_on: [b]}
          self: {unit: s.service, depends_on: [self]}
          ok: {unit: ok.service, depends_on: [a]}
        """
    assert bad(body) == [
        "g.yaml:5:3: dependency cycle: a -> b -> c -> a",
        "g.yaml:6:3: dependency cycle: self -> self",
    ]


# --- domains and CEL ----------------------------------------------------------------------

DOMAIN = """\
domains:
  D:
    state:
      status: {type: string, default: healthy}
      route: {type: string, default: primary}
      sent: {type: bool}
      count: {type: int, default: 0}
"""


def test_cel_type_error_on_the_second_line_of_a_block_goal() -> None:
    body = DOMAIN + ('    goal: |\n      status == "healthy" &&\n        route + 1 == "primary"\n')
    assert bad(body) == [
        "g.yaml:11:15: goal: found no matching overload for '_+_' applied to '(string, int)'"
    ]


def test_cel_positions_in_quoted_plain_and_folded_scalars() -> None:
    body = (
        DOMAIN
        + """\
    goal: 'sent == true'
    transitions:
      quoted:
        when: "status == 'a' && count == 'x'"
      plain:
        when: count >
          1 && sent == 1
      folded:
        when: >
          count > 1 &&
          route == 2
"""
    )
    assert bad(body) == [
        "g.yaml:12:39: when: found no matching overload for '_==_' applied to '(int, string)'",
        "g.yaml:15:21: when: found no matching overload for '_==_' applied to '(bool, int)'",
        "g.yaml:19:17: when: found no matching overload for '_==_' applied to '(string, int)'",
    ]


def test_cel_syntax_and_undeclared_names() -> None:
    body = (
        DOMAIN
        + """\
    goal: status ==
    transitions:
      t: {when: statuz == "failed"}
"""
    )
    found = bad(body)
    assert found[0].startswith("g.yaml:9:20: goal: Syntax error: mismatched input '<EOF>'")
    assert found[1:] == ["g.yaml:11:17: when: undeclared reference to 'statuz' (in container '')"]


def test_bind_is_checked_against_the_variable_type() -> None:
    body = """\
        services: {db: {unit: db.service}}
        domains:
          D:
            state:
              up: {type: string, bind: 'services["db"].healthy && true'}
              ok: {type: bool, bind: 'services["dbb"].healthy'}
            goal: ok
        """
    assert bad(body) == [
        "g.yaml:6:33: bind: expression has type bool, expected string",
        "g.yaml:7:31: bind: unknown service 'dbb'; did you mean 'db'?",
    ]


def test_cel_references_to_unknown_services_and_probes() -> None:
    body = """\
        probes: {db-health: {tcp: {host: h, port: 1}}}
        domains:
          D:
            goal: probes["db-helth"].healthy || services.web.healthy
        """
    assert bad(body) == [
        "g.yaml:5:11: goal: unknown probe 'db-helth'; did you mean 'db-health'?",
        "g.yaml:5:41: goal: unknown service 'web'",
    ]


def test_variables_defaults_and_assignments_are_typed() -> None:
    body = """\
        domains:
          D:
            state:
              n: {type: int, default: 1.5}
              x: {type: double, default: 2}
              b: {type: bool, bind: 'true'}
              in: {type: string}
              bad-name: {type: string}
            goal: n > 0
            transitions:
              t:
                when: n > 0
                set: {m: 1, b: false, n: "two", x: 1}
        """
    assert bad(body) == [
        "g.yaml:5:31: default of 'n' must be an integer, got a number",
        "g.yaml:8:7: variable name 'in' is reserved",
        "g.yaml:9:7: invalid variable name 'bad-name': use letters, digits, '_' (no digit first)",
        "g.yaml:14:15: unknown variable 'm'",
        "g.yaml:14:21: cannot set 'b': it is bound to an expression",
        "g.yaml:14:34: value of 'n' must be an integer, got a string",
    ]


def test_int_values_widen_to_double_variables() -> None:
    body = """\
        domains:
          D:
            state: {x: {type: double, default: 2}, s: {type: string}}
            goal: x > 1.0 && s == ""
            transitions: {t: {when: x < 1.0, set: {x: 3}}}
        """
    goals = load_goals([write("g.yaml", HEAD + dedent(body))])
    (domain,) = goals.domains
    assert [(v.name, v.default) for v in domain.variables] == [("x", 2.0), ("s", "")]
    assert isinstance(domain.variables[0].default, float)
    assert domain.transitions[0].assign == (("x", 3.0),)


def test_every_effect_and_probe_kind_builds() -> None:
    body = """\
        probes:
          rpc: {jsonrpc: {url: "https://node:8899", method: getHealth, tls_verify: false}}
          cmd: {exec: {argv: [/bin/true], expect_exit: [0, 1]}}
        groups:
          g:
            members: [{name: a, probes: [rpc]}, {name: b, probes: [cmd]}]
            switch_after: 2
            auto_restore: false
            effects:
              - systemd: {unit: proxy.service, operation: restart}
              - http: {url: "http://127.0.0.1:1/route", method: PUT, body: "{target}"}
              - mqtt: {topic: route, payload: "{target}"}
              - alert: {summary: route moved, sink: am, severity: info}
        sinks:
          am: {alertmanager: {url: "http://127.0.0.1:9093"}}
        """
    goals = load_goals([Path(write("g.yaml", HEAD + dedent(body)))])
    cmd, rpc = goals.probes
    assert (cmd.kind, cmd.argv, cmd.expect_exit) == ("exec", ("/bin/true",), (0, 1))
    assert (rpc.kind, rpc.url, rpc.rpc_method, rpc.tls_verify) == (
        "jsonrpc",
        "https://node:8899",
        "getHealth",
        False,
    )
    (group,) = goals.groups
    assert (group.switch_after, group.auto_restore) == (2, False)
    assert group.effects == (
        Effect("systemd", unit="proxy.service", operation="restart"),
        Effect("http", url="http://127.0.0.1:1/route", method="PUT", body="{target}"),
        Effect("mqtt", topic="route", payload="{target}"),
        Effect("alert", summary="route moved", sink="am", severity="info"),
    )


def test_dotted_name_with_a_dash_gets_a_bracket_hint() -> None:
    found = bad(
        """\
        probes:
          web-health: {http: {url: "http://127.0.0.1:1/"}}
        domains:
          D:
            state:
              ok: {type: bool, default: false}
            goal: probes.web-health.healthy
        """
    )
    assert "g.yaml:8:11: goal: unknown probe 'web'" in found[0]
    assert found[1].startswith("g.yaml:8:28: goal: undeclared reference to 'health.healthy'")
    assert found[1].endswith("""(write probes["web-health"]: a name with '-' needs brackets)""")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "probes: {p: {tcp: {host: h, port: 1}, interval: 999999999999999999999999h}}",
            "2:49: interval: duration must be between 10ms and 1d, got '999999999999999999999999h'",
        ),
        (
            "probes: {p: {tcp: {host: h, port: 1}, timeout: 5ms}}",
            "2:48: timeout: duration must be between 10ms and 1d, got '5ms'",
        ),
        (
            "services: {w: {unit: w.service, restart: {limit: 1000000000000000000000000000000}}}",
            "2:50: limit: must be at most 10000, got 1000000000000000000000000000000",
        ),
        (
            "services: {w: {unit: w.service, restart: {window: 400d}}}",
            "2:51: window: duration must be between 1s and 30d, got '400d'",
        ),
        (
            "services: {w: {unit: w.service, restart: {factor: 1.0e+300}}}",
            "2:51: factor: must be at most 100, got 1e+300",
        ),
        (
            "services: {w: {unit: w.service, alerts: {error_for: 1e308}}}",
            "2:53: error_for: duration must be between 0s and 30d, got '1e308'",
        ),
        (
            "domains: {d: {state: {n: {type: int, default: 99999999999999999999}}, goal: n > 0}}",
            "2:47: default: integer out of range: CEL integers are 64-bit (about ±9.2e18)",
        ),
    ],
)
def test_numbers_out_of_their_documented_range_are_refused(body: str, message: str) -> None:
    assert bad(body + "\n") == [f"g.yaml:{message}"]


@pytest.mark.parametrize("name", ["GoalBroken", "ServiceError", "RouteChanged", "ExpressionFailed"])
def test_a_transition_may_not_take_a_built_in_alerts_name(name: str) -> None:
    body = f"""\
    domains:
      d:
        state: {{x: {{type: bool, default: false}}}}
        goal: x
        transitions:
          {name}: {{when: "!x", set: {{x: true}}}}
    """
    assert bad(body) == [
        f"g.yaml:7:7: transition name '{name}' is reserved: it is a built-in alert's name"
    ]


def test_an_expression_over_the_evaluators_budget_is_refused_at_load() -> None:
    lists = ["[" + ",".join(map(str, range(40))) + "]"] * 3
    heavy = f"{lists[0]}.all(a, {lists[1]}.all(b, {lists[2]}.all(c, a + b + c >= 0)))"
    body = f"""\
    domains:
      d:
        state: {{x: {{type: bool, default: false}}}}
        goal: 'x || {heavy}'
    """
    found = bad(body)
    assert len(found) == 1 and found[0].startswith("g.yaml:5:12: goal: too costly: "), found
    assert "budget" in found[0]


def test_members_of_cluster_groups_name_their_node_and_only_those() -> None:
    local = bad("""\
    probes: {hz: {tcp: {host: h, port: 1}}}
    groups:
      g: {members: [{name: a, probes: [hz], node: h1}]}
    """)
    assert local == ["g.yaml:4:3: member 'a' names a node: needs `scope: cluster`"]
    cluster = bad("""\
    probes: {hz: {tcp: {host: h, port: 1}}}
    groups:
      g: {scope: cluster, members: [{name: a, probes: [hz]}]}
    """)
    assert cluster == ["g.yaml:4:3: member 'a' of a cluster group needs a node"]
