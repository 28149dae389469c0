"""Adapters / probes: Health probes (http, tcp, exec, jsonrpc) on drift-free schedules, results
sent as inputs.

Each probe has its own deadline: the next run is due `interval` after the previous due time,
not after the previous run ended, so a slow probe never delays another and schedules do not
drift. First runs are spread over the interval in slots of about BATCH probes each, picked by
a hash of the name: the loop waking up costs more than a request, so probes that start
together are cheaper, and a thousand probes still do not start on the same millisecond. A
bound on concurrency protects the host. A probe's own failure (bad URL, refused, DNS, timeout)
is a result, never a crash.

An HTTP check sends its request, waits for the status and reads the body to its end (at most
MAX_BODY bytes; the first MAX_BODY of a longer one are what `body_contains` and `json_field`
see). No cookies are kept: a check never carries what an earlier one was told. Connections are
kept alive between rounds (KEEPALIVE), unlike kubelet's and blackbox_exporter's checks, which
connect for each check: a check so tests that the server answers, not that it still accepts
connections (one that stopped accepting but serves the connection it holds passes), and costs
half the CPU. A server that went away still fails its probe (reset, or refused on reconnect);
a kept connection the server had closed is retried once on a new one.

A JSON-RPC probe is ok when a `result` came back; that result goes with the ProbeResult as
compact JSON text for service phases to read, unless it is larger than MAX_RESULT characters
or nested deeper than MAX_DEPTH (then it goes as none, null to the phases).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import math
import os
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from agent.core.inputs import Input, ProbeResult
from agent.core.spec import ProbeSpec

Outcome = tuple[bool, str]
Answer = tuple[bool, str, str]
"""ok, detail, and the result's JSON text ("" for none)."""
MAX_RESULT = 65_536
MAX_DEPTH = 16
LATENESS_KEPT = 10_000
MAX_BODY = 1 << 20
KEEPALIVE = True
"""HTTP connections are kept alive between rounds, a choice (see the module docstring); kubelet
and blackbox_exporter connect for each check, which costs Setpoint twice the CPU per check
(bench/peers measures both)."""
BATCH = 10
"""About how many probes of one interval start together (see _first_due). A timer wakeup on an
idle loop costs more CPU than a request on a warm one, so 100 checks at 1 s started ten at a
time cost a third of what they cost one at a time; more at once would add their neighbours'
handling to each one's measured latency."""


class Prober:
    """Runs the configured probes until cancelled.

    The schedule is a heap of (due, probe) and one timer, at the earliest due time: when it
    fires, every probe due starts as its own task and the timer is set again. No task wakes
    between rounds (a check at 1 s costs one timer, the probe's task and the request).
    """

    def __init__(
        self,
        submit: Callable[[Input], None],
        *,
        clock: Callable[[], float] = time.time,
        concurrency: int = 256,
    ) -> None:
        self._submit = submit
        self._clock = clock
        self._limit = asyncio.Semaphore(concurrency)
        self._specs: dict[str, ProbeSpec] = {}
        self._queue: list[tuple[float, str]] = []
        self._running: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._start: Callable[[ProbeSpec], object] | None = None
        """Starts one run of a probe (set while `run` runs)."""
        self.lateness: deque[float] = deque(maxlen=LATENESS_KEPT)
        """How late the most recent starts were (benchmarks and tests read it)."""

    def configure(self, specs: Sequence[ProbeSpec]) -> None:
        """Replace the probe set; unchanged probes keep their schedule."""
        now = time.monotonic()
        old = self._specs
        self._specs = {s.name: s for s in specs}
        kept = [(due, n) for due, n in self._queue if old.get(n) == self._specs.get(n)]
        scheduled = {n for _, n in kept}
        sharing = Counter(s.interval for s in specs)
        for spec in specs:
            if spec.name not in scheduled:
                kept.append((_first_due(spec, now, sharing[spec.interval]), spec.name))
        heapq.heapify(kept)
        self._queue = kept
        self._arm()

    async def run(self) -> None:
        """Start the probes as they fall due until cancelled (then cancel those running)."""
        timeout = aiohttp.ClientTimeout(total=None)
        connector = aiohttp.TCPConnector(limit=0, force_close=not KEEPALIVE)
        async with (
            _session(timeout=timeout, connector=connector) as session,
            asyncio.TaskGroup() as tg,
        ):

            def start(spec: ProbeSpec) -> object:
                return tg.create_task(self._probe(session, spec), name=f"probe:{spec.name}")

            self._start = start
            try:
                self._arm()
                await asyncio.get_running_loop().create_future()  # until cancelled
            finally:
                self._start = None
                self._disarm()

    def _arm(self) -> None:
        """Set the timer for the earliest due probe (while running)."""
        if self._start is None or not self._queue:
            self._disarm()
            return
        due = self._queue[0][0]
        if self._timer is not None:
            if self._timer.when() == due:
                return
            self._timer.cancel()
        # call_at takes the loop's time, which is time.monotonic() (the due times' clock)
        self._timer = asyncio.get_running_loop().call_at(due, self._fire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        """Start every probe now due, put each back on its grid, set the timer again."""
        self._timer = None
        start, queue, now = self._start, self._queue, time.monotonic()
        try:
            while start is not None and queue and queue[0][0] <= now:
                due, name = queue[0]
                spec = self._specs[name]
                heapq.heapreplace(queue, (_next_due(due, spec.interval, now), name))
                if name in self._running:
                    continue  # still running from the last round: skip, never pile up
                self.lateness.append(now - due)
                self._running.add(name)
                start(spec)
        finally:
            self._arm()

    async def _probe(self, session: aiohttp.ClientSession, spec: ProbeSpec) -> None:
        try:
            async with self._limit:
                started = time.perf_counter()
                ok, detail, result = await answer(spec, session)
                latency = time.perf_counter() - started
            self._submit(ProbeResult(spec.name, ok, latency, self._clock(), detail, result))
        finally:
            self._running.discard(spec.name)


def _first_due(spec: ProbeSpec, now: float, sharing: int) -> float:
    """The first run, within one interval from now, on the probe's own grid: multiples of its
    interval on the monotonic clock plus an offset. The offset is one of as many slots as it
    takes to start about BATCH of the `sharing` probes with this interval together, the slot
    picked by a hash of the name (stable, and spread)."""
    interval = spec.interval
    slots = max(1, math.ceil(sharing / BATCH))
    offset = int(zlib.crc32(spec.name.encode()) / 2**32 * slots) * interval / slots
    due = (now // interval) * interval + offset
    return due if due >= now else due + interval


def _next_due(due: float, interval: float, now: float) -> float:
    """The next deadline on the probe's own grid, skipping rounds already missed."""
    nxt = due + interval
    if nxt < now:
        nxt += ((now - nxt) // interval + 1) * interval
    return nxt


async def check(spec: ProbeSpec, session: aiohttp.ClientSession | None = None) -> Outcome:
    """Run one probe within its timeout: (ok, detail)."""
    ok, detail, _ = await answer(spec, session)
    return ok, detail


async def answer(spec: ProbeSpec, session: aiohttp.ClientSession | None = None) -> Answer:
    """Run one probe within its timeout; every failure is reported, none raised."""
    try:
        async with asyncio.timeout(spec.timeout):
            if spec.kind == "tcp":
                return (*await _tcp(spec), "")
            if spec.kind == "exec":
                return (*await _exec(spec), "")
            if session is None:
                async with _session() as own:
                    return await _http(spec, own)
            return await _http(spec, session)
    except TimeoutError:
        return False, f"timed out after {spec.timeout:g}s", ""
    except (OSError, aiohttp.ClientError, ValueError, RecursionError) as err:
        return False, f"{type(err).__name__}: {err}"[:300], ""


async def _tcp(spec: ProbeSpec) -> Outcome:
    _reader, writer = await asyncio.open_connection(spec.host, spec.port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, ""


async def _exec(spec: ProbeSpec) -> Outcome:
    proc = await asyncio.create_subprocess_exec(
        *spec.argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()
        raise
    if proc.returncode in spec.expect_exit:
        return True, ""
    text = out[-200:].decode("utf-8", "replace").strip()
    return False, f"exit {proc.returncode}: {text}"


async def _http(spec: ProbeSpec, session: aiohttp.ClientSession) -> Answer:
    headers = dict(spec.headers)
    kwargs: dict[str, Any] = {"headers": headers, "ssl": None if spec.tls_verify else False}
    method = spec.method
    if spec.kind == "jsonrpc":
        method = "POST"
        params = json.loads(spec.rpc_params)
        payload = {"jsonrpc": "2.0", "id": 1, "method": spec.rpc_method, "params": params}
        kwargs["json"] = payload
    async with session.request(method, spec.url, allow_redirects=False, **kwargs) as resp:
        body = await _read(resp.content, MAX_BODY)
    if spec.kind == "http" and resp.status not in spec.expect_status:
        return False, f"HTTP {resp.status}", ""
    if spec.kind == "jsonrpc":
        return _jsonrpc_verdict(resp.status, body, spec)
    return (*_body_verdict(body, spec), "")


def _session(**kwargs: Any) -> aiohttp.ClientSession:
    """A session for probes: no cookie jar (each check stands alone)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), **kwargs)


async def _read(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body to its end, or its first `limit` bytes (one read when it came in one piece)."""
    first = await content.read(limit)
    if not first or content.at_eof():
        return first
    chunks, size = [first], len(first)
    while size < limit and (chunk := await content.read(limit - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _body_verdict(body: bytes, spec: ProbeSpec) -> Outcome:
    if spec.body_contains and spec.body_contains.encode() not in body:
        return False, f"body lacks {spec.body_contains!r}"
    if spec.json_field:
        return _field_verdict(json.loads(body), spec)
    return True, ""


def _jsonrpc_verdict(status: int, body: bytes, spec: ProbeSpec) -> Answer:
    if status != 200:
        return False, f"HTTP {status}", ""
    reply = json.loads(body)
    if not isinstance(reply, dict) or "error" in reply or "result" not in reply:
        error = reply.get("error") if isinstance(reply, dict) else reply
        return False, f"JSON-RPC error: {str(error)[:200]}", ""
    result = reply["result"]
    ok, detail = _field_verdict(result, spec) if spec.json_field else (True, "")
    return ok, detail, bounded(result)


def bounded(value: object) -> str:
    """The value as compact JSON text, or "" when larger than MAX_RESULT or deeper than
    MAX_DEPTH (a node's whole block is not a phase's business)."""
    if _depth(value, MAX_DEPTH) > MAX_DEPTH:
        return ""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN or Infinity: not JSON, not for CEL
        return ""
    return text if len(text) <= MAX_RESULT else ""


def _depth(value: object, limit: int) -> int:
    """How deep lists and objects nest (a scalar is 0), counting no further than limit + 1."""
    if not isinstance(value, dict | list) or limit < 0:
        return 0 if not isinstance(value, dict | list) else 1
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(c, limit - 1) for c in children), default=0)


def _field_verdict(doc: object, spec: ProbeSpec) -> Outcome:
    """`json_field` is a dotted path; with `json_equals`, its string form must match."""
    value = doc
    for part in spec.json_field.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, f"JSON field {spec.json_field!r} missing"
        value = value[part]
    text = value if isinstance(value, str) else json.dumps(value)
    if spec.json_equals and text != spec.json_equals:
        return False, f"JSON field {spec.json_field!r} is {text[:60]!r}, not {spec.json_equals!r}"
    return True, ""
