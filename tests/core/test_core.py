"""Table-driven tests of the pure core: lifecycle, restart policy, dependencies, domains."""

from __future__ import annotations

from dataclasses import replace

import pytest
from immutables import Map

from agent.core.actions import (
    Action,
    Log,
    Owner,
    Resync,
    RunEffect,
    SendAlert,
    TrackedAction,
    UnitJob,
)
from agent.core.draft import unchanged
from agent.core.inputs import (
    ActionCompleted,
    ClusterAdopted,
    ClusterObserved,
    GoalsRejected,
    ManagerStarted,
    OperatorCommand,
    ProbeResult,
    Tick,
    UnitObserved,
)
from agent.core.lifecycle import backoff
from agent.core.spec import (
    AlertSink,
    AlertThresholds,
    DomainSpec,
    Effect,
    FailoverGroup,
    GoalSet,
    Member,
    StateVar,
    Transition,
)
from agent.core.step import restore, step
from tests.corekit import Harness, effects, http_probe, jobs, policy, routing_domain, service


@pytest.mark.parametrize(
    ("attempts", "expected"), [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (30, 60.0)]
)
def test_backoff_is_exponential_and_capped(attempts: int, expected: float) -> None:
    assert backoff(attempts, 1.0, 2.0, 60.0) == expected


def crash_loop_harness(**kw: float) -> Harness:
    h = Harness()
    h.load(GoalSet(services=(service("web", restart=policy(**kw)),)))
    return h


def test_crash_restarts_at_once_then_backs_off_then_gives_up() -> None:
    h = crash_loop_harness(backoff_initial=1, backoff_factor=2, limit=3, window=60, stable_for=30)
    assert jobs(h.observe("web.service", "failed", "failed", 10)) == [("start", "web.service")]
    job = h.state.services["web"].job
    assert job is not None
    h.feed(ActionCompleted(job, True, 10.1))
    assert h.observe("web.service", "failed", "failed", 10.2) == []  # backoff: 1 s
    assert jobs(h.tracked(Tick(11.3))) == [("start", "web.service")]
    h.feed(ActionCompleted(h.state.services["web"].job or 0, True, 11.4))
    assert h.tracked(Tick(12.0)) == []  # backoff: 2 s after the 2nd attempt
    assert jobs(h.tracked(Tick(13.5))) == [("start", "web.service")]
    h.feed(ActionCompleted(h.state.services["web"].job or 0, True, 13.6))
    actions = h.feed(Tick(30.0))
    svc = h.state.services["web"]
    assert svc.gave_up and svc.lifecycle == "Error"
    assert "restart limit reached: 3 in 60s" in svc.reason
    assert any(isinstance(a, Log) and "giving up" in a.message for a in actions)
    assert h.tracked(Tick(1000.0)) == []  # no more restarts once given up


def test_counters_reset_after_stable_period() -> None:
    h = crash_loop_harness(limit=2, window=600, stable_for=30, backoff_initial=0)
    for at in (1.0, 2.0):
        h.observe("web.service", "failed", "failed", at)
        h.feed(ActionCompleted(h.state.services["web"].job or 0, True, at + 0.1))
    h.feed(Tick(3.0))
    assert h.state.services["web"].gave_up
    h.observe("web.service", "active", "running", 100.0)  # an operator started it by hand
    assert h.state.services["web"].lifecycle == "Running"
    h.feed(Tick(120.0))
    assert h.state.services["web"].gave_up  # not yet stable for 30 s
    h.feed(Tick(131.0))
    svc = h.state.services["web"]
    assert not svc.gave_up and svc.restarts == () and svc.reason == ""
    assert jobs(h.observe("web.service", "failed", "failed", 140.0)) == [("start", "web.service")]


def test_dependant_waits_for_dependency_running() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("db"), service("app", depends_on=("db",)))))
    assert h.observe("app.service", "inactive", "dead", 1) == []
    assert jobs(h.observe("db.service", "inactive", "dead", 1)) == [("start", "db.service")]
    h.feed(ActionCompleted(h.state.services["db"].job or 0, True, 1.5))
    assert h.observe("db.service", "activating", "start", 2) == []
    assert jobs(h.observe("db.service", "active", "running", 3)) == [("start", "app.service")]


def test_desired_stopped_stops_a_unit_started_by_hand() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("batch", desired="stopped"),)))
    assert h.observe("batch.service", "inactive", "dead", 1) == []
    assert jobs(h.observe("batch.service", "active", "running", 2)) == [("stop", "batch.service")]


def test_unmanaged_is_observed_only() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("x", desired="unmanaged"),)))
    assert h.observe("x.service", "failed", "failed", 1) == []
    assert h.state.services["x"].lifecycle == "Error"


def test_maintenance_observes_and_never_acts() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("web"),)))
    h.feed(OperatorCommand("maintenance_on", 0.5))
    assert h.observe("web.service", "failed", "failed", 1) == []
    assert h.state.services["web"].lifecycle == "Error"
    assert h.tracked(Tick(100)) == []
    assert jobs(h.tracked(OperatorCommand("maintenance_off", 101))) == [("start", "web.service")]


def test_per_service_maintenance_and_unknown_target() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("a"), service("b"))))
    h.feed(OperatorCommand("maintenance_on", 0.5, target="a"))
    assert h.observe("a.service", "failed", "failed", 1) == []
    assert jobs(h.observe("b.service", "failed", "failed", 1)) == [("start", "b.service")]
    before = h.state
    out = h.feed(OperatorCommand("reset", 2, target="nope"))
    assert h.state is before
    assert [a.message for a in out if isinstance(a, Log)] == [
        "command reset: no service named 'nope'"
    ]


def test_resync_command_asks_observers() -> None:
    h = Harness()
    assert h.feed(OperatorCommand("resync", 1)) == [
        Resync(),
        Log("info", "operator command resync"),
    ]


def test_irregular_jump_is_recorded_not_fatal() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("web", desired="unmanaged"),)))
    h.observe("web.service", "active", "running", 1)  # first sighting: not a jump
    h.observe("web.service", "inactive", "dead", 1.5)  # its Stopping passed unseen: no jump
    out = h.feed(UnitObserved("web.service", "deactivating", "stop-sigterm", 2))
    svc = h.state.services["web"]
    assert (svc.lifecycle, svc.irregular, svc.transitions) == ("Stopping", 1, 3)
    assert any(isinstance(a, Log) and "Stopped -> Stopping" in a.message for a in out)


def test_permanent_job_failure_gives_up_with_the_reason() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("web"),)))
    h.observe("web.service", "inactive", "dead", 1)
    job = h.state.services["web"].job or 0
    h.feed(ActionCompleted(job, False, 1.2, "unit web.service: access denied", permanent=True))
    svc = h.state.services["web"]
    assert (svc.lifecycle, svc.gave_up, svc.job) == ("Error", True, None)
    assert svc.reason == "unit web.service: access denied"
    assert h.tracked(Tick(500)) == []


def test_missing_unit_is_an_error_without_jobs() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("ghost"),)))
    assert h.tracked(UnitObserved("ghost.service", "inactive", "dead", 1, load="not-found")) == []
    assert h.state.services["ghost"].reason == "unit is not-found"


def test_one_lifecycle_job_at_a_time() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("web", restart=policy(backoff_initial=0)),)))
    assert len(h.observe("web.service", "failed", "failed", 1)) == 1
    assert h.observe("web.service", "inactive", "dead", 1.1) == []
    assert h.tracked(Tick(5)) == []


def test_unhealthy_service_is_restarted_after_failures_threshold() -> None:
    h = Harness()
    goals = GoalSet(
        services=(service("web", probes=("hz",)),),
        probes=(http_probe("hz", failures=2, successes=1, start_period=5),),
    )
    h.load(goals)
    h.observe("web.service", "active", "running", 10)
    assert h.lifecycle("web") == "Starting"
    assert h.tracked(ProbeResult("hz", False, 0.1, 12, "refused")) == []  # start period
    h.feed(ProbeResult("hz", True, 0.01, 16))
    assert h.lifecycle("web") == "Running"
    assert h.tracked(ProbeResult("hz", False, 0.1, 20, "HTTP 500")) == []  # 1 of 2
    assert jobs(h.tracked(ProbeResult("hz", False, 0.1, 21, "HTTP 500"))) == [
        ("restart", "web.service")
    ]
    svc = h.state.services["web"]  # restart() from Error: Restarting, and still saying why
    assert (svc.lifecycle, svc.reason, svc.errors) == (
        "Restarting", "unhealthy: hz: HTTP 500", 1
    )  # fmt: skip


def test_steady_probe_results_change_nothing() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("web", probes=("hz",)),), probes=(http_probe("hz"),)))
    h.observe("web.service", "active", "running", 1)
    h.feed(ProbeResult("hz", True, 0.01, 2))
    before = h.state
    assert step(before, ProbeResult("hz", True, 0.02, 3)) == (before, ())
    assert unchanged(before, step(before, Tick(4))[0])


def test_ved_scenario_failover_and_page_are_independent() -> None:
    h = Harness()
    goals = GoalSet(
        services=(service("db-primary", desired="unmanaged"),), domains=(routing_domain(),)
    )
    h.load(goals)
    h.observe("db-primary.service", "active", "running", 1)
    assert h.state.domains["DatabaseRouting"].satisfied
    fired = h.observe("db-primary.service", "failed", "failed", 10)
    assert effects(fired) == ["ExecuteFailover", "TriggerPagerDuty"]
    dns, page = fired
    h.feed(ActionCompleted(page.id, False, 10.5, "pager down"))  # the pager fails...
    h.feed(ActionCompleted(dns.id, True, 10.6))  # ...the failover still lands
    dom = h.state.domains["DatabaseRouting"]
    assert dom.values["active_route"] == "replica" and dom.values["alert_sent"] is False
    assert h.tracked(Tick(12)) == []  # page waits retry_after (5 s)
    retry = h.tracked(Tick(15.6))
    assert effects(retry) == ["TriggerPagerDuty"]
    h.feed(ActionCompleted(retry[0].id, True, 16))
    dom = h.state.domains["DatabaseRouting"]
    assert dom.satisfied and dom.values["alert_sent"] is True  # Reality B: rest
    assert h.tracked(Tick(100)) == []
    back = h.observe("db-primary.service", "active", "running", 200)
    assert effects(back) == ["AutoRestore"]
    h.feed(ActionCompleted(back[0].id, True, 201))
    dom = h.state.domains["DatabaseRouting"]
    assert dom.satisfied and dict(dom.values) == {
        "primary_status": "healthy",
        "active_route": "primary",
        "alert_sent": False,
    }


def test_domain_waits_for_first_observation() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("db-primary"),), domains=(routing_domain(),)))
    assert effects(h.emitted) == []  # type: ignore[arg-type]


def test_restore_emits_exactly_the_pending_set() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("a"), service("b"))))
    h.observe("a.service", "failed", "failed", 1)
    h.observe("b.service", "failed", "failed", 1)
    first = h.state.services["a"].job or 0
    h.observe("a.service", "active", "running", 1.5)
    h.feed(ActionCompleted(first, True, 2))
    assert [a.id for a in restore(h.state)] == [h.state.services["b"].job]
    assert all(isinstance(a, UnitJob) for a in restore(h.state))


def test_stale_or_duplicate_results_are_ignored() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("a"),)))
    h.observe("a.service", "failed", "failed", 1)
    job = h.state.services["a"].job or 0
    h.feed(ActionCompleted(job, True, 2))
    after = h.state
    h.feed(ActionCompleted(job, True, 3))
    assert h.state.pending == after.pending and h.state == after


def test_reload_keeps_state_and_a_changed_spec_clears_give_up() -> None:
    h = Harness()
    goals = GoalSet(
        services=(service("a", restart=policy(limit=1, backoff_initial=0)),), digest="1"
    )
    h.load(goals)
    h.observe("a.service", "failed", "failed", 1)
    h.feed(ActionCompleted(h.state.services["a"].job or 0, False, 1.1, "failed"))
    h.feed(Tick(2))
    assert h.state.services["a"].gave_up
    same = h.state
    assert h.load(goals, 3) == [] and h.state is same  # same digest: no-op
    fixed = GoalSet(
        services=(service("a", restart=policy(limit=5, backoff_initial=0)),), digest="2"
    )
    assert jobs(h.load(fixed, 4)) == [("start", "a.service")]


def test_domain_ignores_the_blind_spot_while_probes_decide() -> None:
    h = Harness()
    goals = GoalSet(
        services=(service("db-primary", probes=("hz",), on_unhealthy="alert"),),
        probes=(http_probe("hz", failures=2),),
        domains=(routing_domain(),),
    )
    h.load(goals)
    assert effects(h.observe("db-primary.service", "active", "running", 1)) == []
    assert effects(h.tracked(ProbeResult("hz", True, 0.01, 2))) == []
    assert h.state.domains["DatabaseRouting"].satisfied
    assert effects(h.tracked(ProbeResult("hz", False, 0.01, 3))) == []
    failed = h.tracked(ProbeResult("hz", False, 0.01, 4))
    assert effects(failed) == ["ExecuteFailover", "TriggerPagerDuty"]


def alert_goals() -> GoalSet:
    sinks = (
        AlertSink("am", "alertmanager", url="http://am", repeat_interval=3600),
        AlertSink("hook", "webhook", url="http://hook", repeat_interval=600),
    )
    return GoalSet(services=(service("web", desired="unmanaged"),), sinks=sinks)


def sends(actions: list[TrackedAction]) -> list[tuple[str, str, bool]]:
    return [(a.sink, a.alert.name, a.alert.firing) for a in actions if isinstance(a, SendAlert)]


def test_error_alert_fires_after_threshold_and_resolves_on_every_sink() -> None:
    h = Harness()
    h.load(alert_goals())
    h.observe("web.service", "failed", "failed", 100)
    assert sends(h.tracked(Tick(399))) == []
    fired = h.tracked(Tick(400))
    assert sends(fired) == [("am", "ServiceError", True), ("hook", "ServiceError", True)]
    am = next(a for a in fired if isinstance(a, SendAlert) and a.sink == "am")
    assert am.alert.ends_at == 400 + 4 * 60  # re-sent every minute, expires if not
    assert ("alertname", "ServiceError") in am.alert.labels
    for action in fired:
        h.feed(ActionCompleted(action.id, True, 401))
    assert sends(h.tracked(Tick(459))) == []
    reminder = h.tracked(Tick(461))
    assert sends(reminder) == [("am", "ServiceError", True)]
    h.observe("web.service", "active", "running", 500)
    assert sends(h.tracked(Tick(500.5))) == [("hook", "ServiceError", False)]
    resolved = h.tracked(ActionCompleted(reminder[0].id, True, 500.6))
    assert sends(resolved) == [("am", "ServiceError", False)]  # the news follows the reminder
    resolved += [a for a in h.state.pending.values() if isinstance(a, SendAlert)]
    for action in resolved:
        h.feed(ActionCompleted(action.id, True, 502))
    assert "ServiceError:web" not in h.state.alerts  # delivered everywhere: forgotten


def test_a_crash_and_the_agents_restart_follow_the_lifecycle_diagram() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("web"),)))
    h.observe("web.service", "active", "running", 1)
    seen = [h.lifecycle("web")]
    out = h.observe("web.service", "failed", "failed", 2)  # Error, and the agent acts at once
    assert jobs(out) == [("start", "web.service")]
    seen.append(h.lifecycle("web"))
    h.observe("web.service", "active", "running", 2.1)
    h.feed(ActionCompleted(out[0].id, True, 2.2))
    seen.append(h.lifecycle("web"))
    assert seen == ["Running", "Starting", "Running"]
    assert h.state.services["web"].errors == 1  # it did pass through Error
    assert h.state.services["web"].irregular == 0
    assert not [a for a in h.emitted if isinstance(a, Log) and "jump" in a.message]


def test_a_liveness_restart_goes_from_error_through_restarting() -> None:
    h = Harness()
    probes = (http_probe("hz", failures=1),)
    h.load(GoalSet(services=(service("web", probes=("hz",)),), probes=probes))
    h.observe("web.service", "active", "running", 1)
    h.feed(ProbeResult("hz", True, 0.01, 2))
    seen = [h.lifecycle("web")]
    out = h.tracked(ProbeResult("hz", False, 0.01, 3))  # unhealthy: Error, restarted at once
    assert jobs(out) == [("restart", "web.service")]
    for active, sub, at in (("deactivating", "stop-sigterm", 3.1), ("inactive", "dead", 3.2),
                            ("activating", "start", 3.3), ("active", "running", 3.4)):  # fmt: skip
        h.observe("web.service", active, sub, at)
        seen.append(h.lifecycle("web"))
    h.feed(ActionCompleted(out[0].id, True, 3.5))
    h.feed(ProbeResult("hz", True, 0.01, 4))
    seen.append(h.lifecycle("web"))
    assert [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]] == [
        "Running", "Restarting", "Starting", "Running"
    ]  # fmt: skip
    assert h.state.services["web"].errors == 1 and h.state.services["web"].irregular == 0


def test_time_in_state_comes_from_systemd_when_it_knows() -> None:
    h = Harness()
    h.load(alert_goals(), at=1000)  # the agent starts; the unit has been failed since 600
    h.feed(UnitObserved("web.service", "failed", "failed", 1001, changed_at=600))
    assert h.state.services["web"].since == 600
    assert sends(h.tracked(Tick(1002))) == [
        ("am", "ServiceError", True), ("hook", "ServiceError", True),
    ]  # fmt: skip
    h.feed(UnitObserved("web.service", "active", "running", 1010, changed_at=1009.5))
    assert h.state.services["web"].since == 1009.5
    h.feed(UnitObserved("web.service", "failed", "failed", 1020, changed_at=900))
    assert h.state.services["web"].since == 1020  # older than what we knew: our clock
    h.feed(UnitObserved("web.service", "active", "running", 1030, changed_at=1031))
    assert h.state.services["web"].since == 1030  # from the future: our clock


def test_a_sink_that_is_down_gets_the_alert_later() -> None:
    h = Harness()
    h.load(alert_goals())
    h.observe("web.service", "failed", "failed", 0)
    fired = h.tracked(Tick(300))
    hook = next(a for a in fired if isinstance(a, SendAlert) and a.sink == "hook")
    h.feed(ActionCompleted(hook.id, False, 301, "connection refused"))
    assert [s for s in sends(h.tracked(Tick(320))) if s[0] == "hook"] == []
    assert [s for s in sends(h.tracked(Tick(332))) if s[0] == "hook"] == [
        ("hook", "ServiceError", True)
    ]


def test_rejected_goals_raise_an_alert_until_good_goals_load() -> None:
    h = Harness()
    h.load(alert_goals())
    out = h.tracked(GoalsRejected(("g.yaml:3:1: unknown key 'x'",), 5))
    assert sends(out) == [("am", "GoalsInvalid", True), ("hook", "GoalsInvalid", True)]
    assert "g.yaml:3:1" in out[0].alert.summary  # type: ignore[union-attr]
    for action in out:
        h.feed(ActionCompleted(action.id, True, 6))
    again = replace(alert_goals(), digest="new")
    assert sorted(sends(h.load(again, 7))) == [
        ("am", "GoalsInvalid", False),
        ("hook", "GoalsInvalid", False),
    ]


def paging_goals(**kw: object) -> GoalSet:
    """Seed 001's routing domain with the primary's health in a service; alert_goals' sinks."""
    fields: dict[str, object] = {"domains": (routing_domain(),), **kw}
    return GoalSet(
        services=(service("db-primary", desired="unmanaged"),),
        sinks=alert_goals().sinks,
        **fields,  # type: ignore[arg-type]
    )


def page(h: Harness, at: float) -> RunEffect:
    """Fail the primary, complete the failover and the page; the page's RunEffect."""
    fired = h.observe("db-primary.service", "failed", "failed", at)
    for action in fired:
        h.feed(ActionCompleted(action.id, True, at + 1))
    return next(a for a in fired if isinstance(a, RunEffect) and a.effect.kind == "alert")


def test_a_page_stays_firing_while_its_flag_holds_and_resolves_when_reset() -> None:
    h = Harness()
    h.load(paging_goals())
    h.observe("db-primary.service", "active", "running", 1)
    page(h, 10)
    held = h.state.alerts["TriggerPagerDuty:DatabaseRouting"]
    assert held.alert.firing and held.alert.summary == "Primary DB Down"
    assert ("alertname", "TriggerPagerDuty") in held.alert.labels
    assert sends(h.tracked(Tick(12))) == []  # the effect delivered it already
    reminders = h.tracked(Tick(72))  # Alertmanager forgets what is not re-sent
    assert sends(reminders) == [("am", "TriggerPagerDuty", True)]
    h.feed(ActionCompleted(reminders[0].id, True, 72.5))
    restore = h.observe("db-primary.service", "active", "running", 80)
    assert effects(restore) == ["AutoRestore"]
    assert sends(restore) == []  # alert_sent still holds until AutoRestore completes
    resolved = h.tracked(ActionCompleted(restore[0].id, True, 81))
    assert sends(resolved) == [
        ("am", "TriggerPagerDuty", False),
        ("hook", "TriggerPagerDuty", False),
    ]
    for action in resolved:
        h.feed(ActionCompleted(action.id, True, 82))
    assert "TriggerPagerDuty:DatabaseRouting" not in h.state.alerts


def test_only_the_effects_sinks_hold_the_page_and_unassigning_pages_are_one_off() -> None:
    h = Harness()
    dom = routing_domain()
    to_hook = replace(dom.transitions[1].effects[0], sink="hook")
    pager = replace(dom.transitions[1], effects=(to_hook,))
    h.load(paging_goals(domains=(replace(dom, transitions=(dom.transitions[0], pager)),)))
    h.observe("db-primary.service", "active", "running", 1)
    page(h, 10)
    assert list(h.state.alerts["TriggerPagerDuty:DatabaseRouting"].deliveries) == ["hook"]
    one_off = replace(pager, assign=())
    h = Harness()
    h.load(paging_goals(domains=(replace(dom, transitions=(one_off,)),)))
    h.observe("db-primary.service", "active", "running", 1)
    page(h, 10)
    assert "TriggerPagerDuty:DatabaseRouting" not in h.state.alerts


def test_a_page_whose_transition_no_longer_sets_anything_is_resolved() -> None:
    h = Harness()
    h.load(paging_goals(digest="1"))
    h.observe("db-primary.service", "active", "running", 1)
    page(h, 10)
    dom = routing_domain()
    one_off = replace(dom.transitions[1], assign=())
    edited = replace(dom, transitions=(dom.transitions[0], one_off, dom.transitions[2]))
    out = h.load(paging_goals(domains=(edited,), digest="2"), 20)
    assert sorted(sends(out)) == [
        ("am", "TriggerPagerDuty", False),
        ("hook", "TriggerPagerDuty", False),
    ]


def test_a_reload_resolves_alerts_whose_subject_is_gone() -> None:
    h = Harness()
    h.load(paging_goals(digest="1"))
    h.observe("db-primary.service", "active", "running", 1)
    page(h, 10)
    h.observe("db-primary.service", "failed", "failed", 20)
    for action in h.tracked(Tick(400)):  # ServiceError fires after 5 minutes
        h.feed(ActionCompleted(action.id, True, 401))
    assert h.state.alerts["ServiceError:db-primary"].alert.firing
    emptied = h.load(GoalSet(sinks=alert_goals().sinks, digest="2"), 500)
    assert sorted(s for s in sends(emptied) if not s[2]) == [
        ("am", "ServiceError", False), ("am", "TriggerPagerDuty", False),
        ("hook", "ServiceError", False), ("hook", "TriggerPagerDuty", False),
    ]  # fmt: skip


def test_restart_limit_and_thrashing_alerts() -> None:
    h = Harness()
    h.load(GoalSet(
        services=(service("web", restart=policy(limit=2, backoff_initial=0),
                          alerts=AlertThresholds(thrash_transitions=3)),),
        sinks=(AlertSink("hook", "webhook", url="http://h"),),
    ))  # fmt: skip
    for at in (1.0, 2.0, 3.0):
        h.observe("web.service", "failed", "failed", at)
        h.observe("web.service", "active", "running", at + 0.5)
        h.feed(ActionCompleted(h.state.services["web"].job or 0, True, at + 0.6))
    h.observe("web.service", "failed", "failed", 4.0)
    names = {s[1] for s in sends(h.tracked(Tick(5.0)))}
    assert names == {"RestartLimitReached", "ServiceThrashing"}


def group_harness(switch_after: int = 2, auto_restore: bool = True) -> Harness:
    h = Harness()
    members = tuple(Member(m, probes=(f"{m}-hz",)) for m in ("primary", "replica", "standby"))
    group = FailoverGroup(
        "db", members, switch_after=switch_after, auto_restore=auto_restore,
        effects=(Effect("file", path="/run/route"),),
    )  # fmt: skip
    probes = tuple(http_probe(f"{m.name}-hz", failures=1, latency_budget=0.5) for m in members)
    h.load(GoalSet(probes=probes, groups=(group,)))
    return h


def route_targets(actions: list[TrackedAction]) -> list[str]:
    return [
        a.target for a in actions if isinstance(a, RunEffect) and a.owner == Owner("group", "db")
    ]


def result(h: Harness, member: str, ok: bool, latency: float, at: float) -> list[TrackedAction]:
    return h.tracked(ProbeResult(f"{member}-hz", ok, latency, at))


def test_route_goes_to_the_preferred_member_then_fails_over_with_hysteresis() -> None:
    h = group_harness(switch_after=2)
    first = result(h, "primary", True, 0.1, 1)
    assert route_targets(first) == ["primary"]
    result(h, "replica", True, 0.05, 1)
    result(h, "standby", True, 0.02, 1)
    h.feed(ActionCompleted(first[0].id, True, 1.1))
    assert result(h, "primary", False, 0.1, 2) == []  # 1st evaluation preferring standby
    moved = result(h, "replica", True, 0.05, 3)  # 2nd: switch to the fastest good member
    assert route_targets(moved) == ["standby"]
    assert h.state.groups["db"].route == "standby" and "FailoverActive:db" in h.state.alerts
    h.feed(ActionCompleted(moved[0].id, True, 3.1))
    assert route_targets(result(h, "primary", True, 0.1, 4)) == []  # back, but one result only
    back = result(h, "primary", True, 0.1, 5)
    assert route_targets(back) == ["primary"]  # auto-restore after K consecutive
    assert h.state.alerts["FailoverActive:db"].alert.firing is False


def test_one_slow_answer_never_flaps_the_route() -> None:
    h = group_harness(switch_after=3)
    for member in ("primary", "replica", "standby"):
        result(h, member, True, 0.1, 1)
    h.feed(ActionCompleted(next(iter(h.state.pending)), True, 1.1))
    assert result(h, "primary", True, 0.9, 2) == []  # over its 0.5 s budget once
    assert result(h, "primary", True, 0.1, 3) == []
    assert h.state.groups["db"].route == "primary" and h.state.groups["db"].streak == 0


def test_all_members_down_keeps_the_route_and_alerts() -> None:
    h = group_harness(switch_after=1)
    for member in ("primary", "replica", "standby"):
        result(h, member, True, 0.1, 1)
    for member in ("replica", "standby", "primary"):
        result(h, member, False, 0.1, 2)
    assert h.state.groups["db"].route == "primary"
    assert h.state.alerts["AllMembersDown:db"].alert.firing
    assert h.state.alerts["AllMembersDown:db"].alert.severity == "critical"


def test_route_effects_never_land_out_of_order() -> None:
    h = group_harness(switch_after=1, auto_restore=False)
    first = result(h, "primary", True, 0.1, 1)
    assert route_targets(first) == ["primary"]  # in flight, not yet completed
    result(h, "replica", True, 0.05, 1)
    assert result(h, "primary", False, 0.1, 2) == []  # decided: replica; waits for the 1st round
    assert h.state.groups["db"].route == "replica"
    second = h.tracked(ActionCompleted(first[0].id, True, 2.5))
    assert route_targets(second) == ["replica"]
    failed = h.tracked(ActionCompleted(second[0].id, False, 3, "disk full"))
    assert failed == [] and h.state.groups["db"].applied == "primary"
    assert route_targets(h.tracked(Tick(8.1))) == ["replica"]  # retried after 5 s


def test_domain_waits_while_the_agent_restarts_the_service() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("db-primary"),), domains=(routing_domain(),)))
    h.observe("db-primary.service", "active", "running", 1)
    restart = h.observe("db-primary.service", "failed", "failed", 2)
    assert jobs(restart) == [("start", "db-primary.service")] and effects(restart) == []
    h.observe("db-primary.service", "active", "running", 2.1)
    assert effects(h.tracked(ActionCompleted(restart[0].id, True, 2.2))) == []
    assert h.state.domains["DatabaseRouting"].satisfied  # recovered in place: no failover


def test_on_unhealthy_alert_alerts_at_once_and_does_not_restart() -> None:
    h = Harness()
    goals = GoalSet(
        services=(service("db", probes=("hz",), on_unhealthy="alert"),),
        probes=(http_probe("hz", failures=1),),
        sinks=(AlertSink("hook", "webhook", url="http://h"),),
    )
    h.load(goals)
    h.observe("db.service", "active", "running", 1)
    h.feed(ProbeResult("hz", True, 0.01, 2))
    assert jobs(h.tracked(ProbeResult("hz", False, 0.01, 3, "HTTP 500"))) == []
    assert sends(h.tracked(Tick(4))) == [("hook", "ServiceUnhealthy", True)]
    h.feed(ProbeResult("hz", True, 0.01, 5))
    assert sends(h.tracked(Tick(6))) == []  # the firing delivery is still in flight
    assert h.state.alerts["ServiceUnhealthy:db"].alert.firing is False


def test_a_service_member_is_judged_by_the_service_probes() -> None:
    h = Harness()
    group = FailoverGroup(
        "db", (Member("primary", service="pg"), Member("replica", probes=("r-hz",))),
        switch_after=1, effects=(Effect("file", path="/run/route"),),
    )  # fmt: skip
    h.load(GoalSet(
        services=(service("pg", probes=("pg-hz",), desired="unmanaged"),),
        probes=(http_probe("pg-hz", failures=1), http_probe("r-hz")),
        groups=(group,),
    ))  # fmt: skip
    h.tracked(ProbeResult("r-hz", True, 0.01, 1))
    h.feed(ActionCompleted(next(iter(h.state.pending)), True, 1.1))
    assert route_targets(h.tracked(ProbeResult("pg-hz", True, 0.01, 2))) == ["primary"]


LIST = "[" + ",".join(map(str, range(40))) + "]"
HEAVY = f"{LIST}.all(a, {LIST}.all(b, {LIST}.all(c, a + b + c >= 0)))"


def fragile_goals() -> GoalSet:
    """A domain whose goal fails at run time (division by zero) while hz is unhealthy and
    blows the evaluator's iteration budget while `heavy` is set, beside the routing domain."""
    fragile = DomainSpec(
        name="Fragile",
        variables=(
            StateVar("n", "int", 1, bind='probes["hz"].healthy ? 1 : 0'),
            StateVar("heavy", "bool", False),
        ),
        goal=f"10 / n > 0 && (!heavy || {HEAVY})",
        transitions=(Transition("Go", "true", (), (("heavy", True),)),),
        origins=((f"10 / n > 0 && (!heavy || {HEAVY})", "g.yaml:9:11"),),
    )
    return GoalSet(
        services=(service("web", probes=("hz",), on_unhealthy="alert"), service("db-primary")),
        probes=(http_probe("hz", failures=1),),
        domains=(fragile, routing_domain()),
        sinks=(AlertSink("am", "alertmanager", url="http://am"),),
    )


def test_a_failing_expression_pauses_its_domain_only_and_resumes() -> None:
    h = Harness()
    h.load(fragile_goals())
    h.observe("web.service", "active", "running", 1)
    h.observe("db-primary.service", "active", "running", 1)
    h.feed(ProbeResult("hz", True, 0.01, 2))
    assert not h.state.domains["Fragile"].error
    failed = h.feed(ProbeResult("hz", False, 0.01, 3))  # n = 0: 10 / 0
    dom = h.state.domains["Fragile"]
    assert dom.error == "g.yaml:9:11: divide by zero" and dom.satisfied  # paused, not broken
    alert = h.state.alerts["ExpressionFailed:Fragile"].alert
    assert alert.firing and "g.yaml:9:11: divide by zero" in alert.summary
    assert not [a for a in failed if isinstance(a, RunEffect)]  # nothing fired
    # the rest of the agent carries on: a crash of another service is still restarted
    assert jobs(h.observe("db-primary.service", "failed", "failed", 4)) == [
        ("start", "db-primary.service")
    ]
    h.feed(ProbeResult("hz", True, 0.01, 5))  # its input changed: it evaluates again
    assert not h.state.domains["Fragile"].error
    assert not h.state.alerts["ExpressionFailed:Fragile"].alert.firing


def test_an_expression_over_the_iteration_budget_pauses_its_domain() -> None:
    h = Harness()
    goals = fragile_goals()
    fragile = replace(goals.domains[0], variables=(StateVar("heavy", "bool", False),),
                      goal=f"heavy && {HEAVY}", origins=())  # fmt: skip
    h.load(replace(goals, domains=(fragile, goals.domains[1])))
    h.observe("web.service", "active", "running", 1)
    h.feed(ProbeResult("hz", True, 0.01, 2))
    h.feed(Tick(3))
    dom = h.state.domains["Fragile"]
    assert dom.values["heavy"] is True
    assert dom.error.startswith("domain Fragile: ") and "budget" in dom.error


def logs(actions: list[Action]) -> list[str]:
    return [f"{a.subject}: {a.message}" for a in actions if isinstance(a, Log)]


def test_every_job_on_a_unit_gets_one_line_with_its_reason() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("web"),)))
    first = h.feed(UnitObserved("web.service", "inactive", "dead", 1))
    assert logs(first) == ["web: unit is inactive; starting"]
    assert h.state.services["web"].restarts_total == 0  # a first start is not a restart
    h.feed(ActionCompleted(h.state.services["web"].job or 0, True, 1.1))
    h.feed(UnitObserved("web.service", "active", "running", 1.2))
    killed = h.feed(UnitObserved("web.service", "failed", "failed", 5, result="signal",
                                 exit_code=2, exit_status=9))  # fmt: skip
    assert logs(killed) == ["web: unit failed: signal SIGKILL; restarting (1/5)"]
    assert h.state.services["web"].restarts_total == 1


def test_a_unit_the_polkit_rule_does_not_cover_is_not_permitted_not_given_up() -> None:
    h = Harness()
    goals = GoalSet(services=(service("web"), service("db")), digest="d1",
                    sinks=(AlertSink("am", "alertmanager", url="http://am"),))  # fmt: skip
    h.load(goals)
    h.observe("web.service", "failed", "failed", 1)
    denied = "start web.service: Interactive authentication required."
    h.feed(ActionCompleted(h.state.services["web"].job or 0, False, 2, denied, True, True))
    h.feed(Tick(2.5))  # the service rules run on the tick
    web = h.state.services["web"]
    assert web.denied and "polkit-rule" in web.reason
    assert h.state.alerts["UnitNotPermitted:web"].alert.firing
    assert "RestartLimitReached:web" not in h.state.alerts
    assert jobs(h.observe("db.service", "failed", "failed", 3)) == [("start", "db.service")]
    # the operator regenerates the rule and reloads (the same goals): the unit is tried again
    assert jobs(h.load(goals, 4)) == [("start", "web.service")]
    h.feed(Tick(4.5))
    assert not h.state.services["web"].denied
    assert not h.state.alerts["UnitNotPermitted:web"].alert.firing


def test_a_reboot_is_not_a_crash_of_every_unit() -> None:
    h = Harness()
    h.load(GoalSet(services=(service("web"),)))
    h.feed(ManagerStarted(1000.0, 1))
    h.observe("web.service", "active", "running", 2)
    h.feed(ManagerStarted(1000.0, 3))  # the agent restarted, the manager did not
    assert h.state.services["web"].active == "active"
    rebooted = h.feed(ManagerStarted(5000.0, 10))  # a new manager: the host rebooted
    assert logs(rebooted) == [
        ": systemd manager restarted (a reboot?): units are observed afresh, restart counters reset"
    ]
    first = h.feed(UnitObserved("web.service", "inactive", "dead", 11))
    assert logs(first) == ["web: unit is inactive; starting"]
    assert h.state.services["web"].restarts == ()


def test_a_cluster_group_is_routed_by_the_leader_over_its_members_nodes() -> None:
    group = FailoverGroup(
        "db",
        (Member("a", probes=("hz",), node="n1"), Member("b", probes=("hz",), node="n2")),
        switch_after=1,
        effects=(Effect("http", url="http://lb/{target}"),),
        scope="cluster",
    )
    h = Harness()
    h.load(GoalSet(probes=(http_probe("hz"),), groups=(group,)))

    def facts(*up: str) -> Map[str, Map[str, str]]:
        return Map({n: Map({"probe/hz": "healthy"}) for n in up})

    follower = h.feed(ClusterObserved(1, True, "n3", 0, ("n1", "n2", "n3"), facts("n1", "n2")))
    assert not [a for a in follower if isinstance(a, RunEffect)]  # a follower never routes
    h.feed(ClusterObserved(2, True, "n3", 7, ("n1", "n2", "n3"), facts("n1", "n2")))
    first = h.feed(ClusterAdopted(3, 7, None))
    routed = [a for a in first if isinstance(a, RunEffect)]
    assert [(a.target, a.fence) for a in routed] == [("a", 7)]
    h.feed(ActionCompleted(routed[0].id, True, 4, fence=7))
    gone = h.feed(ClusterObserved(5, True, "n3", 7, ("n2", "n3"), facts("n2")))  # n1 vanished
    assert [(a.target, a.fence) for a in gone if isinstance(a, RunEffect)] == [("b", 7)]
