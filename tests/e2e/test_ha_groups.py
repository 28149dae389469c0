"""Cluster failover groups (`scope: cluster`) on real hosts: three namespace hosts, each with an
etcd member and a real agent, the primary's health service on h1 and the replica's on h2, and
a route receiver that refuses stale fences (see tests/e2e/ha.py).

The group `db-route` judges `primary` by h1's published verdict of its `db-hz` probe and
`replica` by h2's; the leader alone routes, its effects carrying its fence and an action id
from the cluster's counter.

"Exactly once" is counted at the receiver by distinct action ids (every request on the path,
refused ones too, must come from the leader with its fence), in every agent's log (`[db-route]
route ...` lines) and in every agent's /metrics (http effects completed, actions pending),
after the leader's own status has shown the group at rest (the route decided is the route
applied, no route effect pending): never after a fixed sleep.

The hosts, etcd, the services and the receiver are shared by the module; each test starts its
own three agents in a cluster named after it (its own key space in etcd). Figures go to stdout
(`-s`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.core.state import CLUSTER_IDS
from tests.e2e.ha import SERVICE_PORT, HaCluster, Request, ha_cluster, wait_for

ROUTE = "/route"
GROUP = "db-route"
HTTP_OK = 'setpoint_actions_total{kind="http",outcome="ok"}'
PROBE_HEALTHY = 'setpoint_probe_healthy{probe="db-hz"}'


def group_goals(receiver: str) -> str:
    """One probe of this host's own service and the cluster group over h1's and h2's verdicts."""
    return f"""\
apiVersion: setpoint/v1
probes:
  db-hz: {{http: {{url: "http://127.0.0.1:{SERVICE_PORT}/health"}}, interval: 200ms,
          timeout: 500ms, failures: 2}}
groups:
  {GROUP}:
    scope: cluster
    members:
      - {{name: primary, node: h1, probes: [db-hz]}}
      - {{name: replica, node: h2, probes: [db-hz]}}
    switch_after: 1
    effects:
      - http: {{url: "{receiver}{ROUTE}", body: '{{"target": "{{target}}"}}'}}
"""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaCluster]:
    with ha_cluster(tmp_path_factory.mktemp("ha-groups")) as made:
        yield made


@pytest.fixture
def agents(rig: HaCluster, request: pytest.FixtureRequest) -> Iterator[HaCluster]:
    """Three fresh agents on the group's goals in a cluster named after the test; the network
    healed, every etcd member running, both services healthy and the receiver empty before and
    after."""
    rig.receiver.reset()
    for service in rig.services.values():
        service.set_healthy(True)
    name = "grp-" + request.node.name.removeprefix("test_").replace("_", "-")[:36]
    rig.start_agents(name, group_goals(rig.receiver.url))
    try:
        yield rig
    finally:
        rig.stop_agents()
        rig.receiver.reset()
        for host in rig.net.names:
            rig.net.heal(host)
        rig.etcd.revive()
        rig.etcd.wait_healthy(30)


def figure(name: str, seconds: float) -> None:
    print(f"FIGURE {name}: {seconds:.3f} s")


def evidence(rig: HaCluster) -> str:
    """What the receiver got and the agents' logs, for an assertion message."""
    return f"receiver:\n{rig.receiver.describe()}\n{rig.tails()}"


def group_of(rig: HaCluster, node: str) -> dict[str, Any] | None:
    """`node`'s view of the group, from its /api/v1/status (None while it has none)."""
    status = rig.agents[node].api_status()
    view: dict[str, Any] | None = (status.get("groups") or {}).get(GROUP)
    if view is None:
        return None
    view = dict(view)
    view["pending"] = [p for p in status.get("pending") or [] if f"group:{GROUP}" in p]
    return view


def wait_routed(rig: HaCluster, leader: str, target: str, timeout: float) -> dict[str, Any]:
    """Until `leader`'s group is at rest on `target`: decided, applied, no route effect pending."""

    def at_rest() -> dict[str, Any] | None:
        view = group_of(rig, leader)
        if view and view["route"] == view["applied"] == target and not view["pending"]:
            return view
        return None

    try:
        return wait_for(at_rest, timeout, f"{leader}: {GROUP} at rest on {target}", every=0.05)
    except AssertionError as err:
        raise AssertionError(f"{err}; its view: {group_of(rig, leader)}\n{evidence(rig)}") from None


def settle(rig: HaCluster) -> tuple[str, float]:
    """One leader, every node a member, the group at rest on the primary: (leader, its fence).
    Counting starts only after this (`rig.mark()` is not called: the start-up is counted)."""
    leader = rig.wait_one_leader(timeout=40)
    wait_for(
        lambda: len(rig.agents[leader].api_status()["cluster"]["members"]) == len(rig.agents),
        15, "every node's election key",
    )  # fmt: skip
    wait_routed(rig, leader, "primary", 20)
    return leader, rig.agents[leader].metrics()["setpoint_cluster_fence"]


def routes_to(target: str, *, after: float = 0.0) -> Any:
    """A receiver predicate: accepted requests on the route path for `target` after `after`."""

    def found(requests: list[Request]) -> list[Request]:
        return [
            r for r in requests
            if r.path == ROUTE and r.accepted and r.t >= after
            and (r.json or {}).get("target") == target
        ]  # fmt: skip

    return found


def route_lines(rig: HaCluster) -> dict[str, list[str]]:
    """node -> its log lines about the group's route (a switch decided, a route applied)."""
    return {n: a.logged(rf"\[{GROUP}\] route ") for n, a in rig.agents.items()}


def routed_once(rig: HaCluster, leader: str, old: str, new: str) -> None:
    """Since the mark, the switch `old` -> `new` was applied exactly once, by `leader`; no other
    node decided it. (The leader may log the decision more than once: a decision whose write to
    etcd failed in a blip of etcd's own leadership is dropped with the term and decided again
    on adopting the record, without an effect.)"""
    applied = {
        n: len(a.logged(rf"\[{GROUP}\] route applied: {new}$")) for n, a in rig.agents.items()
    }
    decided = {
        n: len(a.logged(rf"\[{GROUP}\] route {old} -> {new}$")) for n, a in rig.agents.items()
    }
    assert applied == {n: int(n == leader) for n in rig.agents}, (
        f"'route applied: {new}' per node: {applied}\n{evidence(rig)}"
    )
    assert {n for n, k in decided.items() if k} == {leader}, (
        f"'route {old} -> {new}' per node: {decided}\n{evidence(rig)}"
    )


def http_done(rig: HaCluster) -> dict[str, float]:
    """node -> http effects it completed (`setpoint_actions_total`), or -1 while it does not
    answer."""
    out = {}
    for name, agent in rig.agents.items():
        metrics = agent.metrics()
        out[name] = metrics.get(HTTP_OK, 0.0) if metrics else -1.0
    return out


def pending(rig: HaCluster, among: list[str]) -> dict[str, float]:
    return {n: rig.agents[n].metrics().get("setpoint_pending_actions", -1.0) for n in among}


def check_sent(
    rig: HaCluster, requests: list[Request], leader: str, fence: float, target: str
) -> Request:
    """`requests` (every one on the route path for `target`, refused ones too) are one action,
    sent by `leader` with its `fence` and an action id; that request."""
    ids = {r.action_id for r in requests}
    assert len(ids) == 1, f"{len(ids)} route actions to {target}: {ids}\n{evidence(rig)}"
    first = requests[0]
    assert first.action_id is not None, f"no X-Setpoint-Action-Id\n{evidence(rig)}"
    assert first.action_id >= CLUSTER_IDS, f"not a cluster counter's id\n{evidence(rig)}"
    assert all(r.accepted for r in requests), evidence(rig)
    senders = {rig.receiver.node_of(r.peer) for r in requests}
    assert senders == {leader}, f"sent by {senders}, leader {leader}\n{evidence(rig)}"
    fences = {r.fence for r in requests}
    assert fences == {int(fence)}, f"fences {fences}, leader's {fence}\n{evidence(rig)}"
    return first


def on_route(rig: HaCluster, target: str) -> list[Request]:
    """Every request on the route path for `target`, accepted or not."""
    return [
        r for r in rig.receiver.on(ROUTE, accepted=None) if (r.json or {}).get("target") == target
    ]


def test_one_route_to_the_primary_once_the_cluster_settles(agents: HaCluster) -> None:
    rig = agents
    leader, fence = settle(rig)
    first = rig.received(routes_to("primary"), 5, "the route to the primary")[0]
    figure("3 agents started -> route to the primary received", first.t - rig.agents["h1"].started)
    assert fence > 0
    sent = check_sent(rig, on_route(rig, "primary"), leader, fence, "primary")
    assert {r.action_id for r in rig.receiver.requests} == {sent.action_id}, evidence(rig)

    # Every agent: only the leader ran an http effect, once, and nothing is left pending.
    done = http_done(rig)
    assert done == {n: float(n == leader) for n in rig.agents}, f"{done}\n{evidence(rig)}"
    assert pending(rig, list(rig.agents)) == dict.fromkeys(rig.agents, 0.0), evidence(rig)
    lines = route_lines(rig)
    assert lines[leader] and all("route applied: primary" in ln for ln in lines[leader]), (
        f"{lines}\n{evidence(rig)}"
    )
    assert all(not v for n, v in lines.items() if n != leader), f"{lines}\n{evidence(rig)}"
    for name in rig.agents:  # every node agrees on the leader; only the leader's fence is set
        view = rig.agents[name].api_status()["cluster"]
        assert view["leader"] == leader and view["healthy"], (name, view)
        assert view["fence"] == (fence if name == leader else 0), (name, view)


def test_primary_unhealthy_routes_to_the_replica_and_back_once_each(agents: HaCluster) -> None:
    rig = agents
    leader, fence = settle(rig)
    before = http_done(rig)
    rig.mark()  # count from here: the start-up's route to the primary is not counted

    flipped = rig.primary.set_healthy(False)
    moved = rig.received(routes_to("replica", after=flipped), 15, "the route to the replica")[0]
    figure("primary fails (flip) -> route to the replica received", moved.t - flipped)
    wait_routed(rig, leader, "replica", 15)
    wait_for(
        lambda: rig.agents["h1"].metrics().get(PROBE_HEALTHY) == 0.0, 5, "h1's verdict failing"
    )
    assert rig.wait_one_leader(timeout=10) == leader, evidence(rig)
    check_sent(rig, on_route(rig, "replica"), leader, fence, "replica")
    assert not on_route(rig, "primary"), evidence(rig)
    routed_once(rig, leader, "primary", "replica")
    mid = http_done(rig)
    assert {n: mid[n] - before[n] for n in rig.agents} == {
        n: float(n == leader) for n in rig.agents
    }, f"{before} -> {mid}\n{evidence(rig)}"

    healed = rig.primary.set_healthy(True)
    back = rig.received(routes_to("primary", after=healed), 15, "the route back to the primary")[0]
    figure("primary recovers -> route back to the primary received", back.t - healed)
    wait_routed(rig, leader, "primary", 15)
    assert rig.wait_one_leader(timeout=10) == leader, evidence(rig)
    # The restore is the later event: the failover is counted again after it.
    check_sent(rig, on_route(rig, "replica"), leader, fence, "replica")
    check_sent(rig, on_route(rig, "primary"), leader, fence, "primary")
    assert {r.action_id for r in rig.receiver.requests} == {moved.action_id, back.action_id}, (
        evidence(rig)
    )
    assert moved.action_id != back.action_id, evidence(rig)
    routed_once(rig, leader, "primary", "replica")
    routed_once(rig, leader, "replica", "primary")
    after = http_done(rig)
    assert {n: after[n] - before[n] for n in rig.agents} == {
        n: 2.0 * (n == leader) for n in rig.agents
    }, f"{before} -> {after}\n{evidence(rig)}"
    assert pending(rig, list(rig.agents)) == dict.fromkeys(rig.agents, 0.0), evidence(rig)
    view = group_of(rig, leader)
    assert view is not None and view["switches"] == 2, f"{view}\n{evidence(rig)}"


def test_primary_host_cut_off_moves_the_route_through_its_vanished_facts(
    agents: HaCluster,
) -> None:
    rig = agents
    old, old_fence = settle(rig)
    rig.mark()

    cut = time.monotonic()
    rig.net.cut("h1")  # the primary keeps answering inside h1: only h1's facts vanish
    moved = rig.received(routes_to("replica", after=cut), 20, "the route to the replica")[0]
    figure("primary's host cut off -> route to the replica received", moved.t - cut)
    rest = ["h2", "h3"]
    leader = rig.wait_one_leader(rest, 15)
    assert old not in rest or leader == old, evidence(rig)
    wait_routed(rig, leader, "replica", 15)
    fence = rig.agents[leader].metrics()["setpoint_cluster_fence"]
    assert fence == old_fence if leader == old else fence > old_fence, evidence(rig)
    check_sent(rig, on_route(rig, "replica"), leader, fence, "replica")
    # Through the vanished facts, not a failing check: h1's own verdict (read on its loopback)
    # is still healthy, and the leader no longer counts h1 as a member.
    assert rig.agents["h1"].metrics().get(PROBE_HEALTHY) == 1.0, evidence(rig)
    members = rig.agents[leader].api_status()["cluster"]["members"]
    assert "h1" not in members, f"{members}\n{evidence(rig)}"
    routed_once(rig, leader, "primary", "replica")

    healed = time.monotonic()
    rig.net.heal("h1")
    back = rig.received(routes_to("primary", after=healed), 30, "the route back to the primary")[0]
    figure("primary's host back -> route back to the primary received", back.t - healed)
    # h1 comes back as a follower (its new election key is the newest); the leader stays,
    # unless etcd's own election on h1's return cost it its lease: then a newer fence leads.
    now = rig.wait_one_leader(timeout=20)
    assert now != "h1", evidence(rig)
    wait_routed(rig, now, "primary", 15)
    now_fence = rig.agents[now].metrics()["setpoint_cluster_fence"]
    assert now_fence >= fence, evidence(rig)
    check_sent(rig, on_route(rig, "replica"), leader, fence, "replica")
    check_sent(rig, on_route(rig, "primary"), now, now_fence, "primary")
    assert {r.action_id for r in rig.receiver.requests} == {moved.action_id, back.action_id}, (
        evidence(rig)
    )
    routed_once(rig, now, "replica", "primary")
    assert pending(rig, list(rig.agents)) == dict.fromkeys(rig.agents, 0.0), evidence(rig)
