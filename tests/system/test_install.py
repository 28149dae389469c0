"""`make install` / `make uninstall` staged into a temporary root (DESTDIR): a real venv with
the package (`pip install` of the tree), the unit, the polkit rule, the example goals."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.agentproc import ROOT

pytestmark = pytest.mark.slow


def make(target: str, destdir: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), target, f"DESTDIR={destdir}"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_install_upgrade_and_uninstall_in_a_staging_root(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    dest = tmp_path / "root"
    make("install", dest)
    goals = dest / "etc/setpoint/goals.d"
    shipped = sorted(p.name + ".example" for p in (ROOT / "config").glob("*.yaml"))
    assert sorted(p.name for p in goals.iterdir()) == shipped  # examples only, none active
    rule_path = dest / "etc/polkit-1/rules.d/50-setpoint.rules"
    assert "var units = [];" in rule_path.read_text()  # no goals yet: nothing granted
    assert not (dest / "opt/setpoint/.created-user").exists()  # DESTDIR: no user was created

    # the operator writes goals and edits an example; a second install (upgrade) keeps both
    (goals / "web.yaml").write_text(
        "apiVersion: setpoint/v1\nservices:\n  web: {unit: web.service}\n"
    )
    (goals / "demo.yaml.example").write_text("# the operator's own notes\n")
    journal = dest / "var/lib/setpoint/journal.db"
    journal.parent.mkdir(parents=True)
    journal.write_bytes(b"not really a journal")
    make("install", dest)
    assert (goals / "demo.yaml.example").read_text() == "# the operator's own notes\n"
    rule = rule_path.read_text()
    assert "from /etc/setpoint/goals.d." in rule  # not the staging path
    assert '"web.service"' in rule and "setpoint-demo" not in rule

    setpoint = dest / "opt/setpoint/venv/bin/setpoint"
    version = subprocess.run([setpoint, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("setpoint ")
    valid = subprocess.run(
        [setpoint, "validate", goals], capture_output=True, text=True, check=False
    )
    assert valid.returncode == 0, valid.stderr

    unit = dest / "etc/systemd/system/setpoint.service"
    text = unit.read_text()
    assert text == (ROOT / "systemd/setpoint.service").read_text()  # default paths: verbatim
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # the installed unit, pointed at the staged binary, verifies clean
        copy = tmp_path / "setpoint.service"
        copy.write_text(text.replace("/opt/setpoint/venv", str(dest / "opt/setpoint/venv")))
        out = subprocess.run(
            [analyze, "verify", "--man=no", copy], capture_output=True, text=True, check=False
        )
        assert out.returncode == 0 and not out.stdout + out.stderr, out.stdout + out.stderr

    make("uninstall", dest)
    assert not (dest / "opt/setpoint").exists()
    assert not unit.exists() and not rule_path.exists()
    assert sorted(p.name for p in goals.iterdir()) == ["demo.yaml.example", "web.yaml"]
    assert journal.read_bytes() == b"not really a journal"
