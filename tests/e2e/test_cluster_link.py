"""ClusterLink against a real 3-member etcd on 3 namespace hosts, one link process per host.

Each test has its own cluster name (its own key space), so leases left by an earlier test do
not matter; the network is healed and etcd healthy again after every test. Every wait is for an
event (a view printed by a link process), never a fixed sleep. Figures go to stdout (`-s`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.e2e.linkdriver import LinkProcess, View
from tests.e2e.netns import EtcdCluster, Hosts, etcd_cluster, hosts

TTL = 2


@pytest.fixture(scope="module")
def net() -> Iterator[Hosts]:
    with hosts(3) as made:
        yield made


@pytest.fixture(scope="module")
def etcd(net: Hosts) -> Iterator[EtcdCluster]:
    with etcd_cluster(net) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def healed(net: Hosts, etcd: EtcdCluster) -> Iterator[None]:
    """Every test starts and ends with every host on the network and etcd healthy."""
    yield
    for name in net.names:
        net.heal(name)
    etcd.wait_healthy(30)


@pytest.fixture
async def links(
    net: Hosts, etcd: EtcdCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[dict[str, LinkProcess]]:
    """One link process per host, in a cluster named after the test, each publishing a fact."""
    cluster = request.node.name.removeprefix("test_").replace("_", "-")[:40]
    made = {
        name: LinkProcess(
            net, name, etcd.endpoints(first=name), cluster, tmp_path, TTL, facts={"host": name}
        )
        for name in net.names
    }
    try:
        for link in made.values():
            await link.start()
        yield made
    finally:
        for link in made.values():
            await link.stop()


def figure(name: str, seconds: float) -> None:
    print(f"FIGURE {name}: {seconds:.3f} s")


def leads(view: View) -> bool:
    return bool(view.get("fence")) and view.get("leader") == view.get("node")


async def one_leader(links: dict[str, LinkProcess], among: list[str], timeout: float) -> str:
    """Wait until every link in `among` is healthy and names the same leader, and only the
    leader claims a term; that leader's name."""
    first = await links[among[0]].wait(
        lambda v: v.get("healthy") and v.get("leader") in among, timeout, "a healthy leader"
    )
    leader = first["leader"]
    for name in among:
        await links[name].wait(
            lambda v: (
                v.get("healthy") and v.get("leader") == leader and leads(v) == (v["node"] == leader)
            ),
            timeout,
            f"leader {leader}",
        )
    return str(leader)


async def test_exactly_one_leader_among_three(links: dict[str, LinkProcess]) -> None:
    names = list(links)
    leader = await one_leader(links, names, 20)
    started = max(link.started for link in links.values())
    elected = await links[leader].wait(leads, 1, "a term", since=0)
    figure("election (last process start -> leader holds a term)", elected["t"] - started)
    claims = [n for n in names if leads(links[n].view)]
    assert claims == [leader]
    fences = {links[n].view["fence"] for n in names}
    assert fences == {links[leader].view["fence"], None}
    view = await links[names[0]].wait(
        lambda v: set(v["facts"]) == set(names), 10, "every host's facts"
    )
    assert {n: f["host"] for n, f in view["facts"].items()} == {n: n for n in names}
    assert len(view["members"]) == 3


async def test_killed_leader_is_replaced_within_ttl_plus_one(
    links: dict[str, LinkProcess],
) -> None:
    names = list(links)
    old = await one_leader(links, names, 20)
    old_fence = links[old].view["fence"]
    assert (await links[old].call("fenced_put", key="owner", value=old))["ok"] is True
    killed = links[old].kill()
    rest = [n for n in names if n != old]
    new_view = await links[rest[0]].wait(
        lambda v: v["leader"] in rest and v.get("healthy"), TTL + 5, "a new leader"
    )
    new = new_view["leader"]
    took = await links[new].wait(leads, TTL + 5, "the new term", since=killed)
    figure("takeover (leader SIGKILLed -> new leader holds a term)", took["t"] - killed)
    assert took["t"] - killed <= TTL + 1
    assert took["fence"] > old_fence
    await one_leader(links, rest, 10)
    assert (await links[new].call("fenced_put", key="owner", value=new))["ok"] is True
    other = next(n for n in rest if n != new)
    assert (await links[other].call("fenced_put", key="owner", value=other))["ok"] is False
    assert (await links[other].call("get", key="owner"))["value"] == new


async def test_partitioned_leader_stops_first_and_cannot_write_after(
    net: Hosts, links: dict[str, LinkProcess]
) -> None:
    names = list(links)
    old = await one_leader(links, names, 20)
    old_fence = links[old].view["fence"]
    assert (await links[old].call("fenced_put", key="route", value=f"{old}-1"))["ok"] is True
    rest = [n for n in names if n != old]
    cut = time.monotonic()
    await asyncio.to_thread(net.cut, old)

    stopped = await links[old].wait(lambda v: not leads(v), 10, "the term ended", since=cut)
    gone = await links[rest[0]].wait(
        lambda v: old not in v["members"], 20, "the old key expired", since=cut
    )
    assert not stopped["valid"]
    figure("partitioned leader stops claiming its term (after the cut)", stopped["t"] - cut)
    figure("etcd expires its key, seen by a majority host (after the cut)", gone["t"] - cut)
    assert stopped["t"] < gone["t"], "the cut-off leader must stop before its lease expires"
    new = await one_leader(links, rest, 20)
    taken = await links[new].wait(leads, 1, "the new term", since=cut)
    figure("partition takeover (cut -> new leader holds a term)", taken["t"] - cut)
    assert taken["fence"] > old_fence

    await asyncio.to_thread(net.heal, old)
    back = await links[old].wait(lambda v: v.get("healthy") and v["leader"] == new, 30, "rejoin")
    assert not leads(back)
    stale = await links[old].call("fenced_put", term="last", key="route", value=f"{old}-late")
    assert stale["ok"] is False, stale
    assert (await links[new].call("fenced_put", key="route", value=f"{new}-1"))["ok"] is True
    assert (await links[old].call("get", key="route"))["value"] == f"{new}-1"


async def test_facts_of_a_cut_off_host_vanish(net: Hosts, links: dict[str, LinkProcess]) -> None:
    names = list(links)
    leader = await one_leader(links, names, 20)
    for link in links.values():
        await link.wait(lambda v: set(v["facts"]) == set(names), 10, "every host's facts")
    victim = next(n for n in names if n != leader)
    watcher = links[leader]
    cut = time.monotonic()
    await asyncio.to_thread(net.cut, victim)
    gone = await watcher.wait(
        lambda v: victim not in v["facts"], 20, f"{victim}'s facts gone", since=cut
    )
    figure("facts of a cut-off host vanish (after the cut)", gone["t"] - cut)
    assert victim not in gone["digests"]
    assert victim not in gone["members"]
    assert leads(gone), "a follower's partition does not move the leadership"
    await asyncio.to_thread(net.heal, victim)
    back = await watcher.wait(lambda v: victim in v["facts"], 30, f"{victim}'s facts back")
    assert back["facts"][victim] == {"host": victim}


async def test_quorum_loss_is_reported_and_recovers(
    net: Hosts, links: dict[str, LinkProcess]
) -> None:
    names = list(links)
    await one_leader(links, names, 20)
    cut = time.monotonic()
    for name in names[1:]:
        await asyncio.to_thread(net.cut, name)
    lost = [
        await links[n].wait(lambda v: not v["healthy"], 15, "unhealthy", since=cut) for n in names
    ]
    figure("quorum loss reported (cut -> last host unhealthy)", max(v["t"] for v in lost) - cut)
    for name in names:
        await links[name].wait(lambda v: not leads(v), 10, "no term")
    healed = time.monotonic()
    for name in names[1:]:
        await asyncio.to_thread(net.heal, name)
    leader = await one_leader(links, names, 30)
    figure("recovery (heal -> one leader, all healthy)", time.monotonic() - healed)
    assert (await links[leader].call("fenced_put", key="after", value="quorum"))["ok"] is True
