"""Interfaces: The live status page on the agent's HTTP endpoint, and its JSON API.

GET  /                    the page (HTML, CSS and JS shipped in the package: no CDN)
GET  /api/v1/page         what the page shows, as JSON
GET  /api/v1/events       the same as server-sent events, one per committed change
POST /api/v1/commands     an operator command: {"command": "maintenance_on", "service": "web"}

Read-only unless the agent runs with operator actions on; then a command needs the token
(`Authorization: Bearer TOKEN`, compared in constant time). A cross-site form can send neither
that header nor JSON, and a request whose Origin is not the page's own is refused, so another
site cannot act through an operator's browser. Refused commands change nothing (401/403/400);
accepted ones are journaled as operator commands with who asked. The token is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from agent.core.commands import parse
from agent.core.inputs import Input, OperatorCommand
from agent.core.state import State
from agent.errors import JournalError
from agent.interfaces.views import UnitLogsOf, status_dict
from agent.journal.reports import HistoryRow, local_iso, story

log = logging.getLogger("setpoint.page")
ASSETS = {"page.css": "text/css", "page.js": "text/javascript"}
SPACING = 0.2
"""Least time between two events of one stream: a burst of commits is one update."""
KEEPALIVE = 15.0
RECENT = 25
_OPERATOR = re.compile(r"[\w.@-]{1,40}")
CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"


@dataclass(frozen=True)
class Page:
    """What the page needs from the agent."""

    state: Callable[[], State]
    clock: Callable[[], float]
    submit: Callable[[Input], None]
    recent: Callable[[], Awaitable[list[HistoryRow]]]
    token: str = ""
    """Operator actions are on when this is not empty."""
    live: Live | None = None
    latency: Callable[[str], float | None] = lambda _probe: None
    """A probe's latest latency in seconds (Metrics.probes.last.get)."""
    journal: Callable[[], dict[str, object]] = lambda: {"degraded": False}
    """The journal's health (agent.runtime.degraded.health)."""
    logs: UnitLogsOf | None = None
    """The unit log lines a firing alert was sent with."""


class Live:
    """Wakes the event streams when the committed state changes (the runtime's `on_commit`)."""

    def __init__(self) -> None:
        self.version = 0
        self.closed = False
        self._changed = asyncio.Event()

    def on_commit(self, _state: State) -> None:
        """A new state was committed: wake every waiter (each holds the event it waits on)."""
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        """End every stream (the endpoint is shutting down)."""
        self.closed = True
        self.on_commit(State())

    async def wait(self, seen: int, timeout: float) -> None:
        """Until the version moves past `seen`, or `timeout`."""
        if self.version != seen:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()


def add_routes(application: web.Application, page: Page) -> None:
    """The page, its assets, its JSON, its event stream and the command endpoint."""
    text = TEXTS
    live = page.live or Live()
    application.on_shutdown.append(lambda _app: _close(live))

    async def index(_request: web.Request) -> web.Response:
        return web.Response(text=text["index.html"], content_type="text/html", headers=_SAFE)

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound(text=f"no asset {name!r}")
        return web.Response(text=text[name], content_type=ASSETS[name], headers=_SAFE)

    async def view(_request: web.Request) -> web.Response:
        return web.json_response(await page_view(page))

    async def events(request: web.Request) -> web.StreamResponse:
        return await _stream(request, page, live)

    async def command(request: web.Request) -> web.Response:
        return _command(request, page, await request.read())

    application.router.add_get("/", index)
    application.router.add_get("/static/{name}", asset)
    application.router.add_get("/api/v1/page", view)
    application.router.add_get("/api/v1/events", events)
    application.router.add_post("/api/v1/commands", command)


_SAFE = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}


async def _close(live: Live) -> None:
    live.close()


def _asset(name: str) -> str:
    return resources.files("agent.interfaces").joinpath("static", name).read_text("utf-8")


TEXTS = {name: _asset(name) for name in ("index.html", *ASSETS)}
"""Read once, at import (before the event loop runs): a few kilobytes."""


async def _stream(request: web.Request, page: Page, live: Live) -> web.StreamResponse:
    """Server-sent events: the page view now, then again after each change."""
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    last = ""
    while not live.closed:
        seen = live.version
        data = json.dumps(await page_view(page), separators=(",", ":"))
        if data != last:
            await resp.write(f"data: {data}\n\n".encode())
            last = data
        else:
            await resp.write(b": idle\n\n")
        await live.wait(seen, KEEPALIVE)
        await asyncio.sleep(SPACING)
    return resp


def _command(request: web.Request, page: Page, body: bytes) -> web.Response:
    """Check everything before anything is submitted: a refusal changes nothing."""
    if not page.token:
        return _refuse(403, "operator actions are off (setpoint run --page-actions)")
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return _refuse(403, f"cross-site request from {origin} refused")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
    if not hmac.compare_digest(given, page.token.encode()):
        return _refuse(401, "a valid token is needed (Authorization: Bearer TOKEN)")
    if request.content_type != "application/json":
        return _refuse(415, "the body must be application/json")
    try:
        name, service = parse(body, set(page.state().services.keys()))
    except ValueError as err:
        return _refuse(400, str(err))
    who = request.headers.get("X-Setpoint-Operator", "")
    if who and not _OPERATOR.fullmatch(who):
        return _refuse(400, "X-Setpoint-Operator: 1 to 40 letters, digits, '.', '@' or '-'")
    by = f"{who or 'token holder'} via http from {request.remote or 'unknown'}"
    page.submit(OperatorCommand(name, page.clock(), service, by))
    log.info("operator command %s %s accepted from %s", name, service, by)
    return web.json_response({"accepted": name, "service": service, "by": by}, status=202)


def _refuse(status: int, why: str) -> web.Response:
    return web.json_response({"error": why}, status=status)


async def page_view(page: Page) -> dict[str, Any]:
    """Everything the page shows, JSON-ready."""
    state, now = page.state(), page.clock()
    view = status_dict(state, now, page.logs)
    view["now"] = now
    view["time"] = local_iso(now)
    view["actions"] = bool(page.token)
    view["journal"] = page.journal()
    for name, svc in view["services"].items():
        svc["probes"] = _probes(state, name, page.latency)
    for name, dom in view["domains"].items():
        spec = state.index.domains.get(name)
        dom["goal"] = spec.goal if spec is not None else ""
    rows = await _recent(page)
    view["history"] = [{"time": local_iso(r.at), "text": t} for r, t in rows[:RECENT]]
    for name, dom in view["domains"].items():
        done = [(r, t) for r, t in rows if f"[{name}] transition" in t]
        dom["transitions"] = [{"time": local_iso(r.at), "text": t} for r, t in done[:3]]
    return view


def _probes(
    state: State, service: str, latency: Callable[[str], float | None]
) -> list[dict[str, Any]]:
    spec = state.index.services.get(service)
    found = []
    for name in spec.probes if spec is not None else ():
        probe = state.probes.get(name)
        last = latency(name)
        if probe is not None:
            found.append(
                {
                    "name": name,
                    "healthy": probe.healthy,
                    "latency_ms": None if last is None else round(last * 1000, 1),
                    "over_budget": probe.over_budget,
                }
            )
    return found


async def _recent(page: Page) -> list[tuple[HistoryRow, str]]:
    """Recent entries worth telling, newest first, each with its story."""
    try:
        rows = await page.recent()
    except JournalError as err:
        log.warning("status page: the journal cannot be read: %s", err)
        return []
    told = ((row, story(row)) for row in rows)
    return [(row, text) for row, text in told if text]
