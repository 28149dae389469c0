"""A Tick visits only the busy services (core/due.py): what has time-driven work left, and of
those only the ones whose deadline came. The simulation and test_shortcuts.py check that an
eager twin visiting every service decides the same; these pin down when a service leaves and
re-enters the busy set, and when a Tick passes it over."""

from __future__ import annotations

from agent.core.inputs import ActionCompleted, OperatorCommand, Tick
from agent.core.spec import GoalSet
from agent.journal import codec
from tests.corekit import Harness, jobs, policy, service


def fleet() -> Harness:
    h = Harness()
    fast = policy(backoff_initial=0, stable_for=10)
    h.load(GoalSet(services=(service("a", restart=fast), service("b", restart=fast))))
    h.observe("a.service", "active", "running", 1)
    h.observe("b.service", "active", "running", 1)
    return h


def test_settled_services_leave_the_busy_set_and_a_failure_brings_one_back() -> None:
    h = fleet()
    assert set(h.state.busy) == {"a", "b"}
    h.feed(Tick(2))
    assert not h.state.busy
    restart = h.observe("a.service", "failed", "failed", 3)
    assert jobs(restart) == [("start", "a.service")] and set(h.state.busy) == {"a"}
    h.observe("a.service", "active", "running", 3.1)
    h.tracked(ActionCompleted(restart[0].id, True, 3.2, "done"))
    h.feed(Tick(4))
    assert set(h.state.busy) == {"a"}, "a restart is counted until stable_for has passed"
    h.feed(Tick(14))  # stable for 10 s: counters reset, nothing time-driven left
    assert not h.state.busy and not h.state.services["a"].restarts


def test_rare_inputs_wake_every_service_and_a_decoded_state_starts_all_busy() -> None:
    h = fleet()
    h.feed(Tick(2))
    assert not h.state.busy
    h.feed(OperatorCommand("maintenance_on", 3))
    assert set(h.state.busy) == {"a", "b"}
    h.feed(Tick(4))
    assert not h.state.busy
    assert set(codec.decode(codec.encode(h.state)).busy) == {"a", "b"}


def test_a_recovered_service_is_passed_over_until_its_counters_may_reset() -> None:
    h = fleet()
    restart = h.observe("a.service", "failed", "failed", 3)
    h.observe("a.service", "active", "running", 3.1)  # Running from 3.1: stable at 13.1
    h.tracked(ActionCompleted(restart[0].id, True, 3.2, "done"))
    h.feed(Tick(4))
    since, until = h.state.wake["a"]
    assert since == 4 and 13.0 < until < 13.1, "passed over until just before stable_for ends"
    before = h.state
    h.feed(Tick(13))
    assert h.state is before, "a Tick that visits nobody changes nothing"
    h.feed(Tick(13.1))
    assert not h.state.busy and not h.state.wake and not h.state.services["a"].restarts


def test_any_change_and_a_decoded_state_forget_when_to_visit() -> None:
    h = fleet()
    restart = h.observe("a.service", "failed", "failed", 3)
    h.observe("a.service", "active", "running", 3.1)
    h.tracked(ActionCompleted(restart[0].id, True, 3.2, "done"))
    h.feed(Tick(4))
    assert "a" in h.state.wake
    assert not codec.decode(codec.encode(h.state)).wake
    h.observe("a.service", "failed", "failed", 5)
    assert "a" not in h.state.wake, "a change makes the next Tick visit it"
