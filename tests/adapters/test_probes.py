"""Probes against real local servers whose status, body and latency the test controls."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from agent.adapters.probes import MAX_DEPTH, MAX_RESULT, Prober, answer, check
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

    async def health(self, request: web.Request) -> web.Response:
        self.hits += 1
        await asyncio.sleep(self.delay)
        return web.Response(status=self.status, text=self.body)

    async def jsonrpc(self, request: web.Request) -> web.Response:
        call = await request.json()
        self.calls.append(call)
        if "raw" in self.rpc:
            return web.Response(text=str(self.rpc["raw"]), content_type="application/json")
        return web.json_response({"jsonrpc": "2.0", "id": call["id"], **self.rpc})


@pytest.fixture
async def backend(unused_tcp_port: int) -> AsyncIterator[Backend]:
    state = Backend()
    app = web.Application()
    app.router.add_get("/healthz", state.health)
    app.router.add_post("/rpc", state.jsonrpc)
    runner = web.AppRunner(app)
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
