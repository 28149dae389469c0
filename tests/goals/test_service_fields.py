"""Goal-file fields of services for real units: `stop_grace`, and `depends_on` entries that
restart the dependant after their dependency."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.goals import load_goals

GOOD = """\
apiVersion: setpoint/v1
services:
  db: {unit: postgresql@15-main.service, stop_grace: 20s}
  cache: {unit: cache.service}
  web:
    unit: nginx.service
    depends_on: [cache, {service: db, restart: true}]
"""


def test_restart_with_and_stop_grace_are_built(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(GOOD)
    services = {s.name: s for s in load_goals([path]).services}
    assert services["web"].depends_on == ("cache", "db")
    assert services["web"].restart_with == ("db",)
    assert (services["db"].stop_grace, services["web"].stop_grace) == (20.0, 0.0)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("    depends_on: [{service: dbx, restart: true}]", "g.yaml:7:18: unknown service 'dbx'"),
        ("    depends_on: [{service: db, restart: 1}]", "g.yaml:7:"),
        ("    depends_on: [{service: db, restrat: true}]", "g.yaml:7:18: unknown key 'restrat'"),
        ("    stop_grace: -1s", "g.yaml:7:17: stop_grace: duration must not be negative"),
    ],
)
def test_bad_service_fields_are_located(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(GOOD.split("    depends_on", maxsplit=1)[0] + line + "\n")
    with pytest.raises(ConfigError) as info:
        load_goals([path])
    found = [str(p).replace(str(tmp_path) + "/", "") for p in info.value.problems]
    assert any(p.startswith(expected) for p in found), found
