"""Adapters / cluster: the agent's side of the link, and the `--etcd-*` options of `setpoint run`.

- The link's views become `ClusterObserved` inputs; a new term loads the record the previous
  leaders kept in etcd and hands it to the core (`ClusterAdopted`).
- The committed state's facts (probe verdicts, service lifecycles, cluster domain digests) are
  published under this node's lease, so they vanish with the node.
- Write-ahead across the cluster: after the local journal commit and before dispatch, the
  leader writes the cluster domains' record to etcd by a fenced transaction; the actions of
  cluster domains run only once it is written (held and retried on every batch otherwise).
- A cluster effect runs only while this node's term carries the action's fence.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from immutables import Map

from agent.adapters.cluster.config import ClusterConfig
from agent.core import cluster
from agent.core.actions import Action, RunEffect, TrackedAction
from agent.core.inputs import ClusterAdopted, ClusterObserved, Input
from agent.core.spec import DomainSpec, FailoverGroup
from agent.core.state import ClusterRecord, State
from agent.errors import JournalCorrupt, TransientError
from agent.journal import codec

if TYPE_CHECKING:  # the link (grpc, aetcd) loads only when a cluster is configured
    from agent.adapters.cluster.link import ClusterLink, ClusterView

log = logging.getLogger("setpoint.cluster")

RECORD_KEY = "domains"
Executor = Callable[[TrackedAction], Awaitable[str]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The cluster options of `setpoint run` (cluster domains are off without --etcd-endpoints)."""
    group = parser.add_argument_group("cluster (off unless --etcd-endpoints is given)")
    group.add_argument("--etcd-endpoints", help="etcd client URLs, comma-separated (own first)")
    group.add_argument(
        "--cluster", default="setpoint", help="the cluster's name (default setpoint)"
    )
    group.add_argument("--node", default="", help="this node's name (default: the hostname)")
    group.add_argument("--lease-ttl", type=int, default=2, help="lease TTL in seconds (default 2)")
    group.add_argument("--etcd-ca", type=Path, help="CA certificate (PEM) for https endpoints")
    group.add_argument("--etcd-cert", type=Path, help="client certificate (PEM)")
    group.add_argument("--etcd-key", type=Path, help="client key (PEM)")


def from_args(args: argparse.Namespace) -> ClusterConfig | None:
    """The configuration `args` ask for; ValueError saying what is wrong."""
    if not args.etcd_endpoints:
        return None
    endpoints = [e.strip() for e in args.etcd_endpoints.split(",") if e.strip()]
    return ClusterConfig(endpoints, args.cluster, args.node or socket.gethostname(),
                         ttl=args.lease_ttl, ca=args.etcd_ca, cert=args.etcd_cert,
                         key=args.etcd_key)  # fmt: skip


def facts_of(state: State) -> dict[str, str]:
    """What this node tells the cluster: its probes' verdicts, its services, its definitions."""
    facts: dict[str, str] = {}
    for name, probe in state.probes.items():
        verdict = (
            "unknown" if probe.healthy is None else "healthy" if probe.healthy else "unhealthy"
        )
        facts[f"probe/{name}"] = verdict + (" over_budget" if probe.over_budget else "")
    for name, svc in state.services.items():
        facts[f"service/{name}"] = f"{svc.lifecycle} {svc.health}"
    specs: list[DomainSpec | FailoverGroup] = [*cluster.scoped(state)]
    specs += cluster.scoped_groups(state)
    for spec in specs:
        facts[cluster.digest_fact(spec)] = spec.digest
    return facts


class ClusterBridge:
    """Connects one ClusterLink to the runtime (see the module docstring)."""

    def __init__(
        self, link: ClusterLink, submit: Callable[[Input], None], clock: Callable[[], float]
    ) -> None:
        self.link = link
        self._submit = submit
        self._clock = clock
        self._published: dict[str, str] = {}
        self._adopting = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._written: ClusterRecord | None = None
        self._held: dict[int, Action] = {}
        self._settled: State | None = None
        """The last state whose record is known to be in etcd as it stands."""

    # -- link -> core -----------------------------------------------------------------------

    def on_view(self, view: ClusterView) -> None:
        """The link's change callback: submit the view; a new term adopts the record."""
        facts = Map({node: Map(dict(f)) for node, f in view.facts.items()})
        fence = view.fence or 0
        settle = 2.0 * self.link.config.ttl
        self._submit(ClusterObserved(self._clock(), view.healthy, view.leader or "", fence,
                                     tuple(view.members), facts, settle))  # fmt: skip
        live = fence if view.healthy else 0  # as the core sees it: unhealthy ends the term
        if not live:
            self._adopting = 0  # a term that resumes (same fence) is adopted again
        elif live != self._adopting:
            self._adopting = live
            task = asyncio.get_running_loop().create_task(self._adopt(fence), name="cluster-adopt")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _adopt(self, fence: int) -> None:
        """Read the record (retrying while etcd is away and this term lasts), hand it over."""
        while self.link.fence == fence:
            try:
                text = await self.link.get(RECORD_KEY)
                record = _decode(text)
            except TransientError as err:
                log.warning("cluster: cannot read the cluster state yet: %s", err)
                await asyncio.sleep(self.link.config.ttl / 4)
                continue
            self._submit(ClusterAdopted(self._clock(), fence, record))
            self._written = record
            return

    # -- core -> link -----------------------------------------------------------------------

    def project(self, state: State) -> None:
        """Runtime hook after a commit: publish the facts that changed."""
        facts = facts_of(state)
        for name in self._published.keys() - facts.keys():
            self.link.publish(name, None)
        for name, value in facts.items():
            if self._published.get(name) != value:
                self.link.publish(name, value)
        self._published = facts

    async def gate(
        self, before: State, after: State, actions: Sequence[Action]
    ) -> Sequence[Action]:
        """Write the leader's record before its cluster actions may run (fenced)."""
        if after is self._settled and not self._held:
            return actions  # nothing changed since the record was known written (most ticks)
        fenced = {a.id: a for a in actions if isinstance(a, RunEffect) and a.fence}
        held = {**self._held, **fenced}
        record = cluster.record(after)
        if not held and record == self._written:
            self._settled = after
            return actions
        lead = cluster.leading(after)
        local = [a for a in actions if not (isinstance(a, RunEffect) and a.fence)]
        if lead is not None and await self._write(record, lead.fence):
            self._written, self._held, self._settled = record, {}, after
            return local + [a for i, a in sorted(held.items()) if i in after.pending]
        self._held = {i: a for i, a in held.items() if i in after.pending and lead is not None}
        return local

    async def _write(self, record: ClusterRecord, fence: int) -> bool:
        term = self.link.term
        if term is None or term.fence != fence:
            return False
        try:
            async with asyncio.timeout(self.link.config.timeout):
                text = codec.encode(record).decode()
                if await self.link.fenced_put(RECORD_KEY, text, term=term):
                    return True
        except (TransientError, TimeoutError) as err:
            log.warning("cluster: the cluster state is not written yet (%r); effects wait", err)
            return False
        log.warning("cluster: fence %d is no longer the leader's; its effects are dropped", fence)
        return False

    def guard(self, executor: Executor) -> Executor:
        """Run a cluster effect only while this node's term carries its fence."""

        async def run(action: TrackedAction) -> str:
            if isinstance(action, RunEffect) and action.fence:
                term = self.link.term
                if term is None or term.fence != action.fence:
                    raise TransientError(f"fence {action.fence} is not this node's term now")
            return await executor(action)

        return run


def _decode(text: str | None) -> ClusterRecord | None:
    if text is None:
        return None
    try:
        record = codec.decode(text)
    except JournalCorrupt as err:
        log.error("cluster: the stored cluster state is unreadable (%s); starting afresh", err)
        return None
    return record if isinstance(record, ClusterRecord) else None
