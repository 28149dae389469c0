"""ClusterLink against a real 3-member etcd on 3 namespace hosts, one link process per host.

Each test has its own cluster name (its own key space), so leases left by an earlier test do
not matter; the network is healed and etcd healthy again after every test. Every wait is for an
event (a view printed by a link process), never a fixed sleep. Figures go to stdout (`-s`).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent.adapters.cluster import ClusterConfig, ClusterLink, ClusterUnavailable
from tests.agentproc import free_port, wait_until
from tests.brokers import make_certificates
from tests.e2e.linkdriver import LinkProcess, View
from tests.e2e.netns import ETCD, ETCDCTL, EtcdCluster, Hosts, etcd_cluster, hosts
from tests.needs import tool, unavailable

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
    etcd.revive()
    etcd.wait_healthy(30)


@pytest.fixture
async def links(
    net: Hosts, etcd: EtcdCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[dict[str, LinkProcess]]:
    """One link process per host, in a cluster named after the test, each publishing a fact."""
    cluster = request.node.name.removeprefix("test_").replace("_", "-")[:40]
    made = {
        name: LinkProcess(
            net,
            name,
            etcd.endpoints(first=name),
            cluster,
            tmp_path,
            TTL,
            facts={"host": name},
            digest=f"goals-{name}",
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
    everyone = set(names)
    view = await links[names[0]].wait(
        lambda v: set(v["facts"]) == set(v["digests"]) == set(v["members"]) == everyone,
        10,
        "every host's facts, digest and election key",
    )
    assert {n: f["host"] for n, f in view["facts"].items()} == {n: n for n in names}
    assert view["digests"] == {n: f"goals-{n}" for n in names}
    assert view["members"][0] == leader


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
        await link.wait(
            lambda v: set(v["facts"]) == set(v["digests"]) == set(names), 10, "every host's facts"
        )
    victim = next(n for n in names if n != leader)
    watcher = links[leader]
    fence = watcher.view["fence"]
    cut = time.monotonic()
    await asyncio.to_thread(net.cut, victim)
    gone = await watcher.wait(
        lambda v: victim not in v["facts"], 20, f"{victim}'s facts gone", since=cut
    )
    figure("facts of a cut-off host vanish (after the cut)", gone["t"] - cut)
    assert victim not in gone["digests"]
    assert victim not in gone["members"]
    # A follower's partition does not move the leadership (the term may pause while etcd
    # elects a new raft leader, if the victim's member was it, but the lease survives).
    await watcher.wait(lambda v: leads(v) and v["fence"] == fence, 10, "the same term")
    await asyncio.to_thread(net.heal, victim)
    back = await watcher.wait(
        lambda v: victim in v["facts"] and victim in v["digests"], 30, f"{victim}'s facts back"
    )
    assert back["facts"][victim] == {"host": victim}
    assert back["digests"][victim] == f"goals-{victim}"


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


async def test_a_link_whose_member_dies_moves_to_another_and_keeps_its_lease(
    etcd: EtcdCluster, links: dict[str, LinkProcess]
) -> None:
    names = list(links)
    leader = await one_leader(links, names, 20)
    fence = links[leader].view["fence"]
    killed = time.monotonic()
    await asyncio.to_thread(etcd.kill, leader)  # its own member, first in its endpoint list
    await links[leader].wait(lambda v: not v["healthy"], 10, "the member's death", since=killed)
    back = await links[leader].wait(lambda v: v["healthy"], 15, "healthy via another member")
    figure("own etcd member killed -> link healthy via another member", back["t"] - killed)
    assert await one_leader(links, names, 15) == leader
    assert links[leader].view["fence"] == fence, "the lease survived: same term"


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A one-member etcd on loopback that wants TLS and a client certificate: (URL, PEM dir)."""
    if not Path(ETCD).exists():
        unavailable(f"{ETCD} not installed (Debian package etcd-server)")
    make_certificates(tmp_path)
    openssl = tool("openssl", "openssl")
    sign = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"]
    for argv in (
        ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=setpoint"],
        ["x509", "-req", "-in", "client.csr", *sign, "-out", "client.pem"],
    ):  # fmt: skip
        subprocess.run([openssl, *argv], cwd=tmp_path, check=True, capture_output=True)
    url, peer = f"https://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    tls = [f"--{flag}={tmp_path / name}" for flag, name in (
        ("cert-file", "server.pem"), ("key-file", "server.key"), ("trusted-ca-file", "ca.pem"),
    )]  # fmt: skip
    with (tmp_path / "etcd.log").open("wb") as log:
        proc = subprocess.Popen(
            [ETCD, "--data-dir", str(tmp_path / "data"), "--listen-client-urls", url,
             "--advertise-client-urls", url, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", f"default={peer}",
             "--client-cert-auth", *tls],
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    client = [f"--cacert={tmp_path}/ca.pem", f"--cert={tmp_path}/client.pem",
              f"--key={tmp_path}/client.key"]  # fmt: skip
    try:
        wait_until(
            lambda: subprocess.run(
                [ETCDCTL, "--endpoints", url, *client, "endpoint", "health"],
                capture_output=True, check=False, timeout=10,
            ).returncode == 0 or proc.poll() is not None,
            20, "etcd with TLS",
        )  # fmt: skip
        assert proc.poll() is None, (tmp_path / "etcd.log").read_text()[-2000:]
        yield url, tmp_path
    finally:
        proc.kill()
        proc.wait()


async def test_tls_with_a_client_certificate(tls_etcd: tuple[str, Path]) -> None:
    url, pem = tls_etcd
    config = ClusterConfig(
        [url], "tls", "n1", ca=pem / "ca.pem", cert=pem / "client.pem", key=pem / "client.key"
    )
    async with ClusterLink(config) as link:
        view = await link.wait_for(lambda v: v.is_leader and v.healthy, 10)
        assert view.members == ("n1",)
        assert await link.fenced_put("k", "v") is True
        assert await link.get("k") == "v"
    anonymous = ClusterConfig([url], "tls", "n2", ca=pem / "ca.pem", timeout=1.0)
    async with ClusterLink(anonymous) as link:
        with pytest.raises(ClusterUnavailable):
            await link.get("k")
        assert not link.healthy


async def test_a_deleted_election_key_ends_the_term_and_its_node_campaigns_again(
    net: Hosts, etcd: EtcdCluster, links: dict[str, LinkProcess]
) -> None:
    names = list(links)
    old = await one_leader(links, names, 20)
    fence = links[old].view["fence"]
    prefix = f"/setpoint/{links[old].cluster}/election/"
    ctl = [ETCDCTL, "--endpoints", ",".join(etcd.endpoints())]
    listed = await asyncio.to_thread(net.run, old, [*ctl, "get", "--prefix", prefix])
    lines = listed.stdout.split()
    key = next(k for k, v in zip(lines[::2], lines[1::2], strict=True) if v == old)
    await asyncio.to_thread(net.run, old, [*ctl, "del", key])
    new = await one_leader(links, [n for n in names if n != old], 10)
    assert links[new].view["fence"] > fence
    back = await links[old].wait(
        lambda v: v["healthy"] and v["members"][-1:] == [old], 10, "a new campaign"
    )
    assert back["leader"] == new
    stale = await links[old].call("fenced_put", term="last", key="k", value="late")
    assert stale["ok"] is False
