"""Seed 002's proactive failover end to end: real HTTP members whose latency and status the
test controls, the agent as a subprocess, and real route effects (file + webhook)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

from agent.adapters.effects.web import atomic_write
from tests.agentproc import (
    AgentProcess,
    decided,
    journal_rows,
    marker,
    probe_results,
    rows_between,
    status,
    wait_until,
)


@dataclass
class Member:
    """A real HTTP endpoint: `delay` seconds before answering `status`."""

    delay: float = 0.01
    status: int = 200
    server: ThreadingHTTPServer | None = None
    received: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]


def serve(member: Member) -> Member:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(member.delay)
            self.send_response(member.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            member.received.append(json.loads(body)["target"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    member.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=member.server.serve_forever, daemon=True).start()
    return member


@pytest.fixture
def members() -> Iterator[dict[str, Member]]:
    found = {n: serve(Member(delay=d)) for n, d in (("primary", 0.01), ("replica", 0.06),
                                                     ("standby", 0.03), ("hook", 0))}  # fmt: skip
    yield found
    for m in found.values():
        assert m.server is not None
        m.server.shutdown()


def goals(members: dict[str, Member], route: Path) -> str:
    probes = "".join(
        f"  {n}-hz:\n    http: {{url: 'http://127.0.0.1:{m.port}/'}}\n"
        "    interval: 100ms\n    timeout: 1s\n    latency_budget: 150ms\n    failures: 2\n"
        for n, m in members.items() if n != "hook"
    )  # fmt: skip
    hook = members["hook"].port
    return f"""apiVersion: setpoint/v1
probes:
{probes}groups:
  db:
    members:
      - {{name: primary, probes: [primary-hz]}}
      - {{name: replica, probes: [replica-hz]}}
      - {{name: standby, probes: [standby-hz]}}
    switch_after: 3
    effects:
      - file: {{path: {route}}}
      - http: {{url: "http://127.0.0.1:{hook}/route", body: '{{"target": "{{target}}"}}'}}
"""


def test_route_follows_latency_with_hysteresis_and_restores(
    tmp_path: Path, members: dict[str, Member]
) -> None:
    route = tmp_path / "route"
    path = tmp_path / "goals.yaml"
    path.write_text(goals(members, route))
    hook = members["hook"].received
    state = tmp_path / "state"
    with AgentProcess(path, state) as agent:
        agent.wait_started()
        wait_until(lambda: route.exists() and route.read_text() == "primary\n", 10, "a route")
        members["primary"].delay = 0.3  # over its 150 ms budget: degraded
        wait_until(lambda: route.read_text() == "standby\n", 10, "failover to the fastest")
        wait_until(lambda: hook[-1:] == ["standby"], 5, "the webhook to follow the route file")
        members["primary"].delay = 0.01
        wait_until(lambda: route.read_text() == "primary\n", 10, "auto-restore")
        wait_until(lambda: hook[-1:] == ["primary"], 5, "the webhook to follow")
        assert hook == ["primary", "standby", "primary"]  # no flapping in between
        for name in ("primary", "replica", "standby"):
            members[name].status = 503
        wait_until(lambda: "alert AllMembersDown firing" in agent.output(), 10, "all-down alert")
        # The last route stays: every member is seen down in more rounds than a switch needs
        # (switch_after: 3), then a marker shows the journal holds no route effect since.
        [fired] = [r["seq"] for r in journal_rows(state) for a in r["actions"]
                   if a.get("message") == "alert AllMembersDown firing"]  # fmt: skip
        probes = [f"{name}-hz" for name in ("primary", "replica", "standby")]
        seen = {p: probe_results(agent.port, p) for p in probes}
        wait_until(
            lambda: all(probe_results(agent.port, p) >= seen[p] + 4 for p in probes), 30,
            "four more probe results of every member",
        )  # fmt: skip
        mark = marker(state, "resync")  # no systemd here: the resync does nothing
        assert not decided(rows_between(state, fired - 1, mark), "RunEffect")
        assert status(state)["groups"]["db"]["route"] == "primary"
        assert route.read_text() == "primary\n"
        assert agent.stop() == 0


def test_atomic_write_replaces_whole_files_only(tmp_path: Path) -> None:
    target = tmp_path / "route"
    atomic_write(target, b"primary\n")
    atomic_write(target, b"replica\n")
    assert target.read_bytes() == b"replica\n"
    assert [p.name for p in tmp_path.iterdir()] == ["route"]  # no temp file left behind
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing-dir" / "route", b"x")
