"""Seed 000's service phases in the pure core: evaluation order, lifecycle scope, run-time
failures, the ServicePhaseTooLong rule, and journaled state that replays."""

from __future__ import annotations

import json

from agent.core.actions import Log, SendAlert
from agent.core.inputs import ActionCompleted, ProbeResult, Tick
from agent.core.spec import AlertSink, GoalSet, Phase, ProbeSpec
from agent.core.step import step
from agent.journal.codec import decode, encode
from tests.corekit import Harness, http_probe, service

SYNCING = "probes.sync.ok && probes.sync.result != false"
BESU = (
    Phase("Syncing", SYNCING, alert_after=1800.0),
    Phase("Consensus", "probes.sync.result == false && probes.mining.result == true"),
    Phase("Synced", "probes.sync.result == false"),
)


def rpc(name: str) -> ProbeSpec:
    return ProbeSpec(name, "jsonrpc", url="http://127.0.0.1:1/", rpc_method="eth_syncing")


def besu(*phases: Phase) -> Harness:
    h = Harness()
    sinks = (AlertSink("hook", "webhook", url="http://hook"),)
    spec = service("besu", probes=("up",), phases=phases or BESU)
    h.load(GoalSet(services=(spec,), probes=(http_probe("up"), rpc("sync"), rpc("mining")),
                   sinks=sinks))  # fmt: skip
    h.observe("besu.service", "active", "running", 1.0)
    h.feed(ProbeResult("up", True, 0.01, 1.5))
    assert h.lifecycle("besu") == "Running"
    return h


def answer(h: Harness, probe: str, result: object, at: float) -> None:
    h.feed(ProbeResult(probe, True, 0.01, at, result=json.dumps(result)))


def phase(h: Harness) -> tuple[str, float, str]:
    svc = h.state.services["besu"]
    return svc.phase, svc.phase_since, svc.phase_error


def logs(h: Harness) -> list[str]:
    return [a.message for a in h.emitted if isinstance(a, Log) and "phase" in a.message]


def test_the_first_phase_that_holds_is_the_phase() -> None:
    h = besu()
    assert phase(h) == ("", 0.0, "")  # no probe has answered: no phase holds
    answer(h, "sync", {"currentBlock": "0x1", "highestBlock": "0x9"}, 2.0)
    assert phase(h) == ("Syncing", 2.0, "")
    answer(h, "sync", {"currentBlock": "0x2", "highestBlock": "0x9"}, 3.0)
    assert phase(h) == ("Syncing", 2.0, "")  # still syncing: the phase keeps its start
    answer(h, "sync", False, 10.0)
    assert phase(h) == ("Synced", 10.0, "")
    answer(h, "mining", True, 11.0)
    assert phase(h) == ("Consensus", 11.0, "")  # written before Synced: it wins
    assert logs(h) == [
        "phase none -> Syncing",
        "phase Syncing -> Synced after 8s",
        "phase Synced -> Consensus after 1s",
    ]


def test_a_phase_lives_only_within_starting_and_running() -> None:
    h = besu()
    answer(h, "sync", True, 2.0)
    assert phase(h)[0] == "Syncing"
    h.observe("besu.service", "deactivating", "stop-sigterm", 5.0)
    assert h.lifecycle("besu") == "Stopping" and phase(h) == ("", 5.0, "")
    assert logs(h)[-1] == "phase Syncing -> none after 3s (Stopping)"


def test_a_failure_at_run_time_leaves_the_phase_unknown_and_says_why() -> None:
    h = besu(Phase("Behind", "probes.sync.result.highestBlock != probes.sync.result.currentBlock"))
    answer(h, "sync", {"highestBlock": "0x9", "currentBlock": "0x1"}, 2.0)
    assert phase(h)[0] == "Behind"
    answer(h, "sync", False, 3.0)  # a bool has no fields
    name, _, error = phase(h)
    assert name == "" and error.startswith("phase Behind: ")
    assert logs(h)[-1] == f"phase unknown: {error}"
    answer(h, "sync", {"highestBlock": "0x9", "currentBlock": "0x9"}, 4.0)
    assert phase(h) == ("", 3.0, "")  # known again: no phase holds
    assert logs(h)[-1] == "phase unknown -> none"


def test_a_phase_sees_its_own_history_and_the_lifecycle() -> None:
    tunnel = (
        Phase("Connected", "probes.up.ok"),
        Phase("Reconnecting", 'phase in ["Connected", "Reconnecting"]'),
        Phase("Connecting", 'lifecycle == "Starting" || lifecycle == "Running"'),
    )
    h = besu(*tunnel)
    assert phase(h)[0] == "Connected"
    h.feed(ProbeResult("up", False, 0.01, 3.0, "refused"))  # one failure: still Running
    assert (h.lifecycle("besu"), phase(h)[0]) == ("Running", "Reconnecting")
    h.feed(ProbeResult("up", True, 0.01, 4.0))
    assert phase(h)[0] == "Connected"


def sends(h: Harness, inp: Tick) -> list[tuple[str, bool, str]]:
    return [(a.alert.name, a.alert.firing, a.alert.summary) for a in h.tracked(inp)
            if isinstance(a, SendAlert)]  # fmt: skip


def test_a_phase_held_too_long_alerts_with_the_phase_then_resolves() -> None:
    h = besu()
    answer(h, "sync", True, 100.0)
    assert sends(h, Tick(1899.0)) == []
    fired = sends(h, Tick(1900.0))
    assert decode(encode(h.state)) == h.state and encode(tuple(h.emitted))  # all journaled
    summary = "besu in phase Syncing (Running) for 1800s, over 1800s"
    assert fired == [("ServicePhaseTooLong", True, summary)]
    for action in list(h.state.pending.values()):
        h.feed(ActionCompleted(action.id, True, 1901.0))
    answer(h, "sync", False, 2000.0)
    resolved = [a for a in h.state.pending.values() if isinstance(a, SendAlert)]
    assert [(a.alert.name, a.alert.firing) for a in resolved] == [("ServicePhaseTooLong", False)]


def test_phase_state_is_journaled_and_replays_the_same() -> None:
    h = besu()
    answer(h, "sync", {"currentBlock": "0x1"}, 2.0)
    state = decode(encode(h.state))
    assert state.services["besu"].phase == "Syncing"
    assert json.loads(state.probes["sync"].result) == {"currentBlock": "0x1"}
    again, _ = step(state, ProbeResult("sync", True, 0.01, 3.0, result="false"))
    ours, _ = step(h.state, ProbeResult("sync", True, 0.01, 3.0, result="false"))
    assert encode(again) == encode(ours) and again.services["besu"].phase == "Synced"


def test_a_service_without_phases_never_has_one() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("web", probes=("up",)),), probes=(http_probe("up"),)))
    h.observe("web.service", "active", "running", 1.0)
    h.feed(ProbeResult("up", True, 0.01, 1.5, result="true"))
    svc = h.state.services["web"]
    assert (svc.lifecycle, svc.phase, svc.phase_error) == ("Running", "", "")
    assert h.tracked(Tick(10_000.0)) == []
