"""High availability (issue 11 section 3): three namespace hosts, each with an etcd member and a
real agent, the primary on h1 and the replica on h2, and a route receiver that refuses stale
fences (see tests/e2e/ha.py).

The hosts, etcd, the services and the receiver are shared by the module; each test starts its
own three agents in a cluster named after it (its own key space in etcd), so the cluster
domain's state, its action ids and the receiver's counts are the test's own. "Exactly once"
is counted at the receiver by distinct action ids (a repeat of an id counts once) and in every
agent's log ("transition X fired"), after a later event has shown that the cluster is at rest
(the leader's domain satisfied, nothing in flight): never after a fixed sleep.

Figures go to stdout (`-s`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.ha import TTL, Agent, HaCluster, Request, ha_cluster, wait_for

ROUTE, PAGE, LOCAL = "/route", "/page", "/local"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaCluster]:
    with ha_cluster(tmp_path_factory.mktemp("ha")) as made:
        yield made


@pytest.fixture
def agents(rig: HaCluster, request: pytest.FixtureRequest) -> Iterator[HaCluster]:
    """Three fresh agents in a cluster named after the test; the network healed, every etcd
    member running, both services healthy and the receiver empty before and after."""
    rig.receiver.reset()
    for service in rig.services.values():
        service.set_healthy(True)
    rig.start_agents(request.node.name.removeprefix("test_").replace("_", "-")[:40])
    try:
        yield rig
    finally:
        rig.stop_agents()
        rig.receiver.reset()
        for name in rig.net.names:
            rig.net.heal(name)
        rig.etcd.revive()
        rig.etcd.wait_healthy(30)


def figure(name: str, seconds: float) -> None:
    print(f"FIGURE {name}: {seconds:.3f} s")


def at_rest(route: str, paged: bool) -> Any:
    """A DatabaseRouting status that holds its goal with `route`/`paged`, nothing in flight."""
    return lambda d: (
        d["satisfied"]
        and not d["in_flight"]
        and d["values"]["route"] == route
        and d["values"]["paged"] is paged
    )


def settle(rig: HaCluster) -> str:
    """One leader, its DatabaseRouting at rest on the primary with h1's verdict known, every
    node a member; then counting starts (`rig.mark()`: what the start-up did is not counted)."""
    leader = rig.wait_one_leader(timeout=40)
    rig.wait_domain(
        leader,
        lambda d: at_rest("primary", False)(d) and d["values"]["primary_ok"],
        20,
        "ready",
    )
    wait_for(
        lambda: len(rig.agents[leader].api_status()["cluster"]["members"]) == len(rig.agents),
        15, "every node's election key",
    )  # fmt: skip
    rig.mark()
    return leader


def accepted(path: str, target: str | None = None, *, after: float = 0.0) -> Any:
    """A receiver predicate: the accepted requests on `path` (with body target) after `after`."""

    def found(requests: list[Request]) -> list[Request]:
        return [
            r for r in requests
            if r.path == path and r.accepted and r.t >= after
            and (target is None or (r.json or {}).get("target") == target)
        ]  # fmt: skip

    return found


def fired_total(rig: HaCluster, transition: str) -> int:
    return sum(rig.fired(transition).values())


def test_exactly_one_leader(agents: HaCluster) -> None:
    rig = agents
    leader = rig.wait_one_leader(timeout=40)
    figure("3 agents started -> one leader", time.monotonic() - rig.agents["h1"].started)
    everyone = {"h1", "h2", "h3"}
    wait_for(
        lambda: set(rig.agents[leader].api_status()["cluster"]["members"]) == everyone,
        15, "every node's election key",
    )  # fmt: skip
    for _ in range(10):  # ten rounds of every node's /metrics: one leader, every time the same
        metrics = {n: a.metrics() for n, a in rig.agents.items()}
        assert [n for n, m in metrics.items() if m["setpoint_cluster_leader"] == 1.0] == [leader]
        assert all(m["setpoint_cluster_healthy"] == 1.0 for m in metrics.values()), metrics
        fences = {n: m["setpoint_cluster_fence"] for n, m in metrics.items()}
        assert fences[leader] > 0 and all(f == 0 for n, f in fences.items() if n != leader)
    views = {n: a.cli_status()["cluster"] for n, a in rig.agents.items()}  # setpoint status
    for name, view in views.items():
        assert view["healthy"] is True, (name, view)
        assert view["leader"] == leader, (name, view)
        assert set(view["members"]) == everyone and view["members"][0] == leader, (name, view)
        assert view["fence"] == (fences[leader] if name == leader else 0), (name, view)


def test_seed001_across_hosts_one_failover_one_page_one_restore(agents: HaCluster) -> None:
    rig = agents
    leader = settle(rig)
    flipped = rig.primary.set_healthy(False)
    first = rig.received(accepted(ROUTE, "replica"), 15, "failover")[0]
    rig.received(accepted(PAGE), 15, "page")
    figure("primary fails (flip) -> failover received", first.t - flipped)
    rig.wait_domain(leader, at_rest("replica", True), 15, "at rest on the replica")
    assert len(rig.receiver.actions(ROUTE, "replica")) == 1, rig.receiver.describe()
    assert len(rig.receiver.actions(PAGE)) == 1, rig.receiver.describe()
    assert rig.fired("Failover") == {n: int(n == leader) for n in rig.agents}, rig.tails()
    assert rig.fired("Page") == {n: int(n == leader) for n in rig.agents}, rig.tails()

    healed = rig.primary.set_healthy(True)
    back = rig.received(accepted(ROUTE, "primary"), 15, "restore")[0]
    figure("primary recovers -> restore received", back.t - healed)
    rig.wait_domain(leader, at_rest("primary", False), 15, "at rest on the primary")
    assert len(rig.receiver.actions(ROUTE, "primary")) == 1, rig.receiver.describe()
    assert len(rig.receiver.actions(ROUTE, "replica")) == 1, rig.receiver.describe()
    assert len(rig.receiver.actions(PAGE)) == 1, rig.receiver.describe()
    assert fired_total(rig, "Restore") == 1 and fired_total(rig, "Failover") == 1, rig.tails()
    fence = rig.agents[leader].metrics()["setpoint_cluster_fence"]
    cluster = [r for r in rig.receiver.requests if r.path in (ROUTE, PAGE)]
    assert all(r.accepted and r.fence == fence for r in cluster), rig.receiver.describe()
    assert {rig.receiver.node_of(r.peer) for r in cluster} == {leader}


def test_primary_host_cut_off_breaks_the_goal_through_its_vanished_facts(
    agents: HaCluster,
) -> None:
    rig = agents
    settle(rig)
    cut = time.monotonic()
    rig.net.cut("h1")  # the primary itself keeps answering inside h1: only its facts vanish
    moved = rig.received(accepted(ROUTE, "replica"), 20, "failover")[0]
    rig.received(accepted(PAGE), 10, "page")
    figure("primary's host cut off -> failover received", moved.t - cut)
    rest = ["h2", "h3"]
    leader = rig.wait_one_leader(rest, 15)
    dom = rig.wait_domain(leader, at_rest("replica", True), 15, "at rest on the replica")
    assert dom["values"]["primary_ok"] is False
    assert rig.receiver.node_of(moved.peer) == leader
    assert len(rig.receiver.actions(ROUTE, "replica")) == 1, rig.receiver.describe()
    assert len(rig.receiver.actions(PAGE)) == 1, rig.receiver.describe()
    assert fired_total(rig, "Failover") == 1, rig.tails()

    healed = time.monotonic()
    rig.net.heal("h1")
    back = rig.received(accepted(ROUTE, "primary"), 30, "restore")[0]
    figure("primary's host back -> restore received", back.t - healed)
    leader = rig.wait_one_leader(timeout=20)
    rig.wait_domain(leader, at_rest("primary", False), 15, "at rest on the primary")
    assert len(rig.receiver.actions(ROUTE, "primary")) == 1, rig.receiver.describe()
    assert len(rig.receiver.actions(ROUTE, "replica")) == 1, rig.receiver.describe()
    assert fired_total(rig, "Restore") == 1, rig.tails()
    assert not rig.receiver.on(ROUTE, accepted=False), rig.receiver.describe()


def test_leader_killed_between_commit_and_effect_new_leader_completes_it_once(
    agents: HaCluster,
) -> None:
    rig = agents
    old = settle(rig)
    old_fence = rig.agents[old].metrics()["setpoint_cluster_fence"]
    rig.receiver.hold(ROUTE)  # the leader's failover hangs at the receiver: committed, not done
    rig.primary.set_healthy(False)
    _, fence, action = rig.receiver.wait_held(15, "the leader's failover")
    assert fence == old_fence
    killed = rig.agents[old].kill()
    done = rig.received(accepted(ROUTE, "replica"), TTL + 5, "the completed failover")[0]
    figure("leader SIGKILLed mid-effect -> new leader's failover received", done.t - killed)
    new = rig.receiver.node_of(done.peer)
    assert new != old
    assert done.action_id == action, rig.receiver.describe()
    assert done.fence is not None and done.fence > fence, rig.receiver.describe()
    assert done.t - killed <= TTL + 1, f"took {done.t - killed:.2f}s\n{rig.receiver.describe()}"

    rig.receiver.release()  # the dead leader's request, judged now: its fence is stale
    late = rig.receiver.wait(lambda rs: [r for r in rs if r.held], 10, "the held request")[0]
    assert late.status == 409 and late.fence == fence, rig.receiver.describe()
    rest = [n for n in rig.agents if n != old]
    assert rig.wait_one_leader(rest, 10) == new
    rig.wait_domain(new, at_rest("replica", True), 15, "at rest on the replica")
    assert rig.receiver.actions(ROUTE, "replica") == [action], rig.receiver.describe()
    assert len(rig.receiver.actions(PAGE)) == 1, rig.receiver.describe()
    assert fired_total(rig, "Failover") == 1, rig.tails()
    assert rig.agents[new].logged(r"cluster state adopted .*: [1-9]\d* pending actions re-emitted")

    restarted = time.monotonic()
    rig.agents[old].start()  # back on its journal, which still holds the failover it sent
    assert rig.wait_one_leader(timeout=20) == new
    healed = rig.primary.set_healthy(True)  # a later event: the restore, by the new leader
    rig.received(accepted(ROUTE, "primary", after=healed), 15, "restore")
    rig.wait_domain(new, at_rest("primary", False), 15, "at rest on the primary")
    again = [
        r for r in rig.receiver.requests if r.accepted and r.fence == fence and r.t > restarted
    ]
    assert not again, rig.receiver.describe()
    assert rig.receiver.actions(ROUTE, "replica") == [action], rig.receiver.describe()
    assert len(rig.receiver.actions(ROUTE, "primary")) == 1, rig.receiver.describe()


def test_partitioned_leader_is_replaced_and_its_late_effect_refused_by_fence(
    agents: HaCluster,
) -> None:
    rig = agents
    old = settle(rig)
    rest = [n for n in rig.agents if n != old]
    rig.receiver.hold(ROUTE)  # the old leader's failover is still on its way when it is cut off
    rig.primary.set_healthy(False)
    _, fence, action = rig.receiver.wait_held(15, "the leader's failover")
    cut, cut_wall = time.monotonic(), time.time()
    rig.net.cut(old)
    done = rig.received(accepted(ROUTE, "replica"), TTL + 10, "the completed failover")[0]
    # By the agents' own log stamps: the old leader's term ended (it stops dispatching)
    # before another node's term began.
    ended = rig.agents[old].logged_at(r"leadership ended", since=cut_wall)
    new = rig.receiver.node_of(done.peer)
    began = rig.agents[new].logged_at(rf"leader {new} \(this node", since=cut_wall)
    assert ended and began, rig.tails()
    figure("partitioned leader's term ends (after the cut)", ended[0][0] - cut_wall)
    figure("a new leader's term begins (after the cut)", began[0][0] - cut_wall)
    assert ended[0][0] < began[0][0], "the cut-off leader must stop before another one leads"
    figure("partition -> new leader's failover received", done.t - cut)
    assert new in rest and done.action_id == action and (done.fence or 0) > fence

    healed_link = time.monotonic()
    rig.net.heal(old)
    wait_for(
        lambda: (v := rig.agents[old].api_status().get("cluster") or {}).get("healthy")
        and v.get("leader") == new,
        30, f"{old} back, following {new}",
    )  # fmt: skip
    rig.receiver.release()  # the old leader's request arrives late, after the heal
    late = rig.receiver.wait(lambda rs: [r for r in rs if r.held], 10, "the late request")[0]
    assert late.status == 409 and late.fence == fence, rig.receiver.describe()
    assert rig.agents[old].logged(r"leadership ended"), rig.agents[old].tail()

    healed = rig.primary.set_healthy(True)  # a later event: the restore, by the new leader
    rig.received(accepted(ROUTE, "primary", after=healed), 15, "restore")
    assert rig.wait_one_leader(timeout=20) == new
    rig.wait_domain(new, at_rest("primary", False), 15, "at rest on the primary")
    highest = 0
    for r in sorted(rig.receiver.requests, key=lambda r: r.judged):
        if r.fence is None:
            continue
        assert r.accepted == (r.fence >= highest), rig.receiver.describe()
        highest = max(highest, r.fence if r.accepted else 0)
    stale = [r for r in rig.receiver.requests if r.fence == fence and r.t >= healed_link]
    assert all(not r.accepted for r in stale), rig.receiver.describe()
    assert rig.receiver.actions(ROUTE, "replica") == [action], rig.receiver.describe()
    assert len(rig.receiver.actions(ROUTE, "primary")) == 1, rig.receiver.describe()
    assert len(rig.receiver.actions(PAGE)) == 1, rig.receiver.describe()


def test_quorum_loss_pauses_cluster_domains_while_local_ones_go_on(agents: HaCluster) -> None:
    rig = agents
    settle(rig)
    lost = time.monotonic()
    for name in ("h2", "h3"):
        rig.etcd.kill(name)
    for name, agent in rig.agents.items():

        def paused(agent: Agent = agent) -> bool:
            metrics = agent.metrics()
            return (
                metrics.get("setpoint_cluster_healthy") == 0.0
                and metrics.get("setpoint_cluster_leader") == 0.0
            )

        wait_for(paused, 20, f"{name}: the cluster unhealthy")
    figure("quorum lost -> every agent reports the cluster unhealthy", time.monotonic() - lost)
    alerts = rig.agents["h1"].api_status()["alerts"]
    assert any(a["name"] == "ClusterUnavailable" for a in alerts), alerts

    for healthy in (False, True, False):  # local supervision goes on: h1's own domain acts
        at = rig.primary.set_healthy(healthy)

        def told(rs: list[Request], at: float = at, healthy: bool = healthy) -> list[Request]:
            return [
                r for r in rs
                if r.path == LOCAL and r.t >= at and rig.receiver.node_of(r.peer) == "h1"
                and (r.json or {}).get("healthy") is healthy
            ]  # fmt: skip

        rig.received(told, 10, f"h1's local domain telling healthy={healthy}")
    wait_for(
        lambda: rig.agents["h1"].metrics().get('setpoint_probe_healthy{probe="db-hz"}') == 0.0,
        10, "h1's probe verdict failing",
    )  # fmt: skip
    acted = [r for r in rig.receiver.requests if r.path in (ROUTE, PAGE)]
    assert not acted, rig.receiver.describe()
    assert fired_total(rig, "Failover") == 0 and fired_total(rig, "Page") == 0, rig.tails()

    back = time.monotonic()
    rig.etcd.revive()
    moved = rig.received(accepted(ROUTE, "replica"), 30, "failover after quorum")[0]
    rig.received(accepted(PAGE), 10, "page after quorum")
    figure("quorum back -> the paused failover received", moved.t - back)
    leader = rig.wait_one_leader(timeout=20)
    rig.wait_domain(leader, at_rest("replica", True), 15, "at rest on the replica")
    assert len(rig.receiver.actions(ROUTE, "replica")) == 1, rig.receiver.describe()
    assert len(rig.receiver.actions(PAGE)) == 1, rig.receiver.describe()
    assert fired_total(rig, "Failover") == 1, rig.tails()
