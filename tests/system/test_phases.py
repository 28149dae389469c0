"""Service phases with the real agent (issue 12 §4): a unit under a private systemd user manager
that is a JSON-RPC node answering eth_syncing as the test says; the phase moves Syncing ->
Synced in `setpoint status --json` and on /metrics, and ServicePhaseTooLong fires at a real
webhook while it stays Syncing too long, then resolves."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agentproc import AgentProcess, free_port, status, wait_until
from tests.brokers import PostRecorder
from tests.sysmgr import SystemdUser

pytestmark = pytest.mark.systemd

NODE = """\
import json, sys
from pathlib import Path
from aiohttp import web

port, answer = int(sys.argv[1]), Path(sys.argv[2])

async def rpc(request):
    call = await request.json()
    if call["method"] != "eth_syncing":
        error = {"code": -32601, "message": "method not found"}
        return web.json_response({"jsonrpc": "2.0", "id": call["id"], "error": error})
    result = json.loads(answer.read_text())
    return web.json_response({"jsonrpc": "2.0", "id": call["id"], "result": result})

async def liveness(request):
    return web.json_response({"status": "UP"})

app = web.Application()
app.router.add_post("/", rpc)
app.router.add_get("/liveness", liveness)
web.run_app(app, host="127.0.0.1", port=port, print=None)
"""

GOALS = """\
apiVersion: setpoint/v1
services:
  node:
    unit: sp-phase-node.service
    probes: [live]
    phases:
      Syncing: {{when: 'probes.sync.ok && probes.sync.result != false', alert_after: 2s}}
      Synced: {{when: 'probes.sync.ok && probes.sync.result == false'}}
probes:
  live: {{http: {{url: "http://127.0.0.1:{port}/liveness"}}, interval: 200ms, timeout: 1s}}
  sync:
    jsonrpc: {{url: "http://127.0.0.1:{port}/", method: eth_syncing}}
    interval: 200ms
    timeout: 1s
sinks:
  hook: {{webhook: {{url: "http://127.0.0.1:{hook}/"}}}}
"""


@pytest.fixture
def hook() -> Iterator[PostRecorder]:
    recorder = PostRecorder(free_port())
    yield recorder
    recorder.close()


def node(state: Path) -> dict[str, Any]:
    found: dict[str, Any] = status(state)["services"].get("node", {})
    return found


def phase_alerts(hook: PostRecorder) -> list[tuple[str, str]]:
    return [(b["status"], b["summary"]) for b in hook.bodies()
            if b["labels"]["alertname"] == "ServicePhaseTooLong"]  # fmt: skip


def test_phase_moves_from_syncing_to_synced_and_alerts_while_too_long(
    systemd_user: SystemdUser, tmp_path: Path, hook: PostRecorder
) -> None:
    mgr, port, state = systemd_user, free_port(), tmp_path / "state"
    (tmp_path / "node.py").write_text(NODE)
    answer = tmp_path / "answer.json"
    answer.write_text('{"startingBlock": "0x0", "currentBlock": "0x1", "highestBlock": "0x9"}')
    mgr.write_unit(
        "sp-phase-node.service",
        f"[Service]\nExecStart={sys.executable} {tmp_path / 'node.py'} {port} {answer}\n",
    )
    mgr.daemon_reload()
    goals = tmp_path / "goals.yaml"
    goals.write_text(GOALS.format(port=port, hook=hook.server.server_port))
    with AgentProcess(goals, state, bus="user", env=mgr.env) as agent:
        agent.wait_started()
        wait_until(lambda: node(state).get("phase") == "Syncing", 20, "the Syncing phase")
        doc = node(state)
        assert (doc["lifecycle"], doc["phase_error"]) == ("Running", "")
        assert agent.metric('setpoint_service_phase{service="node",phase="Syncing"}') == 1.0
        assert agent.metric('setpoint_service_phase{service="node",phase="Synced"}') == 0.0

        wait_until(lambda: bool(phase_alerts(hook)), 20, "ServicePhaseTooLong at the webhook")
        [(firing, summary)] = phase_alerts(hook)
        assert firing == "firing" and summary.startswith("node in phase Syncing (Running) for ")
        assert "over 2s" in summary
        assert any(a["name"] == "ServicePhaseTooLong" for a in status(state)["alerts"])

        answer.write_text("false")
        wait_until(lambda: node(state).get("phase") == "Synced", 20, "the Synced phase")
        assert node(state)["lifecycle"] == "Running"
        assert agent.metric('setpoint_service_phase{service="node",phase="Syncing"}') == 0.0
        assert agent.metric('setpoint_service_phase{service="node",phase="Synced"}') == 1.0
        wait_until(lambda: len(phase_alerts(hook)) == 2, 20, "the alert resolved")
        assert phase_alerts(hook)[1][0] == "resolved"
        assert "[node] phase Syncing -> Synced after " in agent.output()
        assert agent.stop() == 0
    mgr.systemctl("stop", "sp-phase-node.service")
