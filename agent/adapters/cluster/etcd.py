"""Adapters / cluster: a narrow, typed etcd v3 client (leases, ranges, txns, watches).

Built on aetcd's generated etcd v3 gRPC stubs (`aetcd.rpc`) over our own `grpc.aio` channel,
not on `aetcd.Client`: the client speaks to one plaintext endpoint with one timeout for every
call, and high availability needs TLS, several endpoints and a deadline per call (a keepalive
must give up long before a read does). Everything untyped stays in this module; callers get
frozen dataclasses and Setpoint errors (agent.adapters.cluster.errors).

Every call carries etcd's `hasleader` metadata (clientv3.WithRequireLeader): a member cut off
from the raft leader refuses at once instead of hanging, and closes open watches.

Endpoints are used one at a time, in order. After two transient failures in a row the channel
is replaced by one to the next endpoint (with one endpoint: a fresh channel to the same one),
which also ends streams stuck on a dead TCP connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc  # type: ignore[import-untyped]
from aetcd import rpc  # type: ignore[import-untyped]

from agent.adapters.cluster.errors import ClusterRefused, ClusterUnavailable, LeaseLost
from agent.errors import SetpointError

log = logging.getLogger("setpoint.cluster")

_REQUIRE_LEADER = (("hasleader", "true"),)
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
_TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "ABORTED",
              "UNKNOWN", "INTERNAL"}  # fmt: skip


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class Event:
    """One change seen by a watch (`kv.value` is empty for a delete)."""

    kind: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True)
class Compare:
    """A txn guard: `target` of `key` compared (`op`) with `value`; create/mod revisions of an
    absent key are 0."""

    key: str
    target: Literal["create", "mod", "version", "value"]
    value: int | str
    op: Literal["=", "!=", "<", ">"] = "="


@dataclass(frozen=True)
class Put:
    key: str
    value: str
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str


@dataclass(frozen=True)
class Get:
    key: str


Op = Put | Delete | Get


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    gets: tuple[KeyValue | None, ...]  # one per Get of the branch taken, in order


@dataclass(frozen=True)
class Tls:
    ca: bytes | None
    cert: bytes | None
    key: bytes | None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _kv(raw: Any) -> KeyValue:
    return KeyValue(
        _text(raw.key), _text(raw.value), int(raw.create_revision), int(raw.mod_revision),
        int(raw.lease),
    )  # fmt: skip


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with `prefix` (its last character + 1)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _convert(err: BaseException, what: str) -> SetpointError:
    """A library exception as a Setpoint error (the one place that decides retryability)."""
    if isinstance(err, SetpointError):
        return err
    if isinstance(err, grpc.aio.AioRpcError):
        code = err.code().name
        details = err.details() or code
        if "lease not found" in details:
            return LeaseLost(f"etcd {what}: {details}")
        if code in _TRANSIENT:
            return ClusterUnavailable(f"etcd {what}: {details}")
        return ClusterRefused(f"etcd {what}: {code}: {details}")
    if isinstance(err, asyncio.CancelledError):
        if _grpc_cancelled():
            return ClusterUnavailable(f"etcd {what}: call cancelled (channel replaced)")
        raise err
    if isinstance(err, (TimeoutError, ConnectionError)):
        return ClusterUnavailable(f"etcd {what}: {type(err).__name__} {err}".rstrip())
    raise err


def _grpc_cancelled() -> bool:
    """Whether a CancelledError came from gRPC (its channel was closed under a call) rather
    than from a cancellation of the running task, which must propagate."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


_RPC_ERRORS = (grpc.aio.AioRpcError, TimeoutError, ConnectionError, asyncio.CancelledError)


def _endpoint(url: str) -> tuple[str, bool]:
    """`http://h:p` / `https://h:p` / `h:p` -> (gRPC target, TLS by scheme)."""
    for scheme, tls in (("http://", False), ("https://", True)):
        if url.startswith(scheme):
            return url[len(scheme) :].rstrip("/"), tls
    return url, False


async def read_tls(ca: Path | None, cert: Path | None, key: Path | None) -> Tls:
    """The PEM files, read off the event loop; ClusterRefused if one cannot be read."""

    def read(path: Path | None) -> bytes | None:
        return None if path is None else path.read_bytes()

    try:
        return Tls(*[await asyncio.to_thread(read, p) for p in (ca, cert, key)])
    except OSError as err:
        raise ClusterRefused(f"etcd TLS: {err}") from None


class Etcd:
    """An etcd v3 client for one asyncio loop; `open()` first, `close()` at the end."""

    def __init__(self, endpoints: Sequence[str], *, tls: Tls | None, timeout: float) -> None:
        self._targets = [_endpoint(e) for e in endpoints]
        self._tls = tls
        self.timeout = timeout
        self._index = 0
        self._generation = 0
        self._failures = 0
        self._channel: Any = None
        self._kv: Any = None
        self._lease: Any = None
        self._watch: Any = None
        self._rotating = asyncio.Lock()

    @property
    def endpoint(self) -> str:
        return self._targets[self._index][0]

    def open(self) -> None:
        """Open a channel to the current endpoint (lazy: it connects on the first call)."""
        target, scheme_tls = self._targets[self._index]
        if self._tls is not None or scheme_tls:
            tls = self._tls or Tls(None, None, None)
            creds = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
            self._channel = grpc.aio.secure_channel(target, creds, options=_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._kv = rpc.KVStub(self._channel)
        self._lease = rpc.LeaseStub(self._channel)
        self._watch = rpc.WatchStub(self._channel)
        self._generation += 1

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def _failed(self, generation: int, err: SetpointError) -> None:
        """Count a transient failure; the second in a row moves to the next endpoint."""
        if not isinstance(err, ClusterUnavailable) or generation != self._generation:
            return
        self._failures += 1
        if self._failures < 2:
            return
        async with self._rotating:
            if generation != self._generation:
                return
            old = self._channel
            self._index = (self._index + 1) % len(self._targets)
            self._failures = 0
            self.open()
            log.info("etcd: switching to endpoint %s (%s)", self.endpoint, err)
            if old is not None:
                await old.close()

    async def _call(self, what: str, stub: str, method: str, request: Any, timeout: float) -> Any:
        generation = self._generation
        try:
            response = await getattr(getattr(self, stub), method)(
                request, timeout=timeout, metadata=_REQUIRE_LEADER
            )
        except _RPC_ERRORS as raw:
            err = _convert(raw, what)
            await self._failed(generation, err)
            raise err from None
        self._failures = 0
        return response

    # -- leases ------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (id, granted TTL in seconds)."""
        resp = await self._call("lease grant", "_lease", "LeaseGrant",
                                rpc.LeaseGrantRequest(TTL=ttl), self.timeout)  # fmt: skip
        if resp.error:
            raise ClusterRefused(f"etcd lease grant: {resp.error}")
        return int(resp.ID), int(resp.TTL)

    async def keepalive(self, lease: int, timeout: float) -> int:
        """Renew `lease` once: the TTL it has again. LeaseLost if etcd no longer has it."""
        generation = self._generation
        call = self._lease.LeaseKeepAlive(timeout=timeout, metadata=_REQUIRE_LEADER)
        try:
            await call.write(rpc.LeaseKeepAliveRequest(ID=lease))
            resp = await call.read()
        except _RPC_ERRORS as raw:
            err = _convert(raw, "lease keepalive")
            await self._failed(generation, err)
            raise err from None
        finally:
            call.cancel()
        if resp is grpc.aio.EOF:
            raise ClusterUnavailable("etcd lease keepalive: stream closed without an answer")
        self._failures = 0
        ttl = int(resp.TTL)
        if ttl <= 0:
            raise LeaseLost(f"etcd lease {lease:x} expired")
        return ttl

    async def revoke(self, lease: int, timeout: float) -> None:
        await self._call("lease revoke", "_lease", "LeaseRevoke",
                         rpc.LeaseRevokeRequest(ID=lease), timeout)  # fmt: skip

    # -- keys --------------------------------------------------------------------------------

    async def range(self, start: str, end: str) -> tuple[int, list[KeyValue]]:
        """Every key in [start, end) by create revision, and the revision read at."""
        request = rpc.RangeRequest(
            key=start.encode(), range_end=end.encode(),
            sort_order=rpc.RangeRequest.ASCEND, sort_target=rpc.RangeRequest.CREATE,
        )  # fmt: skip
        resp = await self._call("range", "_kv", "Range", request, self.timeout)
        return int(resp.header.revision), [_kv(kv) for kv in resp.kvs]

    async def get(self, key: str) -> KeyValue | None:
        resp = await self._call("get", "_kv", "Range", rpc.RangeRequest(key=key.encode()),
                                self.timeout)  # fmt: skip
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        """One transaction. ClusterUnavailable leaves it unknown whether it was applied."""
        request = rpc.TxnRequest(
            compare=[_compare(c) for c in compare],
            success=[_op(o) for o in success],
            failure=[_op(o) for o in failure],
        )
        resp = await self._call("txn", "_kv", "Txn", request, timeout or self.timeout)
        gets = tuple(
            _kv(r.response_range.kvs[0]) if r.response_range.kvs else None
            for r in resp.responses
            if r.WhichOneof("response") == "response_range"
        )
        return TxnResult(bool(resp.succeeded), int(resp.header.revision), gets)

    # -- watches -----------------------------------------------------------------------------

    async def watch(self, start: str, end: str, revision: int) -> Watch:
        """A watch of [start, end) from `revision` on (inclusive), once etcd created it."""
        generation = self._generation
        call = self._watch.Watch(metadata=_REQUIRE_LEADER)
        create = rpc.WatchCreateRequest(
            key=start.encode(), range_end=end.encode(), start_revision=revision
        )
        try:
            await call.write(rpc.WatchRequest(create_request=create))
            async with asyncio.timeout(self.timeout):
                first = await call.read()
        except _RPC_ERRORS as raw:
            call.cancel()
            err = _convert(raw, "watch")
            await self._failed(generation, err)
            raise err from None
        watch = Watch(call)
        watch.check(first)
        if not first.created:
            call.cancel()
            raise ClusterUnavailable("etcd watch: no creation answer")
        return watch


class Watch:
    """An open watch stream: `await next()` for each batch of events; `cancel()` at the end."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def check(self, resp: Any) -> None:
        if resp is grpc.aio.EOF:
            self.cancel()
            raise ClusterUnavailable("etcd watch: stream closed")
        if resp.canceled or resp.compact_revision:
            self.cancel()
            why = resp.cancel_reason or f"compacted at {resp.compact_revision}"
            raise ClusterUnavailable(f"etcd watch cancelled: {why}")

    async def next(self) -> list[Event]:
        """The next non-empty batch of events (ClusterUnavailable when the stream ends)."""
        while True:
            try:
                resp = await self._call.read()
            except _RPC_ERRORS as raw:
                raise _convert(raw, "watch") from None
            self.check(resp)
            events = [
                Event("delete" if ev.type == rpc.Event.DELETE else "put", _kv(ev.kv))
                for ev in resp.events
            ]
            if events:
                return events

    def cancel(self) -> None:
        self._call.cancel()


_TARGETS = {"create": "CREATE", "mod": "MOD", "version": "VERSION", "value": "VALUE"}
_RESULTS = {"=": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


def _compare(c: Compare) -> Any:
    msg = rpc.Compare(
        key=c.key.encode(),
        target=getattr(rpc.Compare, _TARGETS[c.target]),
        result=getattr(rpc.Compare, _RESULTS[c.op]),
    )
    if c.target == "create":
        msg.create_revision = int(c.value)
    elif c.target == "mod":
        msg.mod_revision = int(c.value)
    elif c.target == "version":
        msg.version = int(c.value)
    else:
        msg.value = str(c.value).encode()
    return msg


def _op(op: Op) -> Any:
    if isinstance(op, Put):
        put = rpc.PutRequest(key=op.key.encode(), value=op.value.encode(), lease=op.lease)
        return rpc.RequestOp(request_put=put)
    if isinstance(op, Delete):
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key.encode()))
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=op.key.encode()))
