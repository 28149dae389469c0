"""Recovery beyond a plain restart: a hung stop escalated after its grace; a system shutdown
observed, not fought."""

from __future__ import annotations

from agent.core.actions import Log, UnitJob
from agent.core.inputs import ActionCompleted, ManagerStarted, ProbeResult, Tick, UnitObserved
from agent.core.spec import GoalSet
from agent.core.step import restore
from tests.corekit import Harness, http_probe, jobs, service


def hung(grace: float) -> tuple[Harness, int]:
    """A service whose probe failed while its process is frozen: the agent's restart is stuck
    in systemd's stop; (harness, the restart's id)."""
    h = Harness()
    h.load(GoalSet(services=(service("db", probes=("pg",), stop_grace=grace),),
                   probes=(http_probe("pg", failures=1),)))  # fmt: skip
    h.feed(UnitObserved("db.service", "active", "running", 1, main_pid=10))
    h.feed(ProbeResult("pg", True, 0.01, 2))
    restart = h.tracked(ProbeResult("pg", False, 0.01, 10, "timed out"))
    assert jobs(restart) == [("restart", "db.service")]
    h.feed(UnitObserved("db.service", "deactivating", "stop", 10.1, main_pid=10))
    return h, restart[0].id


def test_a_stop_outlasting_its_grace_kills_the_main_process_once() -> None:
    h, restart = hung(grace=5)
    assert h.tracked(Tick(14.9)) == []
    out = h.feed(Tick(15.0))
    assert jobs([a for a in out if isinstance(a, UnitJob)]) == [("kill", "db.service")]
    assert [a.message for a in out if isinstance(a, Log)] == [
        "restart still not done after its stop grace (5s): killing the main process with SIGKILL"
    ]
    kill = next(a for a in out if isinstance(a, UnitJob))
    assert h.tracked(Tick(30.0)) == []  # once per job
    h.feed(ActionCompleted(kill.id, True, 15.1))
    h.feed(UnitObserved("db.service", "activating", "start", 15.2))  # the restart goes on
    assert h.lifecycle("db") == "Starting"
    h.feed(UnitObserved("db.service", "active", "running", 15.3, main_pid=11))
    h.feed(ActionCompleted(restart, True, 15.4))
    h.feed(ProbeResult("pg", True, 0.01, 16))
    assert h.lifecycle("db") == "Running"
    assert not h.state.pending


def test_without_a_grace_the_agent_waits_for_systemd() -> None:
    h, _ = hung(grace=0)
    assert h.tracked(Tick(1000.0)) == []
    assert h.lifecycle("db") == "Restarting"


def test_a_shutdown_is_observed_not_fought_and_leaves_nothing_pending() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("web"), service("tick"))))
    h.feed(UnitObserved("web.service", "active", "running", 1))
    h.feed(UnitObserved("tick.service", "failed", "failed", 2))  # a start in flight
    assert h.state.services["tick"].job is not None
    out = h.feed(ManagerStarted(100.0, 3, stopping="poweroff.target queued"))
    assert [a.message for a in out if isinstance(a, Log)] == [
        "the system is shutting down (poweroff.target queued): observing only, "
        "1 unit job(s) dropped"
    ]
    assert restore(h.state) == () and h.state.services["tick"].job is None
    for at, (active, sub) in enumerate((("deactivating", "stop-sigterm"), ("inactive", "dead"))):
        assert h.tracked(UnitObserved("web.service", active, sub, 4 + at)) == []
    assert h.tracked(Tick(60)) == []
    assert h.lifecycle("web") == "Stopped"
    back = h.tracked(ManagerStarted(100.0, 61))  # `shutdown -c`: acting again
    assert sorted(jobs(back)) == [("start", "tick.service"), ("start", "web.service")]


def propagation(restart: bool) -> Harness:
    """web depends on db (restarting with it when `restart`) and cache; all running."""
    h = Harness()
    web = service("web", depends_on=("db", "cache"), restart_with=("db",) if restart else ())
    h.load(GoalSet(services=(service("db"), service("cache"), web, service("api",
                   depends_on=("db",), restart_with=("db",)))))  # fmt: skip
    for at, unit in enumerate(("db", "cache", "web", "api")):
        h.feed(UnitObserved(f"{unit}.service", "active", "running", 1 + at, changed_at=1 + at))
    return h


def test_dependants_that_asked_restart_once_after_their_dependency_runs_again() -> None:
    h = propagation(restart=True)
    assert h.tracked(UnitObserved("db.service", "deactivating", "stop-sigterm", 10)) == []
    start = h.tracked(UnitObserved("db.service", "inactive", "dead", 11))
    assert jobs(start) == [("start", "db.service")]  # nothing else while db is down
    out = h.feed(UnitObserved("db.service", "active", "running", 12, changed_at=12))
    h.feed(ActionCompleted(start[0].id, True, 12.1))
    assert sorted(jobs([a for a in out if isinstance(a, UnitJob)])) == [
        ("restart", "api.service"), ("restart", "web.service")
    ]  # fmt: skip
    assert sorted(a.message for a in out if isinstance(a, Log) and a.subject != "db") == [
        "db restarted; restarting", "db restarted; restarting"
    ]  # fmt: skip
    assert (h.lifecycle("web"), h.state.services["web"].reason) == ("Restarting", "db restarted")
    job = h.state.services["web"].job or 0
    h.feed(UnitObserved("web.service", "active", "running", 13, main_pid=7, changed_at=13))
    h.feed(ActionCompleted(job, True, 13.1))
    assert h.lifecycle("web") == "Running" and h.state.services["web"].restarts == ()
    h.feed(UnitObserved("db.service", "active", "reloading", 14))  # not a restart
    assert h.tracked(UnitObserved("db.service", "active", "running", 15)) == []
    assert h.tracked(UnitObserved("cache.service", "inactive", "dead", 16)) != []  # start it
    assert not any(j[1] == "web.service" for j in jobs(h.tracked(Tick(17))))


def test_without_the_opt_in_a_dependency_restart_leaves_dependants_alone() -> None:
    h = propagation(restart=False)
    h.feed(UnitObserved("db.service", "inactive", "dead", 11))
    out = h.tracked(UnitObserved("db.service", "active", "running", 12, changed_at=12))
    assert jobs(out) == [("restart", "api.service")]  # api asked for it, web did not
