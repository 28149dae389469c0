"""Probes against real local servers whose status, body and latency the test controls."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from agent.adapters import probes
from agent.adapters.probes import BATCH, MAX_DEPTH, MAX_RESULT, Prober, _first_due, answer, check
from agent.core.inputs import Input, ProbeResult
from agent.core.spec import ProbeSpec
from tests.agentproc import wait_until_async


@dataclass
class Backend:
    """A real HTTP server: status, body and delay are set by the test."""

    status: int = 200
    body: str = "ok"
    delay: float = 0.0
    hits: int = 0
    rpc: dict[str, object] = field(default_factory=lambda: {"result": {"status": "healthy"}})
    url: str = ""
    calls: list[dict[str, object]] = field(default_factory=list)
    peers: list[object] = field(default_factory=list)
    """The client address of each request (a kept-alive connection shows as the same one)."""
    cookies: list[str] = field(default_factory=list)
    """The Cookie header of each request ("" for none)."""

    async def health(self, request: web.Request) -> web.Response:
        self.hits += 1
        assert request.transport is not None
        self.peers.append(request.transport.get_extra_info("peername"))
        self.cookies.append(request.headers.get("Cookie", ""))
        await asyncio.sleep(self.delay)
        response = web.Response(status=self.status, text=self.body)
        response.set_cookie("session", f"s{self.hits}")
        return response

    async def pieces(self, request: web.Request) -> web.StreamResponse:
        """`body` sent in 4 KiB pieces, a little apart (chunked: more than one read)."""
        response = web.StreamResponse()
        await response.prepare(request)
        data = self.body.encode()
        for at in range(0, len(data), 4096):
            await response.write(data[at : at + 4096])
            await asyncio.sleep(0.001)
        await response.write_eof()
        return response

    async def jsonrpc(self, request: web.Request) -> web.Response:
        call = await request.json()
        self.calls.append(call)
        if "raw" in self.rpc:
            return web.Response(text=str(self.rpc["raw"]), content_type="application/json")
        return web.json_response({"jsonrpc": "2.0", "id": call["id"], **self.rpc})


@pytest.fixture
async def backend(request: pytest.FixtureRequest, unused_tcp_port: int) -> AsyncIterator[Backend]:
    """The server (keep-alive timeout 75 s, or the test's `indirect` parameter)."""
    state = Backend()
    app = web.Application()
    app.router.add_get("/healthz", state.health)
    app.router.add_get("/pieces", state.pieces)
    app.router.add_post("/rpc", state.jsonrpc)
    runner = web.AppRunner(app, keepalive_timeout=getattr(request, "param", 75.0))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    state.url = f"http://127.0.0.1:{unused_tcp_port}"
    yield state
    await runner.cleanup()


def http(url: str, **kw: object) -> ProbeSpec:
    return ProbeSpec(name="p", kind="http", url=url, **kw)  # type: ignore[arg-type]


async def test_http_status_body_and_json_checks(backend: Backend) -> None:
    url = backend.url + "/healthz"
    assert await check(http(url)) == (True, "")
    assert await check(http(url, body_contains="nope")) == (False, "body lacks 'nope'")
    backend.status = 503
    assert await check(http(url)) == (False, "HTTP 503")
    assert await check(http(url, expect_status=(200, 503))) == (True, "")
    backend.status, backend.body = 200, json.dumps({"db": {"state": "up"}})
    assert await check(http(url, json_field="db.state", json_equals="up")) == (True, "")
    assert await check(http(url, json_field="db.state", json_equals="down")) == (
        False,
        "JSON field 'db.state' is 'up', not 'down'",
    )
    assert await check(http(url, json_field="db.x")) == (False, "JSON field 'db.x' missing")


async def test_http_hanging_endpoint_times_out(backend: Backend) -> None:
    backend.delay = 0.6
    started = time.monotonic()
    assert await check(http(backend.url + "/healthz", timeout=0.2)) == (
        False,
        "timed out after 0.2s",
    )
    assert time.monotonic() - started < 1


async def test_probe_own_failures_are_results(unused_tcp_port: int) -> None:
    ok, detail = await check(http(f"http://127.0.0.1:{unused_tcp_port}/"))
    assert not ok and "ClientConnectorError" in detail
    ok, detail = await check(http("http://no-such-host.invalid/", timeout=3))
    assert not ok and detail
    ok, detail = await check(http("not a url"))
    assert not ok and detail


async def test_tcp_probe(backend: Backend, unused_tcp_port_factory: object) -> None:
    port = int(backend.url.rsplit(":", 1)[1])
    assert await check(ProbeSpec("t", "tcp", host="127.0.0.1", port=port)) == (True, "")
    closed = ProbeSpec("t", "tcp", host="127.0.0.1", port=1)
    ok, detail = await check(closed)
    assert not ok and "ConnectionRefusedError" in detail


async def test_exec_probe_exit_codes_and_timeout() -> None:
    code = "import sys; print('degraded'); sys.exit(2)"
    assert await check(ProbeSpec("e", "exec", argv=(sys.executable, "-c", code))) == (
        False,
        "exit 2: degraded",
    )
    spec = ProbeSpec("e", "exec", argv=(sys.executable, "-c", code), expect_exit=(0, 2))
    assert await check(spec) == (True, "")
    slow = ProbeSpec("e", "exec", argv=("sleep", "10"), timeout=0.2)
    assert await check(slow) == (False, "timed out after 0.2s")
    missing = ProbeSpec("e", "exec", argv=("/nonexistent",))
    ok, detail = await check(missing)
    assert not ok and "FileNotFoundError" in detail


async def test_jsonrpc_get_health(backend: Backend) -> None:
    spec = ProbeSpec("r", "jsonrpc", url=backend.url + "/rpc", rpc_method="getHealth")
    assert await check(spec) == (True, "")
    field_spec = ProbeSpec(
        "r",
        "jsonrpc",
        url=backend.url + "/rpc",
        rpc_method="getHealth",
        json_field="status",
        json_equals="healthy",
    )
    assert await check(field_spec) == (True, "")
    backend.rpc = {"error": {"code": -32000, "message": "node is behind"}}
    ok, detail = await check(spec)
    assert not ok and "node is behind" in detail


async def test_jsonrpc_result_goes_with_the_answer_bounded(backend: Backend) -> None:
    url = backend.url + "/rpc"
    spec = ProbeSpec("r", "jsonrpc", url=url, rpc_method="eth_getBalance", rpc_params='["0xab", 1]')
    backend.rpc = {"result": {"currentBlock": "0x1", "peers": [1, None]}}
    assert await answer(spec) == (True, "", '{"currentBlock":"0x1","peers":[1,null]}')
    assert backend.calls[-1] == {"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance",
                                 "params": ["0xab", 1]}  # fmt: skip
    backend.rpc = {"result": False}
    assert await answer(spec) == (True, "", "false")
    deep: object = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    for result in (deep, "x" * MAX_RESULT):  # answered, but not kept for the phases
        backend.rpc = {"result": result}
        assert await answer(spec) == (True, "", "")
    backend.rpc = {"raw": '{"result": ' + "[" * 100_000 + "]" * 100_000 + "}"}
    ok, detail, result = await answer(spec)  # too deep for the parser: a failure, not a crash
    assert (ok, result) == (False, "") and "RecursionError" in detail
    backend.rpc = {"error": {"code": -32601, "message": "no such method"}}
    assert (await answer(spec))[::2] == (False, "")


async def test_scheduler_keeps_its_grid_and_a_slow_probe_delays_no_other(
    backend: Backend,
) -> None:
    arrived: list[tuple[float, str]] = []  # (monotonic time, probe) as each result comes in

    def submit(inp: Input) -> None:
        assert isinstance(inp, ProbeResult)
        arrived.append((time.monotonic(), inp.probe))

    def times(name: str) -> list[float]:
        return [at for at, probe in arrived if probe == name]

    prober = Prober(submit)
    fast = http(backend.url + "/healthz", interval=0.1)
    slow = ProbeSpec(
        "slow",
        "exec",
        argv=("sleep", "0.45"),
        interval=0.1,
        timeout=1,
    )
    prober.configure([ProbeSpec(**{**fast.__dict__, "name": "fast"}), slow])
    task = asyncio.create_task(prober.run())
    await wait_until_async(lambda: len(times("slow")) >= 3, 30, "three slow results")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Not piled up: a run starts only after the previous one reported, and each takes 0.45s
    # (rounds due meanwhile are skipped), so results are at least that far apart.
    slow_at = times("slow")
    assert all(b - a >= 0.45 for a, b in itertools.pairwise(slow_at)), slow_at
    # The fast probe kept its grid meanwhile: about one result per 0.1s, never more.
    span = slow_at[-1] - slow_at[0]
    fast_in_span = [t for t in times("fast") if slow_at[0] < t <= slow_at[-1]]
    assert span / 0.1 - 3 <= len(fast_in_span) <= span / 0.1 + 1, (span, len(fast_in_span))
    late = sorted(prober.lateness)
    assert late[int(len(late) * 0.9)] < 0.05


async def test_http_reads_the_body_to_its_end_within_max_body(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = backend.url + "/pieces"
    backend.body = "x" * 40_000 + "needle"  # ten pieces: the match is in the last
    assert await check(http(url, body_contains="needle")) == (True, "")
    backend.body = json.dumps({"pad": "x" * 40_000, "state": "up"})
    assert await check(http(url, json_field="state", json_equals="up")) == (True, "")
    monkeypatch.setattr(probes, "MAX_BODY", 10_000)  # what a check reads is bounded
    backend.body = "x" * 20_000 + "needle"
    assert await check(http(url, body_contains="needle")) == (False, "body lacks 'needle'")
    backend.body = "needle" + "x" * 20_000
    assert await check(http(url, body_contains="needle")) == (True, "")


async def run_until(prober: Prober, results: list[ProbeResult], count: int) -> None:
    """Run `prober` until `count` results came in, then cancel it."""
    task = asyncio.create_task(prober.run())
    await wait_until_async(lambda: len(results) >= count, 30, f"{count} probe results")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def collector() -> tuple[list[ProbeResult], Callable[[Input], None]]:
    results: list[ProbeResult] = []

    def submit(inp: Input) -> None:
        assert isinstance(inp, ProbeResult)
        results.append(inp)

    return results, submit


async def test_connections_are_kept_alive_and_no_cookie_is_kept(backend: Backend) -> None:
    """The explicit choice (probes.KEEPALIVE): one connection for every round of a probe; a
    cookie the server sets goes with no later check (by name, not IP: a jar would keep it)."""
    results, submit = collector()
    prober = Prober(submit)
    port = backend.url.rsplit(":", 1)[1]
    prober.configure([http(f"http://localhost:{port}/healthz", interval=0.05)])
    await run_until(prober, results, 4)
    assert all(r.ok for r in results), results
    assert len(set(backend.peers)) == 1, backend.peers
    assert backend.cookies == [""] * len(backend.cookies)


@pytest.mark.parametrize("backend", [0.02], indirect=True)
async def test_a_connection_the_server_closed_is_not_a_failure(backend: Backend) -> None:
    """The server closes idle connections after 20 ms, the probe runs every 100 ms: each
    check finds its kept connection closed and connects again."""
    results, submit = collector()
    prober = Prober(submit)
    prober.configure([http(backend.url + "/healthz", interval=0.1)])
    await run_until(prober, results, 4)
    assert all(r.ok for r in results), results
    assert len(set(backend.peers)) == len(backend.peers), backend.peers


async def test_a_server_gone_fails_its_probe_though_its_connection_was_kept(
    unused_tcp_port: int,
) -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    results, submit = collector()
    prober = Prober(submit)
    prober.configure([http(f"http://127.0.0.1:{unused_tcp_port}/healthz", interval=0.05)])
    task = asyncio.create_task(prober.run())
    await wait_until_async(lambda: len(results) >= 2, 30, "two results")
    await runner.cleanup()
    seen = len(results)
    await wait_until_async(lambda: len(results) >= seen + 2, 30, "two more results")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert results[0].ok and not results[-1].ok, results
    assert "ClientConnectorError" in results[-1].detail


def test_first_runs_start_batch_by_batch_within_one_interval() -> None:
    now = 1234.567
    specs = [ProbeSpec(f"p{i}", "http", interval=1.0) for i in range(100)]
    dues = [_first_due(s, now, len(specs)) for s in specs]
    assert all(now <= d < now + 1.0 for d in dues)
    slots = sorted(set(dues))  # ten slots for a hundred probes, about BATCH in each
    assert len(slots) <= 100 // BATCH
    assert all(abs(d * 10 - round(d * 10)) < 1e-6 for d in slots)  # on a 0.1 s grid
    assert max(dues.count(d) for d in slots) <= 3 * BATCH
    # the same slot however late a probe is (re)configured: probes that share an interval
    # share wakeups
    later = [_first_due(s, now + 7.3, len(specs)) for s in specs]
    assert all(abs(b - a - round(b - a)) < 1e-6 for a, b in zip(dues, later, strict=True))
    alone = _first_due(specs[0], now, 1)
    assert alone == 1235.0  # a single probe: on the next whole interval


async def test_configure_keeps_unchanged_schedules_and_stops_removed_probes(
    backend: Backend,
) -> None:
    results, submit = collector()
    prober = Prober(submit)
    url = backend.url + "/healthz"
    task = asyncio.create_task(prober.run())
    await asyncio.sleep(0)  # running, nothing configured: nothing to wait for
    assert prober._timer is None
    a, b = ProbeSpec("a", "http", url=url, interval=0.1), ProbeSpec("b", "http", url=url)
    prober.configure([a, b])  # while running: the timer is set for the earliest
    await wait_until_async(lambda: any(r.probe == "a" for r in results), 30, "a result of a")
    due_b = dict((n, d) for d, n in prober._queue)["b"]
    prober.configure([ProbeSpec("b", "http", url=url)])  # a removed, b unchanged
    assert [(d, n) for d, n in prober._queue] == [(due_b, "b")]
    seen = len(results)
    await wait_until_async(lambda: prober._timer is not None, 5, "the timer set")
    assert prober._timer is not None and prober._timer.when() == due_b
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert prober._timer is None
    assert all(r.probe == "a" for r in results[:seen])
    assert len([r for r in results if r.probe == "a"]) <= seen + 1  # at most one in flight
