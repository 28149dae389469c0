"""The status page's endpoint: assets, the view, server-sent events, and the operator command
gate (token, origin, content type) in front of a real journal."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.core.actions import Log
from agent.core.inputs import Input, OperatorCommand, ProbeResult
from agent.core.state import State
from agent.core.step import step
from agent.interfaces import http as httpapi
from agent.interfaces.metrics import Metrics
from agent.interfaces.page import CSP, Live, Page, add_routes, page_view
from agent.journal.reports import HistoryRow, story
from agent.journal.store import Entry, Journal
from agent.runtime.degraded import Gap, health
from tests.interfaces.test_metrics import sample_state

TOKEN = "s3cret-token-value"


class Agent:
    """The page's view of an agent: a state the test moves, a real journal, a mailbox."""

    def __init__(self, journal: Journal) -> None:
        self.state = sample_state()
        self.journal = journal
        self.submitted: list[Input] = []
        self.live = Live()
        self.metrics = Metrics(lambda: self.state)
        self.metrics.observe_probe(ProbeResult("hz", True, 0.02, 3.0))

    def page(self, token: str = "") -> Page:
        async def recent() -> list[HistoryRow]:
            return await self.journal.history(limit=50)

        return Page(lambda: self.state, lambda: 100.0, self.submitted.append, recent, token,
                    self.live, self.metrics.probes.last.get)  # fmt: skip

    async def feed(self, inp: Input) -> None:
        if isinstance(inp, ProbeResult):
            self.metrics.observe_probe(inp)
        self.state, actions = step(self.state, inp)
        await self.journal.commit([Entry(100.0, inp, actions)], self.state)
        self.live.on_commit(self.state)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    journal = await Journal.open(tmp_path)
    try:
        yield Agent(journal)
    finally:
        await journal.close()


def client(agent: Agent, token: str = "") -> TestClient:  # type: ignore[type-arg]
    state = State()
    api = httpapi.app(Metrics(lambda: state), lambda: agent.state, lambda: True, lambda: 100.0)
    add_routes(api, agent.page(token))
    return TestClient(TestServer(api))


async def test_page_and_assets_come_from_the_package_with_a_strict_policy(agent: Agent) -> None:
    async with client(agent) as c:
        page = await c.get("/")
        assert page.status == 200 and page.headers["Content-Security-Policy"] == CSP
        html = await page.text()
        assert '<script src="/static/page.js"' in html and "http" not in html.split("<body>")[0]
        js = await c.get("/static/page.js")
        assert js.status == 200 and "EventSource" in await js.text()
        assert (await c.get("/static/secrets.txt")).status == 404


async def test_view_shows_services_probes_domains_and_history_in_words(agent: Agent) -> None:
    await agent.feed(OperatorCommand("maintenance_on", 99.0, "web", "alice via http"))
    async with client(agent) as c:
        view = await (await c.get("/api/v1/page")).json()
    web = view["services"]["web"]
    assert web["lifecycle"] == "Running" and web["probes"][0]["latency_ms"] == 20.0
    assert view["domains"]["DatabaseRouting"]["goal"].startswith("(primary_status")
    assert view["history"][0]["text"].startswith("operator by alice via http: maintenance on")
    assert view["actions"] is False


async def test_view_says_when_the_journal_cannot_write(agent: Agent) -> None:
    gap = Gap(40.0, "database or disk is full", inputs=7)
    page = replace(agent.page(), journal=lambda: health(gap, 100.0))
    view = await page_view(page)
    assert view["journal"] == {
        "degraded": True, "for_seconds": 60.0, "error": "database or disk is full",
        "unrecorded_inputs": 7, "held_effects": 0, "done": [],
    }  # fmt: skip
    assert (await page_view(agent.page()))["journal"] == {"degraded": False}


async def test_events_stream_a_new_view_after_each_change(agent: Agent) -> None:
    async with client(agent) as c, c.get("/api/v1/events") as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        first = await _event(resp)
        assert first["services"]["web"]["probes"][0]["latency_ms"] == 20.0
        await agent.feed(ProbeResult("hz", True, 0.25, 101.0))
        second = await _event(resp)
        assert second["services"]["web"]["probes"][0]["latency_ms"] == 250.0
        assert "probe hz" not in json.dumps(second["history"])  # no verdict moved: no story


async def _event(resp: object) -> dict:  # type: ignore[type-arg]
    content = resp.content  # type: ignore[attr-defined]
    while True:
        line = (await content.readline()).decode()
        if line.startswith("data: "):
            return json.loads(line[6:])  # type: ignore[no-any-return]


COMMAND = {"command": "maintenance_on", "service": "web"}


@pytest.mark.parametrize(
    ("token", "headers", "status", "why"),
    [
        ("", {"Authorization": f"Bearer {TOKEN}"}, 403, "operator actions are off"),
        (TOKEN, {}, 401, "a valid token is needed"),
        (TOKEN, {"Authorization": "Bearer wrong"}, 401, "a valid token is needed"),
        (TOKEN, {"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"}, 403,
         "cross-site request from http://evil.example refused"),
        (TOKEN, {"Authorization": f"Bearer {TOKEN}", "X-Setpoint-Operator": "<b>"}, 400,
         "X-Setpoint-Operator"),
    ],
)  # fmt: skip
async def test_refused_commands_change_nothing(
    agent: Agent, token: str, headers: dict[str, str], status: int, why: str
) -> None:
    async with client(agent, token) as c:
        resp = await c.post("/api/v1/commands", json=COMMAND, headers=headers)
        assert resp.status == status
        assert why in (await resp.json())["error"]
    assert agent.submitted == []


async def test_a_cross_site_form_is_refused_even_with_the_token(agent: Agent) -> None:
    async with client(agent, TOKEN) as c:
        resp = await c.post("/api/v1/commands", data={"command": "resync"},
                            headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert resp.status == 415
        bad = await c.post("/api/v1/commands", json={"command": "explode"},
                           headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert bad.status == 400 and "command must be one of" in (await bad.json())["error"]
    assert agent.submitted == []


async def test_a_command_with_the_token_is_submitted_with_who_asked(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with client(agent, TOKEN) as c:
        origin = f"http://{c.server.host}:{c.server.port}"
        headers = {"Authorization": f"Bearer {TOKEN}", "X-Setpoint-Operator": "alice",
                   "Origin": origin}  # fmt: skip
        resp = await c.post("/api/v1/commands", json=COMMAND, headers=headers)
        assert resp.status == 202, await resp.text()
    [cmd] = agent.submitted
    assert isinstance(cmd, OperatorCommand)
    assert (cmd.command, cmd.target, cmd.at) == ("maintenance_on", "web", 100.0)
    assert cmd.by == "alice via http from 127.0.0.1"
    assert TOKEN not in caplog.text and "alice" in caplog.text


def test_a_log_only_entry_tells_its_story() -> None:
    row = HistoryRow(
        1, 1.0, ProbeResult("hz", False, 0.5, 1.0), (Log("warning", "down", "hz"),), ()
    )
    assert story(row) == "[hz] down"
