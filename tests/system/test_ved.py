"""Seed 001's DatabaseRouting scenario end to end, with real processes: a real health endpoint,
a real exec route hook, an alert effect to a webhook sink that is down at first, and the agent
as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from threading import Thread
from typing import ClassVar

import pytest

from tests.agentproc import (
    ROOT,
    AgentProcess,
    decided,
    free_port,
    last_seq,
    marker,
    probe_results,
    rows_between,
    status,
    wait_until,
)

GOALS = """\
apiVersion: setpoint/v1
sinks:
  pager: {{webhook: {{url: "http://127.0.0.1:{pager}/page"}}}}
probes:
  primary-hz:
    http: {{url: "http://127.0.0.1:{port}/healthz"}}
    interval: 200ms
    timeout: 500ms
    failures: 2
domains:
  DatabaseRouting:
    state:
      primary_status:
        type: string
        bind: 'probes["primary-hz"].healthy ? "healthy" : "failed"'
      active_route: {{type: string, default: primary}}
      alert_sent: {{type: bool, default: false}}
    goal: |
      (primary_status == "healthy" && active_route == "primary") ||
      (primary_status == "failed" && active_route == "replica" && alert_sent == true)
    transitions:
      ExecuteFailover:
        when: primary_status == "failed" && active_route == "primary"
        effects:
          - exec: {{argv: [{py}, {hook}, {route}, replica]}}
        set: {{active_route: replica}}
      TriggerPagerDuty:
        when: primary_status == "failed" && alert_sent == false
        effects:
          - alert: {{summary: Primary DB Down, severity: critical}}
        set: {{alert_sent: true}}
        retry_after: 300ms
      AutoRestore:
        when: primary_status == "healthy" && active_route == "replica"
        effects:
          - exec: {{argv: [{py}, {hook}, {route}, primary]}}
        set: {{active_route: primary, alert_sent: false}}
"""
HOOK = "import sys, os; open(sys.argv[1] + '.tmp', 'w').write(sys.argv[2]); "
HOOK += "os.replace(sys.argv[1] + '.tmp', sys.argv[1])"


class Pager(BaseHTTPRequestHandler):
    pages: ClassVar[list[dict[str, object]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Pager.pages.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, fail = free_port(), tmp_path / "primary.fail"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy/demo/httpd.py"), str(port), str(fail)]
    )
    yield port, fail
    proc.kill()
    proc.wait()


def values(state: Path) -> dict[str, object]:
    dom: dict[str, object] = status(state)["domains"].get("DatabaseRouting", {})
    return {"satisfied": dom.get("satisfied"), **dict(dom.get("values", {}))}  # type: ignore[call-overload]


def test_failover_does_not_wait_for_the_pager_and_restores_itself(
    tmp_path: Path, primary: tuple[int, Path]
) -> None:
    port, fail = primary
    route, hook, pager_port = tmp_path / "route", tmp_path / "hook.py", free_port()
    hook.write_text(HOOK)
    goals = tmp_path / "goals.yaml"
    goals.write_text(
        GOALS.format(port=port, py=sys.executable, hook=hook, route=route, pager=pager_port)
    )
    state = tmp_path / "state"
    with AgentProcess(goals, state) as agent:
        agent.wait_started()
        wait_until(
            lambda: values(state).get("primary_status") == "healthy", 10, "a healthy primary"
        )
        assert not route.exists()  # Reality A holds: the domain rests
        fail.touch()  # the primary's health endpoint starts failing
        started = time.monotonic()
        wait_until(lambda: route.exists() and route.read_text() == "replica", 10, "the failover")
        assert time.monotonic() - started < 3  # at once, although the pager is down
        assert values(state)["alert_sent"] is False and values(state)["satisfied"] is False
        wait_until(lambda: "will retry" in agent.output(), 10, "the pager to be retried")
        server = HTTPServer(("127.0.0.1", pager_port), Pager)
        Thread(target=server.serve_forever, daemon=True).start()
        try:
            wait_until(lambda: values(state)["satisfied"] is True, 20, "Reality B")
            assert Pager.pages and Pager.pages[0]["summary"] == "Primary DB Down"
            assert Pager.pages[0]["status"] == "firing"
            assert values(state) == {
                "satisfied": True, "primary_status": "failed", "active_route": "replica",
                "alert_sent": True,
            }  # fmt: skip
            # Reality B: the domain rests, nothing new is decided. Shown by the journal up to a
            # marker sent after three more (failing) probe results: all of them were stepped.
            seq, seen = last_seq(state), probe_results(agent.port, "primary-hz")
            wait_until(
                lambda: probe_results(agent.port, "primary-hz") >= seen + 3, 30,
                "three more probe results",
            )  # fmt: skip
            mark = marker(state, "resync")  # no systemd here: the resync does nothing
            assert not decided(rows_between(state, seq, mark), "RunEffect")
            fail.unlink()  # the primary recovers
            wait_until(lambda: route.read_text() == "primary", 10, "the auto-restore")
            wait_until(lambda: values(state)["alert_sent"] is False, 10, "the alert flag reset")
            assert values(state)["satisfied"] is True
            wait_until(lambda: len(Pager.pages) == 2, 10, "the page to be resolved")
            assert Pager.pages[1]["status"] == "resolved"  # the flag it stood for was reset
            assert Pager.pages[1]["fingerprint"] == Pager.pages[0]["fingerprint"]
        finally:
            server.shutdown()
        assert agent.stop() == 0
