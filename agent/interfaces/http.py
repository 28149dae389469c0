"""Interfaces: The agent's own HTTP endpoint (aiohttp), bound to localhost unless configured
otherwise.

GET /metrics         Prometheus text format
GET /healthz         the agent's liveness: 200 while the loop commits, 503 when stuck
GET /api/v1/status   read-only JSON of services, domains and pending actions
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from agent.core.state import State
from agent.interfaces.metrics import Metrics
from agent.interfaces.views import UnitLogsOf, status_dict


def app(
    metrics: Metrics,
    state: Callable[[], State],
    alive: Callable[[], bool],
    clock: Callable[[], float] = time.time,
    logs: UnitLogsOf | None = None,
) -> web.Application:
    """The endpoint's routes; only GET is served, everything else is 405."""

    async def get_metrics(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def get_health(_request: web.Request) -> web.Response:
        ok = alive()
        return web.json_response({"status": "ok" if ok else "stuck"}, status=200 if ok else 503)

    async def get_status(_request: web.Request) -> web.Response:
        return web.json_response(status_dict(state(), clock(), logs))

    application = web.Application(client_max_size=1024)
    application.router.add_get("/metrics", get_metrics)
    application.router.add_get("/healthz", get_health)
    application.router.add_get("/api/v1/status", get_status)
    return application


async def serve(application: web.Application, host: str, port: int) -> web.AppRunner:
    """Start listening; the caller cleans the runner up."""
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
