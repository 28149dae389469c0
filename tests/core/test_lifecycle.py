"""Seed 000's lifecycle from systemd's states: the mapping table, real units' paths through it
(no "observed jump" on a legitimate one), what the thrash rule counts, and root causes."""

from __future__ import annotations

import pytest

from agent.core.actions import Log, SendAlert
from agent.core.inputs import ActionCompleted, ProbeResult, Tick, UnitObserved
from agent.core.lifecycle import allowed, derive, exit_reason, systemd_restarts
from agent.core.spec import AlertSink, AlertThresholds, GoalSet
from agent.core.state import Health, Lifecycle
from tests.corekit import Harness, http_probe, jobs, policy, service

# (ActiveState, SubState, agent's job, health) -> lifecycle; the README's table, row by row.
TABLE: list[tuple[str, str, str | None, Health, Lifecycle]] = [
    ("active", "running", None, "healthy", "Running"),
    ("active", "running", None, "unknown", "Starting"),  # its probes have not decided yet
    ("active", "running", None, "unhealthy", "Error"),
    ("active", "exited", None, "healthy", "Running"),  # oneshot with RemainAfterExit=yes
    ("active", "waiting", None, "healthy", "Running"),  # a timer waiting for its time
    ("active", "elapsed", None, "healthy", "Running"),  # a timer that will not fire again
    ("reloading", "reload", None, "healthy", "Running"),  # a reload is not a lifecycle change
    ("active", "running", "restart", "unhealthy", "Restarting"),  # its stop not begun yet
    ("active", "running", "restart", "healthy", "Restarting"),
    ("active", "running", "start", "healthy", "Running"),
    ("activating", "start-pre", None, "unknown", "Starting"),
    ("activating", "start", None, "unknown", "Starting"),
    ("activating", "start-post", None, "unknown", "Starting"),
    ("activating", "auto-restart", None, "unknown", "Restarting"),  # systemd's own Restart=
    ("activating", "start", "restart", "unknown", "Starting"),
    ("deactivating", "stop", None, "healthy", "Stopping"),
    ("deactivating", "stop-sigterm", None, "healthy", "Stopping"),
    ("deactivating", "stop-sigkill", None, "healthy", "Stopping"),
    ("deactivating", "stop-post", None, "healthy", "Stopping"),
    ("deactivating", "final-sigterm", "stop", "healthy", "Stopping"),
    ("deactivating", "stop-sigterm", "restart", "unhealthy", "Restarting"),
    ("deactivating", "stop-sigterm", "start", "healthy", "Stopping"),
    ("inactive", "dead", None, "unknown", "Stopped"),
    ("inactive", "dead", "start", "unknown", "Starting"),
    ("inactive", "dead", "restart", "unknown", "Starting"),  # the restart's stop is done
    ("inactive", "dead", "stop", "unknown", "Stopped"),
    ("failed", "failed", None, "unknown", "Error"),
    ("failed", "failed", "start", "unknown", "Starting"),
    ("failed", "failed", "stop", "unknown", "Error"),
    ("maintenance", "maintenance", None, "unknown", "Stopped"),  # systemctl clean
]


@pytest.mark.parametrize(("active", "sub", "job", "health", "expected"), TABLE)
def test_every_systemd_state_maps_to_seed_000(
    active: str, sub: str, job: str | None, health: Health, expected: Lifecycle
) -> None:
    assert derive(active, sub, "loaded", health, job)[0] == expected


@pytest.mark.parametrize("load", ["not-found", "masked", "bad-setting", "error"])
def test_a_unit_that_cannot_load_is_in_error_whatever_else(load: str) -> None:
    assert derive("inactive", "dead", load, "unknown", "start") == ("Error", f"unit is {load}")


@pytest.mark.parametrize(
    ("result", "code", "status", "expected"),
    [
        ("exit-code", 1, 203, "exit-code, status 203/EXEC"),
        ("exit-code", 1, 1, "exit-code, status 1/FAILURE"),
        ("exit-code", 1, 42, "exit-code, status 42"),
        ("signal", 2, 9, "signal SIGKILL"),
        ("core-dump", 3, 11, "core-dump, signal SIGSEGV"),
        ("timeout", 2, 15, "timeout, signal SIGTERM"),
        ("start-limit-hit", 0, 0, "start-limit-hit"),
        ("oom-kill", 2, 9, "oom-kill, signal SIGKILL"),
        ("success", 1, 0, ""),
    ],
)
def test_root_causes_read_like_systemctl(
    result: str, code: int, status: int, expected: str
) -> None:
    assert exit_reason(result, code, status) == expected


def test_a_skipped_state_is_no_jump_but_an_impossible_one_is() -> None:
    assert allowed("Stopped", "Running")  # a simple service: its Starting passes unseen
    assert allowed("Running", "Stopped")
    assert allowed("Error", "Restarting") and allowed("Stopping", "Restarting")
    assert not allowed("Stopped", "Stopping")
    assert not allowed("Stopping", "Running")


def _walk(h: Harness, unit: str, path: list[tuple[str, str]], at: float) -> list[str]:
    """Feed systemd states; the distinct lifecycle states the service went through."""
    seen = [h.lifecycle("web")]
    for i, (active, sub) in enumerate(path):
        h.feed(UnitObserved(unit, active, sub, at + i / 10, main_pid=100 + i))
        if h.lifecycle("web") != seen[-1]:
            seen.append(h.lifecycle("web"))
    return seen


def _jumps(h: Harness) -> list[str]:
    return [a.message for a in h.emitted if isinstance(a, Log) and "jump" in a.message]


def test_systemds_own_restart_reads_restarting_without_a_jump() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("web"),)))
    path = [
        ("active", "running"),
        ("deactivating", "stop-sigterm"),
        ("activating", "auto-restart"),
        ("activating", "start"),
        ("active", "running"),
    ]
    assert _walk(h, "web.service", path, 1) == [
        "Stopped", "Running", "Stopping", "Restarting", "Starting", "Running"
    ]  # fmt: skip
    assert _jumps(h) == [] and not [a for a in h.emitted if hasattr(a, "op")]
    assert len(h.state.services["web"].recent) == 1  # one failure cycle


def test_the_agents_restart_reads_restarting_until_the_stop_completes() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("web", probes=("hz",)),),
                   probes=(http_probe("hz", failures=1),)))  # fmt: skip
    h.feed(UnitObserved("web.service", "active", "running", 1, main_pid=10))
    h.feed(ProbeResult("hz", True, 0.01, 2))
    out = h.tracked(ProbeResult("hz", False, 0.01, 3, "HTTP 500"))  # a frozen service
    assert jobs(out) == [("restart", "web.service")]
    for active, sub in (("active", "running"), ("deactivating", "stop-sigterm"),
                        ("deactivating", "stop-sigkill")):  # fmt: skip
        h.feed(UnitObserved("web.service", active, sub, 4, main_pid=10))
        assert h.lifecycle("web") == "Restarting"
        assert h.state.services["web"].reason == "unhealthy: hz: HTTP 500"
    h.feed(UnitObserved("web.service", "inactive", "dead", 5))
    assert h.lifecycle("web") == "Starting"
    h.feed(UnitObserved("web.service", "active", "running", 6, main_pid=11))
    h.feed(ActionCompleted(out[0].id, True, 6.1))
    h.feed(ProbeResult("hz", True, 0.01, 7))
    assert h.lifecycle("web") == "Running" and _jumps(h) == []


def test_a_restart_seen_only_as_a_new_main_process_is_over() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("web", probes=("hz",)),),
                   probes=(http_probe("hz", failures=1),)))  # fmt: skip
    h.feed(UnitObserved("web.service", "active", "running", 1, main_pid=10))
    h.feed(ProbeResult("hz", True, 0.01, 2))
    h.tracked(ProbeResult("hz", False, 0.01, 3))
    h.feed(UnitObserved("web.service", "active", "running", 4, main_pid=12))  # signals lost
    assert h.lifecycle("web") == "Starting"


RESTART = (("deactivating", "stop-sigterm"), ("inactive", "dead"), ("activating", "start"),
           ("active", "running"))  # fmt: skip


def test_a_hand_restart_and_a_hung_recovery_are_not_thrashing() -> None:
    h = Harness()
    h.load(GoalSet(
        services=(service("web", probes=("hz",), alerts=AlertThresholds(thrash_transitions=2)),),
        probes=(http_probe("hz", failures=1),),
        sinks=(AlertSink("hook", "webhook", url="http://h"),),
    ))  # fmt: skip
    h.feed(UnitObserved("web.service", "active", "running", 1, main_pid=10))
    h.feed(ProbeResult("hz", True, 0.01, 2))
    job = h.tracked(ProbeResult("hz", False, 0.01, 3))[0].id  # hung: restarted
    for i, (active, sub) in enumerate(RESTART):
        h.feed(UnitObserved("web.service", active, sub, 4 + i, main_pid=20))
    h.feed(ActionCompleted(job, True, 8))
    h.feed(ProbeResult("hz", True, 0.01, 9))
    for i, (active, sub) in enumerate(RESTART):
        h.feed(UnitObserved("web.service", active, sub, 20 + i, main_pid=30))  # by hand
    h.feed(ProbeResult("hz", True, 0.01, 25))
    h.feed(Tick(26))
    assert h.state.services["web"].transitions >= 10
    assert len(h.state.services["web"].recent) == 1
    assert "ServiceThrashing:web" not in h.state.alerts


def test_a_crash_loop_under_systemds_restart_is_thrashing() -> None:
    h = Harness()
    h.load(GoalSet(
        services=(service("web", alerts=AlertThresholds(thrash_transitions=3)),),
        sinks=(AlertSink("hook", "webhook", url="http://h"),),
    ))  # fmt: skip
    for i in range(3):
        h.feed(UnitObserved("web.service", "active", "running", 1 + i))
        h.feed(UnitObserved("web.service", "activating", "auto-restart", 1.5 + i,
                            result="exit-code", exit_code=1, exit_status=1))  # fmt: skip
    sent = [a for a in h.tracked(Tick(5)) if isinstance(a, SendAlert)]
    assert [a.alert.summary for a in sent] == ["web: 3 failure cycles in 600s"]
    assert h.state.services["web"].job is None  # systemd restarts it: the agent does not


def test_a_missing_executable_says_so_in_reason_log_and_alert() -> None:
    h = Harness()
    h.load(GoalSet(
        services=(service("web", restart=policy(limit=2, backoff_initial=0)),),
        sinks=(AlertSink("hook", "webhook", url="http://h"),),
    ))  # fmt: skip
    h.feed(UnitObserved("web.service", "inactive", "dead", 1))
    for at in (2.0, 3.0, 4.0):
        h.feed(ActionCompleted(h.state.services["web"].job or 0, True, at))
        h.feed(UnitObserved("web.service", "failed", "failed", at + 0.1,
                            result="exit-code", exit_code=1, exit_status=203))  # fmt: skip
    h.feed(ActionCompleted(h.state.services["web"].job or 0, True, 4.5))  # the last start's job
    svc = h.state.services["web"]
    cause = "unit failed: exit-code, status 203/EXEC"
    assert svc.gave_up and svc.reason == f"{cause}; restart limit reached: 2 in 300s"
    lines = [a.message for a in h.emitted if isinstance(a, Log) and a.subject == "web"]
    assert f"{cause}; restarting (1/2)" in lines
    assert f"giving up: {cause}; restart limit reached: 2 in 300s" in lines
    sent = [a.alert for a in h.tracked(Tick(5)) if isinstance(a, SendAlert)]
    assert [(a.name, a.summary) for a in sent] == [
        ("RestartLimitReached", f"web: {cause}; restart limit reached: 2 in 300s")
    ]


@pytest.mark.parametrize(
    ("mode", "result", "expected"),
    [("always", "success", True), ("always", "signal", True), ("on-failure", "exit-code", True),
     ("on-failure", "success", False), ("on-abnormal", "signal", True),
     ("on-abnormal", "exit-code", False), ("no", "signal", False), ("", "signal", False),
     ("always", "start-limit-hit", False)],
)  # fmt: skip
def test_which_failures_systemd_restarts_itself(mode: str, result: str, expected: bool) -> None:
    assert systemd_restarts(mode, result) is expected


def test_a_unit_with_its_own_restart_is_left_to_systemd_unless_it_does_not() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("web"),)))
    h.feed(UnitObserved("web.service", "active", "running", 1, restart="always"))
    died = UnitObserved("web.service", "failed", "failed", 2, result="signal", exit_code=2,
                        exit_status=9, restart="always", restart_sec=1.0)  # fmt: skip
    assert h.tracked(died) == []  # systemd 252 shows `failed` before `auto-restart`
    assert h.tracked(UnitObserved("web.service", "activating", "auto-restart", 2.01,
                                  restart="always", restart_sec=1.0)) == []  # fmt: skip
    assert (
        h.tracked(
            UnitObserved("web.service", "inactive", "dead", 3.01, restart="always", restart_sec=1.0)
        )
        == []
    )  # its restart job
    h.feed(UnitObserved("web.service", "active", "running", 3.02, restart="always"))
    assert h.lifecycle("web") == "Running" and _jumps(h) == []
    assert h.tracked(UnitObserved("web.service", "failed", "failed", 10, result="signal",
                                  restart="always", restart_sec=1.0)) == []  # fmt: skip
    assert h.tracked(Tick(15.9)) == []
    assert jobs(h.tracked(Tick(16.1))) == [("start", "web.service")]  # systemd did not
