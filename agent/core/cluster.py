"""Core: cluster domains: decided by the one leader, over facts every node publishes. Pure.

A domain with `scope: cluster` acts only on the node that leads (a valid etcd lease and the
lowest election key), only once it has adopted the record the previous leaders left in etcd,
and only while every live node agrees on the domain's definition (its digest). Its CEL sees
`nodes["host"].services["name"]` and `nodes["host"].probes["name"]`; a node that is gone (its
lease expired and its facts with it) reads as down: `up` false, every service and probe failed,
so "the primary's host vanished" breaks a goal exactly like "the primary's check failed".

Its actions take ids from the cluster's counter and carry the leader's fence. The runtime
writes the record (`record`) to etcd by a fenced transaction before dispatching them; a new
leader loads it (`adopt`) and re-emits every pending action with the same id, under its fence.
A node whose leadership ends forgets the cluster's pending actions: they belong to the record.
"""

from __future__ import annotations

from immutables import Map

from agent.core import alerts
from agent.core.actions import RunEffect
from agent.core.draft import Draft, evolve
from agent.core.expr import node_references
from agent.core.inputs import ClusterAdopted, ClusterObserved
from agent.core.spec import DomainSpec, FailoverGroup
from agent.core.state import CLUSTER_IDS, ClusterRecord, ClusterState, State

DOWN_SERVICE: dict[str, object] = {
    "state": "Unknown",
    "healthy": False,
    "health": "unknown",
    "up": False,
}
DOWN_PROBE: dict[str, object] = {"healthy": False, "over_budget": False, "up": False}


def scoped(draft: Draft | State) -> list[DomainSpec]:
    """The cluster-scoped domains of the goals."""
    return [d for d in draft.goals.domains if d.scope == "cluster"]


def scoped_groups(draft: Draft | State) -> list[FailoverGroup]:
    """The cluster-scoped failover groups of the goals."""
    return [g for g in draft.goals.groups if g.scope == "cluster"]


def digest_fact(spec: DomainSpec | FailoverGroup) -> str:
    """The fact name under which nodes publish their digest of a cluster domain or group."""
    return f"digest/{spec.name}" if isinstance(spec, DomainSpec) else f"digest/group/{spec.name}"


def member_status(draft: Draft, node: str, probes: tuple[str, ...], now: float) -> str:
    """A cluster group member, from its node's facts: good, degraded, down or wait."""
    cluster = draft.cluster
    published = cluster.facts.get(node)
    if published is None:
        return "wait" if node in cluster.members or now < cluster.settled_at else "down"
    verdicts = [published.get(f"probe/{p}") for p in probes]
    if any(v is None or v.startswith("unknown") for v in verdicts):
        return "wait"
    if not probes or any(not v.startswith("healthy") for v in verdicts if v is not None):
        return "down"
    return "degraded" if any(v.endswith("over_budget") for v in verdicts if v) else "good"


def acting(draft: Draft, spec: DomainSpec | FailoverGroup) -> str:
    """Why this node may not decide for a cluster domain or group now ("" when it may)."""
    cluster = draft.cluster
    if not cluster.healthy:
        return "the cluster link is down"
    if not cluster.fence:
        return f"{cluster.leader or 'no node'} leads"
    if cluster.adopted != cluster.fence:
        return "loading the cluster state"
    differ = sorted(
        node
        for node, facts in cluster.facts.items()
        if facts.get(digest_fact(spec), spec.digest) != spec.digest
    )
    return f"its definition differs on {', '.join(differ)}" if differ else ""


def facts(draft: Draft, spec: DomainSpec, now: float) -> dict[str, object] | None:
    """`nodes` for a cluster domain's expressions: what each named node published.

    None (wait) while a node that is still a member has not published the fact or its probe
    has no verdict yet, and, right after the link came up, for a node not seen at all yet:
    the blind spot after a start is not a failure. Otherwise a node that is not a member reads
    as down.
    """
    cluster = draft.cluster
    nodes: dict[str, dict[str, dict[str, object] | bool]] = {}
    for text in spec.expressions:
        for node, kind, name in node_references(text):
            published = cluster.facts.get(node)
            entry = nodes.setdefault(node, {"up": published is not None, "services": {},
                                            "probes": {}})  # fmt: skip
            table = entry[kind]
            assert isinstance(table, dict)
            value = published.get(f"{kind[:-1]}/{name}") if published is not None else None
            if node in cluster.members and (value is None or value.startswith("unknown")):
                return None
            if published is None and now < cluster.settled_at:
                return None
            table[name] = _service(value) if kind == "services" else _probe(value)
    return {"nodes": nodes, "services": {}, "probes": {}}


def _service(value: str | None) -> dict[str, object]:
    """A published service fact, `<lifecycle> <health>`, as CEL sees it."""
    if value is None:
        return DOWN_SERVICE
    lifecycle, _, health = value.partition(" ")
    healthy = lifecycle == "Running" and health == "healthy"
    return {"state": lifecycle, "healthy": healthy, "health": health, "up": True}


def _probe(value: str | None) -> dict[str, object]:
    """A published probe fact, `healthy` / `unhealthy` / `unknown` (+ ` over_budget`)."""
    if value is None:
        return DOWN_PROBE
    verdict, _, extra = value.partition(" ")
    return {"healthy": verdict == "healthy", "over_budget": extra == "over_budget", "up": True}


def observed(draft: Draft, inp: ClusterObserved) -> None:
    """The link's view: a term that ends drops the cluster's pending actions here."""
    old = draft.cluster
    fence = inp.fence if inp.healthy else 0
    if old.fence and fence != old.fence:
        _step_down(draft, old.fence)
    if fence and fence != old.fence:
        draft.log("info", f"leading the cluster (fence {fence}); loading its state")
    # the first time the link comes up (a blip later does not reopen the window: nodes seen
    # before it vanished for real)
    settled_at = old.settled_at or (inp.at + inp.settle if inp.healthy else 0.0)
    draft.cluster = evolve(
        draft.cluster,
        settled_at=settled_at,
        healthy=inp.healthy,
        leader=inp.leader,
        fence=fence,
        adopted=draft.cluster.adopted if fence == old.fence else 0,
        members=inp.members,
        facts=inp.facts,
    )
    if scoped(draft) or scoped_groups(draft):
        summary = "cluster link down: cluster domains paused, local supervision goes on"
        rule = alerts.Builtin.CLUSTER_UNAVAILABLE.value
        alerts.set_alert(draft, rule, "cluster", not inp.healthy, "warning", summary, inp.at)


def _step_down(draft: Draft, fence: int) -> None:
    """This node's term ended: its cluster actions live on in the record, not here."""
    mine = [i for i, a in draft.pending.items() if i >= CLUSTER_IDS]
    for action_id in mine:
        draft.pending = draft.pending.delete(action_id)
    draft.log("warning", f"leadership ended (fence {fence}); {len(mine)} cluster actions left "
                         "to the next leader")  # fmt: skip


def adopt(draft: Draft, inp: ClusterAdopted) -> None:
    """The new leader takes the record over and re-emits its pending actions, same ids."""
    cluster = draft.cluster
    if inp.fence != cluster.fence or cluster.adopted == cluster.fence:
        return
    record = inp.record or ClusterRecord()
    for spec in scoped(draft):
        kept = record.domains.get(spec.name)
        if kept is not None and spec.name in draft.domains:
            draft.set_domain(spec.name, kept)
    for group in scoped_groups(draft):
        kept_group = record.groups.get(group.name)
        if kept_group is not None:
            draft.groups = draft.groups.set(group.name, kept_group)
    for action in record.pending:
        moved = evolve(action, fence=cluster.fence)
        draft.pending = draft.pending.set(action.id, moved)
        draft.actions.append(moved)
    draft.cluster = evolve(cluster, adopted=cluster.fence,
                           next_id=max(cluster.next_id, record.next_id))  # fmt: skip
    draft.log("info", f"cluster state adopted (fence {cluster.fence}): "
                      f"{len(record.pending)} pending actions re-emitted")  # fmt: skip


def record(state: State) -> ClusterRecord:
    """What the leader keeps in etcd: the cluster domains and their pending actions."""
    names = {d.name for d in scoped(state)}
    pending = tuple(
        a for i, a in sorted(state.pending.items()) if i >= CLUSTER_IDS and isinstance(a, RunEffect)
    )
    domains = Map({n: d for n, d in state.domains.items() if n in names})
    group_names = {g.name for g in scoped_groups(state)}
    groups = Map({n: g for n, g in state.groups.items() if n in group_names})
    return ClusterRecord(domains=domains, pending=pending, next_id=state.cluster.next_id,
                         groups=groups)  # fmt: skip


def leading(state: State) -> ClusterState | None:
    """The cluster state while this node leads and has adopted the record."""
    cluster = state.cluster
    return cluster if cluster.fence and cluster.adopted == cluster.fence else None
