"""Real services under the installed agent (issue 15), in the booted Debian of the e2e suite:
Debian's nginx-light and PostgreSQL 15 (an exec probe running pg_isready), a oneshot, a timer,
a unit with its own Restart=, a masked unit and one whose ExecStart does not exist. Each ends in
the lifecycle state, reason and alert the README's table says, with one log line per thing the
agent did; a frozen PostgreSQL comes back after its own stop path, or within its stop grace;
powering off is not slowed by the agent.

One container serves the module; the tests run in file order and build on each other.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import nspawn
from tests.e2e.nspawn import Container, wait_for
from tests.e2e.test_production import (
    GOALS,
    agent_log,
    is_active,
    kill,
    main_pid,
    polkit_rule,
    reload,
    status,
    wait_log,
)

pytestmark = pytest.mark.slow

PG = "postgresql@15-main.service"
UNITS = {
    "e2e-once.service": "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
    "e2e-tick.service": "[Service]\nType=oneshot\nExecStart=/bin/true\n",
    "e2e-tick.timer": "[Timer]\nOnActiveSec=1h\n",
    "e2e-own.service": "[Service]\nExecStart=/bin/sleep infinity\nRestart=always\nRestartSec=1\n",
    "e2e-noexec.service": "[Service]\nExecStart=/nonexistent/daemon\n",
}
QUICK = "restart: {backoff: 1s, backoff_max: 2s, limit: 5, window: 10m}"


def goals(grace: str = "") -> str:
    stop_grace = f", stop_grace: {grace}" if grace else ""
    return f"""\
apiVersion: setpoint/v1
services:
  nginx: {{unit: nginx.service, probes: [nginx-hz], {QUICK}}}
  pg: {{unit: {PG}, probes: [pg-ready], {QUICK}{stop_grace}}}
  once: {{unit: e2e-once.service}}
  tick: {{unit: e2e-tick.timer}}
  own: {{unit: e2e-own.service}}
  masked: {{unit: e2e-masked.service, alerts: {{error_for: 0s}}}}
  noexec:
    unit: e2e-noexec.service
    restart: {{backoff: 500ms, limit: 2, window: 10m}}
    alerts: {{error_for: 0s}}
probes:
  nginx-hz: {{http: {{url: "http://127.0.0.1:80/"}}, interval: 1s, timeout: 1s}}
  pg-ready:
    exec: {{argv: [/usr/lib/postgresql/15/bin/pg_isready, -h, 127.0.0.1, -t, "1"]}}
    interval: 1s
    timeout: 2s
    failures: 2
"""


@pytest.fixture(scope="module")
def debian() -> Iterator[Container]:
    """The booted Debian with nginx and PostgreSQL running, Setpoint installed and enabled."""
    with nspawn.booted_debian() as ct:
        for name, text in UNITS.items():
            ct.write(f"/etc/systemd/system/{name}", text)
        ct.run("systemctl", "mask", "e2e-masked.service")
        ct.run("systemctl", "daemon-reload")
        for unit in ("nginx.service", PG):
            ct.run("systemctl", "start", unit)
        nspawn.make_install(ct)
        ct.write(f"{GOALS}/e2e.yaml", goals())
        polkit_rule(ct)
        yield ct


def services(ct: Container) -> dict[str, Any]:
    found: dict[str, Any] = status(ct)["services"]
    return found


def alerts(ct: Container) -> set[tuple[str, str]]:
    return {(a["name"], a["subject"]) for a in status(ct)["alerts"]}


def lines(ct: Container, cursor: str, service: str) -> list[str]:
    return [ln for ln in agent_log(ct, cursor).splitlines() if f"[{service}]" in ln]


def settled(ct: Container) -> bool:
    svc = services(ct)
    running = all(svc[n]["lifecycle"] == "Running" for n in ("nginx", "pg", "once", "tick", "own"))
    return running and svc["noexec"]["gave_up"] and svc["masked"]["lifecycle"] == "Error"


def test_every_unit_ends_in_its_state_with_its_reason_and_alert(debian: Container) -> None:
    ct = debian
    cursor = ct.cursor()
    ct.run("systemctl", "enable", "--now", "setpoint")
    wait_for(lambda: settled(ct), 60, "every service in its expected state", poll=0.5)
    svc = services(ct)
    assert (svc["once"]["active"], svc["once"]["sub"]) == ("active", "exited")
    assert (svc["tick"]["active"], svc["tick"]["sub"]) == ("active", "waiting")
    assert svc["masked"]["reason"] == "unit is masked"
    cause = "unit failed: exit-code, status 203/EXEC"
    assert svc["noexec"]["reason"] == f"{cause}; restart limit reached: 2 in 600s"
    wait_for(lambda: ("ServiceError", "masked") in alerts(ct), 10, "ServiceError for masked")
    assert ("RestartLimitReached", "noexec") in alerts(ct)
    noexec = lines(ct, cursor, "noexec")
    said = ("unit is inactive; starting", f"{cause}; restarting (1/2)",
            f"{cause}; restarting (2/2)", f"giving up: {cause}; restart limit reached")  # fmt: skip
    for line in said:
        assert len([ln for ln in noexec if line in ln]) == 1, noexec
    assert not [ln for ln in lines(ct, cursor, "masked") if "start" in ln]  # no job for it
    assert "observed jump" not in agent_log(ct, cursor)


def test_nginx_master_killed_is_restarted_once_saying_why(debian: Container) -> None:
    ct = debian
    old = main_pid(ct, "nginx.service")
    cursor = ct.cursor()
    kill(ct, old, "KILL")
    wait_for(lambda: main_pid(ct, "nginx.service") not in (0, old), 20, "nginx running again")
    wait_for(lambda: services(ct)["nginx"]["lifecycle"] == "Running", 20, "nginx Running")
    said = [ln for ln in lines(ct, cursor, "nginx") if "restarting" in ln]
    assert len(said) == 1 and "unit failed: signal SIGKILL; restarting (1/5)" in said[0], said
    assert "observed jump" not in agent_log(ct, cursor)


def test_a_unit_with_its_own_restart_is_left_to_systemd(debian: Container) -> None:
    ct = debian
    old = main_pid(ct, "e2e-own.service")
    cursor = ct.cursor()
    kill(ct, old, "KILL")
    wait_for(lambda: ct.prop("e2e-own.service", "NRestarts") == "1", 20, "systemd's restart")
    wait_for(lambda: services(ct)["own"]["lifecycle"] == "Running", 20, "own Running")
    time.sleep(2)  # anything the agent would do to it has been done by now
    assert [ln for ln in lines(ct, cursor, "own") if "start" in ln] == []
    assert ct.prop("e2e-own.service", "NRestarts") == "1"
    assert "observed jump" not in agent_log(ct, cursor)


def frozen_postgres(ct: Container, timeout: float) -> tuple[float, list[tuple[str, str]]]:
    """SIGSTOP the postmaster; seconds until PostgreSQL runs again (a new postmaster, Running)
    and the (ActiveState, lifecycle) pairs seen meanwhile."""
    old = main_pid(ct, PG)
    kill(ct, old, "STOP")
    started = time.monotonic()
    seen: list[tuple[str, str]] = []

    def back() -> bool:
        pg = services(ct)["pg"]
        seen.append((pg["active"], pg["lifecycle"]))
        return pg["lifecycle"] == "Running" and main_pid(ct, PG) not in (0, old)

    wait_for(back, timeout, "PostgreSQL Running again with a new postmaster", poll=0.5)
    return time.monotonic() - started, seen


def test_frozen_postgres_waits_for_its_stop_path_and_reads_restarting(debian: Container) -> None:
    ct = debian
    cursor = ct.cursor()
    took, seen = frozen_postgres(ct, 180)
    nspawn.log(f"frozen PostgreSQL back without escalation after {took:.1f}s")
    assert took > 30  # pg_ctl's stop waited for the frozen postmaster
    assert all(life == "Restarting" for active, life in seen if active == "deactivating"), seen
    said = [ln for ln in lines(ct, cursor, "pg") if "restarting" in ln]
    assert len(said) == 1 and "unhealthy" in said[0], said
    log = agent_log(ct, cursor)
    assert "observed jump" not in log and "killing the main process" not in log
    assert ("ServiceThrashing", "pg") not in alerts(ct)


def test_frozen_postgres_with_a_stop_grace_is_back_within_detection_plus_grace(
    debian: Container,
) -> None:
    ct = debian
    ct.write(f"{GOALS}/e2e.yaml", goals(grace="5s"))
    polkit_rule(ct)  # grants `kill` for PostgreSQL's unit
    cursor = ct.cursor()
    reload(ct)
    wait_log(ct, cursor, r"goals reloaded")
    wait_for(lambda: services(ct)["pg"]["lifecycle"] == "Running", 20, "pg Running")
    cursor = ct.cursor()
    took, _ = frozen_postgres(ct, 60)
    nspawn.log(f"frozen PostgreSQL back with a 5s stop grace after {took:.1f}s")
    assert took < 20  # probe detection (~2s) + grace (5s) + PostgreSQL's start
    pg = lines(ct, cursor, "pg")
    assert len([ln for ln in pg if "restarting" in ln]) == 1, pg
    kills = [ln for ln in pg if "killing the main process with SIGKILL" in ln]
    assert len(kills) == 1 and "stop grace (5s)" in kills[0], pg
    assert "observed jump" not in agent_log(ct, cursor)


def test_poweroff_is_not_slowed_and_leaves_nothing_for_the_next_boot(debian: Container) -> None:
    ct = debian
    wait_for(lambda: is_active(ct, "setpoint.service"), 10, "setpoint active")
    started = time.monotonic()
    ct.poweroff()
    took = time.monotonic() - started
    ct.boot()
    wait_for(lambda: is_active(ct, "setpoint.service"), 60, "setpoint started at boot")
    previous = ct.journal("setpoint", boot="-1")
    nspawn.log(f"poweroff with the agent supervising real services: {took:.1f}s")
    assert took < 15, f"poweroff took {took:.1f}s; the agent's last boot:\n{previous}"
    assert "the system is shutting down" in previous, previous[-3000:]
    assert "effects still running" not in previous, previous[-3000:]
    now = ct.journal("setpoint", boot="0")
    found = re.search(r"started: (\d+) pending actions restored", now)
    assert found is not None and found.group(1) == "0", now[-3000:]
