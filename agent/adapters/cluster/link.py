"""Adapters / cluster: one node's link to etcd: lease, election, fenced writes, facts.

    async with ClusterLink(config, on_change=callback) as link:
        link.view()            who leads, this node's term (fence), members, facts, health
        link.term              this node's Term while it leads and its lease is surely alive
        await link.fenced_txn({"domain/db": state_json}, term=term)   False: deposed
        link.publish("svc/web", "Running")                  a fact, attached to the lease

Lease: granted with the configured TTL and renewed every TTL/3, each renewal bounded by TTL/3.
The link remembers when it SENT the last renewal etcd confirmed; etcd restarts the TTL when it
processes a renewal, which is later, so the lease lives at least until send time + TTL.
`lease_valid(now)` holds until that moment minus `margin`: a leader cut off from etcd stops
acting (its term ends) before etcd can expire its key and let another node lead. When etcd
says the lease is gone, the link grants a new one and campaigns again (a new key, a new,
larger create revision).

Election (etcd's concurrency.Election recipe): a txn creates `election/<lease hex>` = node,
attached to the lease, if absent; the candidate whose key has the lowest create revision
leads. Keys only ever get larger revisions, so a leader's key stays the lowest while it
exists, and the fence (that revision) grows from leader to leader. Unlike
`Election.Campaign`, nobody blocks: the link watches the prefix and knows at every event who
leads.

Fencing: `fenced_txn` writes only if this node's election key still exists with the term's
create revision (the compare of `Election.Proclaim`), so a deposed leader cannot write, even
one that does not know yet that it was deposed.

Health: `healthy` means the last renewal succeeded, the lease is valid and the watch is in
sync. etcd unreachable or without quorum makes the link unhealthy (and ends the term once the
lease may have expired); so does etcd refusing a request (PermanentError: auth, TLS, a bad
request), retried every 10 s and logged as an error. Neither raises out of the link
(`last_error` tells the latest). Every background task is named and supervised by the link's
TaskGroup: an unexpected exception (a bug) ends the `async with` block with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Self

from agent.adapters.cluster.config import ClusterConfig
from agent.adapters.cluster.errors import ClusterUnavailable, LeaseLost
from agent.adapters.cluster.etcd import (
    Compare,
    Delete,
    Etcd,
    Event,
    Get,
    KeyValue,
    Put,
    prefix_end,
    read_tls,
)
from agent.errors import PermanentError, SetpointError, TransientError

log = logging.getLogger("setpoint.cluster")

_TXN_OPS = 100  # etcd refuses more than 128 operations in one txn (--max-txn-ops)
_REFUSED_RETRY = 10.0  # after a PermanentError in a background loop (auth, bad request)


@dataclass(frozen=True)
class Term:
    """One leadership of this node: its election key and that key's create revision, the
    fencing token (it only grows from leader to leader)."""

    key: str
    fence: int


@dataclass(frozen=True)
class ClusterView:
    """What the link knows, at one moment."""

    node: str
    healthy: bool
    leader: str | None
    term: Term | None  # this node's term while it leads with a valid lease
    members: tuple[str, ...]  # nodes with an election key, in election order
    facts: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # node -> name -> value
    digests: Mapping[str, str] = field(default_factory=dict)  # node -> digest

    @property
    def is_leader(self) -> bool:
        return self.term is not None

    @property
    def fence(self) -> int | None:
        return None if self.term is None else self.term.fence


class _Backoff:
    def __init__(self, first: float, most: float) -> None:
        self.first, self.most = first, most
        self.delay = first

    def reset(self) -> None:
        self.delay = self.first

    async def sleep(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.most)


class ClusterLink:
    """This node's link to the cluster; see the module docstring.

    Longer than most classes here on purpose: lease, campaign, watch and publishing share one
    lease and one view of the election, and each loop must see the others' latest state; the
    typed etcd calls are in etcd.py, the key space in config.py, the agent's side in bridge.py.
    """

    def __init__(
        self,
        config: ClusterConfig,
        *,
        on_change: Callable[[ClusterView], None] | None = None,
    ) -> None:
        self.config = config
        self.keys = config.keys
        self._on_change = on_change
        self._interval = config.ttl / 3
        self._etcd: Etcd | None = None
        # lease and campaign
        self._lease: int | None = None
        self._ttl = config.ttl
        self._renewed: float | None = None  # send time of the last renewal etcd confirmed
        self._renew_ok = False
        self._own_key: str | None = None
        self._own_rev: int | None = None
        self._renewal = asyncio.Event()
        # what the watch saw
        self._synced = False
        self._election: dict[str, tuple[int, str]] = {}  # key -> (create revision, node)
        self._facts: dict[str, dict[str, str]] = {}
        self._digests: dict[str, str] = {}
        # what this node publishes
        self._desired: dict[str, str] = {}  # full key -> value
        self._written: dict[str, str] = {}  # what is in etcd under the current lease
        self._publish = asyncio.Event()
        # the view and who waits for it
        self._view = ClusterView(config.node, False, None, None, ())
        self._news = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.last_error: str | None = None  # the latest failure of a background loop

    # -- life --------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        cfg = self.config
        tls = await read_tls(cfg.ca, cfg.cert, cfg.key) if cfg.tls else None
        self._etcd = Etcd(cfg.endpoints, tls=tls, timeout=cfg.timeout)
        self._etcd.open()
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        for name, work in (
            ("lease", self._lease_loop), ("watch", self._watch_loop),
            ("publish", self._publish_loop), ("validity", self._validity_loop),
        ):  # fmt: skip
            self._tasks.append(self._group.create_task(work(), name=f"cluster-{name}"))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._tasks:
            task.cancel()
        try:
            if self._group is not None:
                await self._group.__aexit__(kind, err, tb)
        finally:
            await self._release()

    async def _release(self) -> None:
        """Revoke the lease (others take over at once, facts vanish), close the channel."""
        etcd, lease = self._etcd, self._lease
        self._drop_lease()
        if etcd is None:
            return
        if lease is not None:
            try:
                await etcd.revoke(lease, timeout=min(1.0, self.config.timeout))
            except SetpointError as err:
                log.info("cluster: lease %x not revoked (%s); it expires by itself", lease, err)
        await etcd.close()

    # -- reading -----------------------------------------------------------------------------

    def lease_valid(self, now: float | None = None) -> bool:
        """Whether the lease surely still lives at `now` (monotonic), minus the margin."""
        until = self.valid_until
        return until is not None and (time.monotonic() if now is None else now) < until

    @property
    def valid_until(self) -> float | None:
        """Monotonic time until which this node may act on its lease."""
        if self._lease is None or self._renewed is None:
            return None
        return self._renewed + self._ttl - self.config.lease_margin

    @property
    def lease(self) -> int | None:
        return self._lease

    @property
    def healthy(self) -> bool:
        return self._renew_ok and self._synced and self._own_rev is not None and self.lease_valid()

    @property
    def term(self) -> Term | None:
        """This node's term, now: it leads, and its lease surely lives."""
        key, rev = self._own_key, self._own_rev
        if key is None or rev is None or not self.lease_valid():
            return None
        first = min(self._election.items(), key=lambda kv: kv[1][0], default=None)
        return Term(key, rev) if first is not None and first[0] == key else None

    @property
    def is_leader(self) -> bool:
        return self.term is not None

    @property
    def fence(self) -> int | None:
        """The fencing token of this node's term, now (None: it does not lead)."""
        term = self.term
        return None if term is None else term.fence

    @property
    def leader(self) -> str | None:
        first = min(self._election.values(), default=None)
        return None if first is None else first[1]

    def view(self) -> ClusterView:
        """A snapshot of what the link knows now."""
        members = dict.fromkeys(node for _, node in sorted(self._election.values()))
        return ClusterView(
            node=self.config.node,
            healthy=self.healthy,
            leader=self.leader,
            term=self.term,
            members=tuple(members),
            facts=MappingProxyType(
                {n: MappingProxyType(dict(f)) for n, f in sorted(self._facts.items())}
            ),
            digests=MappingProxyType(dict(sorted(self._digests.items()))),
        )

    async def wait_for(
        self, predicate: Callable[[ClusterView], bool], timeout: float
    ) -> ClusterView:
        """The first view (this one or a later) for which `predicate` holds; TimeoutError."""
        async with asyncio.timeout(timeout):
            while True:
                news = self._news
                view = self.view()
                if predicate(view):
                    return view
                await news.wait()

    def _changed(self) -> None:
        view = self.view()
        if view == self._view:
            return
        old, self._view = self._view, view
        if view.healthy != old.healthy:
            log.warning("cluster %s: link %s", self.config.cluster,
                        "healthy" if view.healthy else "UNHEALTHY")  # fmt: skip
        if (view.leader, view.term) != (old.leader, old.term):
            log.info("cluster %s: leader %s%s", self.config.cluster, view.leader,
                     f" (this node, fence {view.term.fence})" if view.term else "")  # fmt: skip
        news, self._news = self._news, asyncio.Event()
        news.set()
        if self._on_change is not None:
            self._on_change(view)

    # -- writing -----------------------------------------------------------------------------

    def publish(self, name: str, value: str | None) -> None:
        """This node's fact `name` (None: retract it). Written when it changed, attached to
        the lease, and again after a new lease; failures are retried in the background."""
        self._want(self.keys.fact(self.config.node, name), value)

    def publish_digest(self, digest: str | None) -> None:
        """This node's digest of its cluster-scoped goals (compared across nodes)."""
        self._want(self.keys.digest(self.config.node), digest)

    def _want(self, key: str, value: str | None) -> None:
        if value is None:
            self._desired.pop(key, None)
        else:
            self._desired[key] = value
        self._publish.set()

    async def fenced_txn(
        self,
        puts: Mapping[str, str],
        deletes: Iterable[str] = (),
        *,
        term: Term | None = None,
    ) -> bool:
        """Write state keys (`state/<key>`) in one txn that succeeds only while `term`'s
        election key still exists with its fence (default: the current term).

        False: the term is over (deposed, or not the leader); nothing was written.
        ClusterUnavailable: unknown whether it was written; retry (the writes are idempotent).
        """
        term = term or self.term
        if term is None:
            return False
        ops: list[Put | Delete] = [Put(self.keys.state_key(k), v) for k, v in puts.items()]
        ops += [Delete(self.keys.state_key(k)) for k in deletes]
        if len(ops) > _TXN_OPS:
            raise ValueError(f"cluster: at most {_TXN_OPS} keys in one fenced txn")
        result = await self._client.txn([Compare(term.key, "create", term.fence)], ops)
        return result.succeeded

    async def fenced_put(self, key: str, value: str, *, term: Term | None = None) -> bool:
        """`fenced_txn` of one key."""
        return await self.fenced_txn({key: value}, term=term)

    async def get(self, key: str) -> str | None:
        """A state key's value (a linearizable read)."""
        kv = await self._client.get(self.keys.state_key(key))
        return None if kv is None else kv.value

    async def get_prefix(self, prefix: str = "") -> dict[str, str]:
        """Every state key under `prefix`, relative to `state/`."""
        start = self.keys.state + prefix
        _, kvs = await self._client.range(start, prefix_end(start))
        return {kv.key.removeprefix(self.keys.state): kv.value for kv in kvs}

    async def _pause(self, err: SetpointError, backoff: _Backoff, what: str = "") -> None:
        """After a failure in a background loop: log it, wait (long if etcd refused)."""
        self.last_error = f"{what}{err}"
        if isinstance(err, PermanentError):
            log.error("cluster %s: %s%s", self.config.cluster, what, err)
            await asyncio.sleep(_REFUSED_RETRY)
        else:
            log.warning("cluster %s: %s%s", self.config.cluster, what, err)
            await backoff.sleep()

    @property
    def _client(self) -> Etcd:
        if self._etcd is None:
            raise ClusterUnavailable("cluster link not started")
        return self._etcd

    # -- the lease, the campaign -------------------------------------------------------------

    def _drop_lease(self) -> None:
        self._lease = self._renewed = self._own_key = self._own_rev = None
        self._renew_ok = False
        self._written = {}
        self._renewal.set()

    async def _lease_loop(self) -> None:
        backoff = _Backoff(0.1, self._interval)
        while True:
            try:
                await self._hold_lease(backoff)
            except LeaseLost as err:
                log.warning("cluster %s: %s; granting a new lease", self.config.cluster, err)
            except SetpointError as err:
                self._renew_ok = False
                self._changed()
                await self._pause(err, backoff)
            self._drop_lease()
            self._changed()

    async def _hold_lease(self, backoff: _Backoff) -> None:
        """Grant a lease, campaign, keep it alive until etcd says it is gone (LeaseLost)."""
        etcd = self._client
        sent = time.monotonic()
        lease, ttl = await etcd.grant(self.config.ttl)
        self._lease, self._ttl, self._renewed, self._renew_ok = lease, ttl, sent, True
        self._own_key = self.keys.candidate(lease)
        self._renewal.set()
        self._publish.set()
        backoff.reset()
        log.info("cluster %s: lease %x (TTL %d s) via %s", self.config.cluster, lease, ttl,
                 etcd.endpoint)  # fmt: skip
        next_at = sent + self._interval
        while True:
            if self._own_rev is None:
                await self._campaign(lease)
            self._changed()
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            sent = time.monotonic()
            next_at = sent + self._interval
            try:
                await etcd.keepalive(lease, timeout=self._interval)
            except LeaseLost:
                raise
            except TransientError as err:
                if self._renew_ok:
                    log.warning("cluster %s: renewal failed: %s", self.config.cluster, err)
                self._renew_ok = False
                # A quick failure (refused: the member died) is retried at once, on the next
                # endpoint after the second one, while the lease is still surely valid.
                next_at = min(next_at, time.monotonic() + self._interval / 6)
                continue
            self._renewed, self._renew_ok = sent, True
            self._renewal.set()

    async def _campaign(self, lease: int) -> None:
        """Put this node's election key unless it exists (etcd's Campaign, without waiting)."""
        key = self.keys.candidate(lease)
        try:
            result = await self._client.txn(
                [Compare(key, "create", 0)],
                [Put(key, self.config.node, lease)],
                [Get(key)],
                timeout=self._interval,
            )
        except LeaseLost:
            raise
        except TransientError as err:
            log.warning("cluster %s: campaign: %s", self.config.cluster, err)
            return
        if result.succeeded:
            self._own_rev = result.revision
        elif result.gets and result.gets[0] is not None:
            self._own_rev = result.gets[0].create_revision
        # The key enters the election table only through the watch: events arrive in
        # revision order, so a lower key created just before ours is never missed.

    async def _validity_loop(self) -> None:
        """Publish a new view the moment the lease stops being surely valid."""
        while True:
            self._renewal.clear()
            until = self.valid_until
            left = None if until is None else until - time.monotonic()
            if left is not None and left > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._renewal.wait()
                continue
            self._changed()
            await self._renewal.wait()

    # -- the watch ---------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        start, end = self.keys.observed
        backoff = _Backoff(0.1, 1.0)
        while True:
            watch = None
            try:
                revision, kvs = await self._client.range(start, end)
                self._load(kvs)
                watch = await self._client.watch(start, end, revision + 1)
                self._synced = True
                backoff.reset()
                self._changed()
                while True:
                    for event in await watch.next():
                        self._apply(event)
                    self._changed()
            except SetpointError as err:
                self._synced = False
                self._changed()
                await self._pause(err, backoff, "watch: ")
            finally:
                if watch is not None:
                    watch.cancel()

    def _load(self, kvs: list[KeyValue]) -> None:
        self._election.clear()
        self._facts.clear()
        self._digests.clear()
        for kv in kvs:
            self._apply(Event("put", kv))

    def _apply(self, event: Event) -> None:
        key, kv, put = event.kv.key, event.kv, event.kind == "put"
        keys = self.keys
        if not put:
            self._lost(key)
        if key.startswith(keys.election):
            if put:
                self._election[key] = (kv.create_revision, kv.value)
            else:
                self._election.pop(key, None)
        elif key.startswith(keys.facts):
            node, _, name = key.removeprefix(keys.facts).partition("/")
            facts = self._facts.setdefault(node, {})
            if put:
                facts[name] = kv.value
            else:
                facts.pop(name, None)
                if not facts:
                    del self._facts[node]
        elif key.startswith(keys.digests):
            node = key.removeprefix(keys.digests)
            if put:
                self._digests[node] = kv.value
            else:
                self._digests.pop(node, None)

    def _lost(self, key: str) -> None:
        """One of this node's keys was deleted (its lease expired, or someone deleted it):
        campaign again, write it again. With an expired lease, that fails with LeaseLost,
        which is how the link may learn it first."""
        if key == self._own_key:
            self._own_rev = None
        if self._written.pop(key, None) is not None:
            self._publish.set()

    # -- publishing facts --------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        backoff = _Backoff(0.1, 1.0)
        while True:
            await self._publish.wait()
            self._publish.clear()
            lease = self._lease
            if lease is None:
                continue  # woken again by the next lease
            ops: list[Put | Delete] = [
                Put(k, v, lease) for k, v in self._desired.items() if self._written.get(k) != v
            ]
            ops += [Delete(k) for k in self._written if k not in self._desired]
            try:
                for i in range(0, len(ops), _TXN_OPS):
                    batch = ops[i : i + _TXN_OPS]
                    await self._client.txn([], batch)
                    if self._lease == lease:
                        for op in batch:
                            if isinstance(op, Put):
                                self._written[op.key] = op.value
                            else:
                                self._written.pop(op.key, None)
                backoff.reset()
            except LeaseLost:
                continue  # the lease loop grants a new one and wakes this loop
            except SetpointError as err:
                self._publish.set()
                await self._pause(err, backoff, "publishing facts: ")
