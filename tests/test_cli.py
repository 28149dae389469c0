"""The `setpoint` command's exit codes and output for validate and schema."""

from __future__ import annotations

import json
from pathlib import Path

from tests.agentproc import ROOT, cli


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
