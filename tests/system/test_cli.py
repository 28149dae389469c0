"""The `setpoint` command's exit codes and output for validate and schema."""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agentproc import ROOT, cli

HEAD = "apiVersion: setpoint/v1\n"
HOSTILE = {
    "deep flow nesting": HEAD + "x: " + "[" * 200_000,
    "deep block nesting": HEAD + "".join("  " * i + f"k{i}:\n" for i in range(300)),
    "billion laughs": HEAD
    + "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ),
    "huge file": HEAD + "#" * (2 * 1024 * 1024) + "\n",
    "python tag": HEAD + "x: !!python/object/apply:os.system [id]\n",
    "huge int": HEAD + "services:\n  w: {unit: w.service, restart: {limit: " + "9" * 5000 + "}}\n",
    "binary junk": HEAD + "\x00\xff\xfe" * 1000,
    "tab indentation": HEAD + "services:\n\tw: {}\n",
}


def test_validate_valid_files_exit_0() -> None:
    result = cli("validate", str(ROOT / "config"))
    assert result.returncode == 0
    assert result.stdout.startswith("ok: 4 services, 3 probes, 1 domains")


def test_validate_prints_every_error_located_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: setpoint/v1\n"
        "services:\n"
        "  web: {unit: web.service, desird: running}\n"
        "  db: {unit: db.service, depends_on: [nope]}\n"
    )
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: setpoint/v2\n")
    result = cli("validate", str(bad), str(other))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert f"{bad}:3:28: unknown key 'desird'; did you mean 'desired'?" in lines
    assert any(line.startswith(f"{other}:1:13: ") for line in lines), lines
    assert lines[-1] == f"{len(lines) - 1} errors"


def test_validate_missing_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    result = cli("validate", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert str(tmp_path / "absent.yaml") in result.stderr and "Traceback" not in result.stderr


def test_schema_is_json() -> None:
    result = cli("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout)["required"] == ["apiVersion"]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_yaml_is_refused_located_in_bounded_time_and_memory(
    name: str, tmp_path: Path
) -> None:
    """Setpoint's own contract for hostile goal files: exit 2, `file:line:col: message`, no
    traceback, under a second and a bounded RSS, whatever the YAML library's wording."""
    path = tmp_path / "g.yaml"
    path.write_bytes(HOSTILE[name].encode("utf-8", "surrogateescape"))
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "agent", "validate", str(path)],
        capture_output=True, text=True, check=False, timeout=30, preexec_fn=_memory_bound,
    )  # fmt: skip
    seconds = time.monotonic() - start
    assert result.returncode == 2, result.stdout + result.stderr  # a MemoryError would be 1
    assert "Traceback" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert re.fullmatch(rf"{re.escape(str(path))}:\d+:\d+: \S.{{8,}}", first), first
    assert seconds < 5.0, seconds


def _memory_bound() -> None:
    """In the child before exec: 512 MiB of address space (validate needs well under 300).

    Enforced rather than measured: a peak RSS read from the child (wait4, getrusage) carries
    the forked test process's own high-water mark across exec on Linux."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BOUND, MEMORY_BOUND))


MEMORY_BOUND = 512 * 1024 * 1024


def test_validate_warns_of_file_effects_the_shipped_sandbox_cannot_write(tmp_path: Path) -> None:
    goals = tmp_path / "g.yaml"
    goals.write_text(
        "apiVersion: setpoint/v1\n"
        "groups:\n"
        "  g:\n"
        "    members: [{name: a, probes: [p]}]\n"
        "    effects:\n"
        "      - file: {path: /etc/haproxy/route}\n"
        "      - file: {path: /run/setpoint/route}\n"
        "probes:\n"
        "  p: {tcp: {host: 127.0.0.1, port: 1}}\n"
    )
    result = cli("validate", str(goals))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"{goals}:6:22: warning: the shipped unit cannot write /etc/haproxy/route "
        "(ProtectSystem=strict); write under /run/setpoint/, or allow it with a drop-in: "
        "[Service] ReadWritePaths=/etc/haproxy"
    ]
