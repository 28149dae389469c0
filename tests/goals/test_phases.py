"""Goal-file phases (seed 000): built in order into the core's spec, every bad one located at
`file:line:col`, and the shipped Besu and Cloudflare tunnel examples valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest

from agent.core.spec import Phase
from agent.errors import ConfigError
from agent.goals import load_goals

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "config" / "examples"

GOOD = """\
apiVersion: setpoint/v1
services:
  node:
    unit: besu.service
    phases:
      Syncing:
        when: 'probes.sync.ok && probes.sync.result != false'
        alert_after: 30m
      Synced: {when: 'probes.sync.result == false && lifecycle == "Running"'}
      Stale: {when: 'phase == "Synced"'}
probes:
  sync:
    jsonrpc: {url: "http://127.0.0.1:8545", method: eth_syncing, params: [latest, {a: 1}]}
"""


def load(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    try:
        load_goals([path])
    except ConfigError as err:
        return [str(p).removeprefix(str(tmp_path) + "/") for p in err.problems]
    return []


def test_phases_are_built_in_the_order_written(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(GOOD)
    goals = load_goals([path])
    assert goals.services[0].phases == (
        Phase("Syncing", "probes.sync.ok && probes.sync.result != false", 1800.0),
        Phase("Synced", 'probes.sync.result == false && lifecycle == "Running"'),
        Phase("Stale", 'phase == "Synced"'),
    )
    assert goals.probes[0].rpc_params == '["latest",{"a":1}]'


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("'probes.sync.ok &&'", "g.yaml:7:33: when: Syntax error: mismatched input '<EOF>'"),
        ("'probes.snyc.ok'", "g.yaml:7:16: when: unknown probe 'snyc'; did you mean 'sync'?"),
        ("'probes.sync.ok || probes.other.ok'", "g.yaml:7:34: when: unknown probe 'other'"),
        (
            "'probes.sync-x.ok'",
            "g.yaml:7:29: when: undeclared reference to 'x.ok' (in container '') "
            """(write probes["sync-x"]: a name with '-' needs brackets)""",
        ),
        ("'services.web.healthy'", "g.yaml:7:16: when: a phase sees probes, phase and lifecycle"),
        ("'phase + 1 == 2'", "g.yaml:7:22: when: found no matching overload for '_+_'"),
        ("'uptime > 3'", "g.yaml:7:16: when: undeclared reference to 'uptime'"),
        ("'lifecycle'", "g.yaml:7:16: when: expression has type string, expected bool"),
        ("''", "g.yaml:7:15: when: must not be empty"),
    ],
)
def test_a_bad_phase_condition_is_located(tmp_path: Path, when: str, expected: str) -> None:
    text = GOOD.replace("'probes.sync.ok && probes.sync.result != false'", when)
    found = load(tmp_path, text)
    assert len(found) == 1 and found[0].startswith(expected), found


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "alert_after: 30m",
            "alert_after: soon",
            "g.yaml:8:22: alert_after: invalid duration 'soon'",
        ),
        ("alert_after: 30m", "after: 30m", "g.yaml:8:9: unknown key 'after'"),
        ("      Synced:", "      bad name!:", "g.yaml:9:7: invalid name 'bad name!'"),
        ("params: [latest, {a: 1}]", "params: latest", "g.yaml:13:"),
    ],
)
def test_bad_phase_fields_are_located(tmp_path: Path, old: str, new: str, expected: str) -> None:
    found = load(tmp_path, GOOD.replace(old, new))
    assert len(found) == 1 and found[0].startswith(expected), found


def test_a_phase_named_twice_is_located(tmp_path: Path) -> None:
    text = GOOD.replace("      Stale:", "      Synced:")
    assert load(tmp_path, text) == [
        f"g.yaml:10:7: key 'Synced' is already defined at {tmp_path}/g.yaml:9:7"
    ]


def test_the_seed_examples_validate_with_setpoint_validate() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert [f.name for f in files] == ["besu.yaml", "cloudflared.yaml"]
    run = [sys.executable, "-m", "agent", "validate", *map(str, files), str(ROOT / "config")]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    services = {s.name: s for s in load_goals(files).services}
    assert [p.name for p in services["besu"].phases] == [
        "Peering",
        "Syncing",
        "Consensus",
        "Synced",
    ]
    assert [p.name for p in services["cloudflared"].phases] == [
        "Connected",
        "Reconnecting",
        "Connecting",
    ]


def test_a_broken_example_is_refused_by_setpoint_validate(tmp_path: Path) -> None:
    text = (EXAMPLES / "besu.yaml").read_text().replace('probes["besu-peers"].ok', "peers.ok")
    bad = tmp_path / "besu.yaml"
    bad.write_text(dedent(text))
    run = [sys.executable, "-m", "agent", "validate", str(bad)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert done.returncode == 2
    assert f"{bad}:16:21: when: undeclared reference to 'peers.ok'" in done.stdout + done.stderr
