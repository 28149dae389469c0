"""High availability on real hosts (issue 11 section 4): three namespace hosts, each with an etcd
member and a real agent, the seed 001 goals across hosts and the route receiver of
tests/e2e/ha.py (the same rig as tests/e2e/test_ha.py). Prints figures; asserts nothing on speed.

(a) takeover: the leader is SIGKILLed while its failover is committed and on its way (the
    receiver holds it) -> the new leader's first effect at the receiver (it re-emits the
    failover, same action id, new fence): median and p99 with TTL 2 s (goal <= 3 s)
(b) failover decision: the K-th failing answer of the primary's health check (K = the probe's
    `failures`, on h1) -> the failover request at the receiver, sent by the leader on another
    host: p99 (goal <= 50 ms)
(c) etcd load at rest, per agent, over 30 s, from etcd's own /metrics: store writes
    (revisions), raft proposals, lease keepalives, reads, watch events sent; with 3 agents
    and with 30 (10 per host namespace, each its own node)

Needs root and Debian's etcd-server (as the e2e tests); otherwise it says why and returns.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.ha import TTL, HaCluster, Request, ha_cluster, ns_get, parse_metrics, wait_for
from tests.e2e.netns import ETCD

TAKEOVERS = int(os.environ.get("SETPOINT_BENCH_TAKEOVERS", "10"))
FLIPS = int(os.environ.get("SETPOINT_BENCH_FLIPS", "20"))
REST_SECONDS = float(os.environ.get("SETPOINT_BENCH_REST", "30"))
AGENTS_LARGE = int(os.environ.get("SETPOINT_BENCH_AGENTS", "30"))
K = 2  # the probe's `failures` in the seed 001 goals of tests/e2e/ha.py
ROUTE = "/route"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def at_rest(rig: HaCluster, route: str, paged: bool, timeout: float = 30.0) -> str:
    """One leader among the live agents, its DatabaseRouting at rest on `route`; its name."""
    live = [n for n, a in rig.agents.items() if a.alive]
    leader = rig.wait_one_leader(live, timeout)
    rig.wait_domain(
        leader,
        lambda d: d["satisfied"] and not d["in_flight"] and d["values"]["route"] == route
        and d["values"]["paged"] is paged and (d["values"]["primary_ok"] is (route == "primary")),
        timeout, f"at rest on {route}",
    )  # fmt: skip
    return leader


def accepted_after(
    path: str, after: float, target: str | None = None
) -> Callable[[list[Request]], list[Request]]:
    def found(requests: list[Request]) -> list[Request]:
        return [
            r for r in requests
            if r.path == path and r.accepted and r.t >= after
            and (target is None or (r.json or {}).get("target") == target)
        ]  # fmt: skip

    return found


def every_member(rig: HaCluster, name: str) -> None:
    """Until `name` sees an election key of every agent."""
    agent = rig.agents[name]
    wait_for(
        lambda: len(agent.api_status()["cluster"]["members"]) == len(rig.agents),
        60, "every node a member", every=0.2,
    )  # fmt: skip


def newer(fence: int) -> Callable[[list[Request]], list[Request]]:
    return lambda rs: [r for r in rs if r.fence is not None and r.fence > fence]


def takeover(rig: HaCluster) -> list[float]:
    """(a): seconds from the SIGKILL to the new leader's first effect, per run."""
    rig.start_agents("bench-takeover")
    samples: list[float] = []
    for _ in range(TAKEOVERS):
        old = at_rest(rig, "primary", False)
        every_member(rig, old)
        rig.receiver.clear()
        rig.receiver.hold(ROUTE)
        rig.primary.set_healthy(False)
        _, fence, _ = rig.receiver.wait_held(15, "the leader's failover")
        killed = rig.agents[old].kill()
        first = rig.receiver.wait(newer(fence), TTL + 10, "the new leader's first effect")[0]
        samples.append(first.t - killed)
        rig.receiver.release()
        at_rest(rig, "replica", True)
        rig.primary.set_healthy(True)
        rig.agents[old].start()
        at_rest(rig, "primary", False)
    return samples


def failover_decision(rig: HaCluster) -> tuple[list[float], list[float]]:
    """(b): (K-th failing answer -> failover received, flip -> failover received), per flip."""
    rig.start_agents("bench-decision", order=["h2", "h3"])
    leader = rig.wait_one_leader(timeout=30)
    run = next(iter(rig.agents.values())).workdir
    rig.add_agents("h1", [0], "bench-decision", run / "goals.yaml", run, TTL)  # h1 follows
    decision: list[float] = []
    flip: list[float] = []
    for _ in range(FLIPS):
        leader = at_rest(rig, "primary", False)
        assert leader != "h1", "the primary's host leads: the figure would skip etcd"
        rig.receiver.clear()
        since = rig.primary.set_healthy(False)
        route = rig.receiver.wait(accepted_after(ROUTE, since, "replica"), 15, "failover")[0]
        kth = rig.primary.failing_answer(K, since)
        assert kth is not None and kth <= route.t, (kth, route)
        decision.append(route.t - kth)
        flip.append(route.t - since)
        at_rest(rig, "replica", True)
        healed = rig.primary.set_healthy(True)
        rig.receiver.wait(accepted_after(ROUTE, healed, "primary"), 15, "restore")
    return decision, flip


SERIES = {
    "revisions": "etcd_debugging_mvcc_current_revision",
    "proposals": "etcd_server_proposals_committed_total",
    "puts": "etcd_mvcc_put_total",
    "deletes": "etcd_mvcc_delete_total",
}
SUMMED = {  # per member, summed over the members
    "watch events": "etcd_debugging_mvcc_events_total",
    "keepalives": 'grpc_server_msg_received_total{grpc_method="LeaseKeepAlive",'
    'grpc_service="etcdserverpb.Lease",grpc_type="bidi_stream"}',
    "ranges": 'grpc_server_started_total{grpc_method="Range",grpc_service="etcdserverpb.KV",'
    'grpc_type="unary"}',
    "txns": 'grpc_server_started_total{grpc_method="Txn",grpc_service="etcdserverpb.KV",'
    'grpc_type="unary"}',
}


def etcd_metrics(rig: HaCluster) -> dict[str, dict[str, float]]:
    """member -> its /metrics (read on its namespace's loopback)."""
    out = {}
    for name in rig.net.names:
        status, body = ns_get(rig.net.ns(name), "http://127.0.0.1:2379/metrics", 5.0)
        assert status == 200, status
        out[name] = parse_metrics(body.decode())
    return out


def load_at_rest(rig: HaCluster, agents: int) -> dict[str, float]:
    """(c): per agent per second over REST_SECONDS with `agents` agents at rest."""
    per_host = max(1, agents // len(rig.net.names))
    rig.start_agents(f"bench-load-{agents}", per_host=per_host)
    at_rest(rig, "primary", False, timeout=120)
    wait_for(
        lambda: all(
            a.metrics().get("setpoint_cluster_healthy") == 1.0
            and a.api_status().get("cluster", {}).get("leader")
            for a in rig.agents.values()
        ),
        120, "every agent healthy on the cluster", every=0.5,
    )  # fmt: skip
    every_member(rig, next(iter(rig.leaders())))
    time.sleep(2)  # let the start-up writes (facts, digests) drain before the window
    before, cpu0, t0 = etcd_metrics(rig), agents_cpu(rig), time.monotonic()
    time.sleep(REST_SECONDS)
    after, cpu1, t1 = etcd_metrics(rig), agents_cpu(rig), time.monotonic()
    n, seconds = len(rig.agents), t1 - t0
    any_member = rig.net.names[0]
    rates: dict[str, float] = {}
    for label, series in SERIES.items():
        delta = after[any_member].get(series, 0.0) - before[any_member].get(series, 0.0)
        rates[label] = delta / seconds / n
    for label, series in SUMMED.items():
        delta = sum(after[m].get(series, 0.0) - before[m].get(series, 0.0) for m in after)
        rates[label] = delta / seconds / n
    rates["agents"] = n
    rates["seconds"] = seconds
    rates["cpu"] = (cpu1 - cpu0) / seconds / n * 100
    return rates


def agents_cpu(rig: HaCluster) -> float:
    """CPU seconds the agent processes have used so far (user + system)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for agent in rig.agents.values():
        assert agent.proc is not None  # `ip netns exec` and `env` exec: the pid is the agent's
        fields = Path(f"/proc/{agent.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _print_load(rates: dict[str, float]) -> None:
    print(
        f"etcd load at rest, {rates['agents']:.0f} agents over {rates['seconds']:.0f} s, per "
        f"agent per second: writes {rates['revisions']:.3f} (revisions; puts "
        f"{rates['puts']:.3f}, deletes {rates['deletes']:.3f}, raft proposals "
        f"{rates['proposals']:.3f}), watch events sent {rates['watch events']:.3f}, "
        f"lease keepalives {rates['keepalives']:.2f}, reads {rates['ranges']:.3f} ranges + "
        f"{rates['txns']:.3f} txns; agent CPU {rates['cpu']:.1f}% of a core each (probes "
        f"every 200 ms, tick 100 ms)"
    )


def skipped() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "`ip` not found (Debian package iproute2)"
    if not Path(ETCD).exists():
        return f"{ETCD} not installed (Debian package etcd-server)"
    return None


def main() -> None:
    reason = skipped()
    if reason is not None:
        print(f"ha bench skipped: {reason}")
        return
    with (
        tempfile.TemporaryDirectory(prefix="setpoint-ha-bench-") as tmp,
        ha_cluster(Path(tmp)) as rig,
    ):
        took = takeover(rig)
        print(
            f"takeover (leader SIGKILLed mid-failover -> new leader's first effect, TTL {TTL} s, "
            f"{len(took)} runs): median {statistics.median(took):.2f} s, p99 "
            f"{pct(took, 0.99):.2f} s, max {max(took):.2f} s (goal <= 3 s)"
        )
        decision, flip = failover_decision(rig)
        print(
            f"failover decision (K={K}-th failing probe answer on h1 -> failover at the "
            f"receiver from the leader on another host, {len(decision)} flips): median "
            f"{statistics.median(decision) * 1000:.1f} ms, p99 {pct(decision, 0.99) * 1000:.1f} ms "
            f"(goal p99 <= 50 ms); from the flip: median {statistics.median(flip) * 1000:.0f} ms"
        )
        for agents in (3, AGENTS_LARGE):
            _print_load(load_at_rest(rig, agents))


if __name__ == "__main__":
    main()
