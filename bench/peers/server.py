"""The target of every checker: answers GET /<anything> with 200 (paths under /flap/: 200 and
503 in turn, so a probe with failures: 1 changes health on every result) and records when each
path was asked (CLOCK_MONOTONIC, which every process on the host shares).

GET /_arrivals?prefix=P&since=T0&until=T1 returns {path: [arrival, ...]} for paths under P;
GET /_seen?prefix=P returns how many distinct paths under P were asked so far.
Run as `python -m bench.peers.server PORT`.
"""

from __future__ import annotations

import sys
import time

from aiohttp import web

ARRIVALS: dict[str, list[float]] = {}


async def hit(request: web.Request) -> web.Response:
    times = ARRIVALS.setdefault(request.path, [])
    times.append(time.monotonic())
    if request.path.startswith("/flap/") and len(times) % 2 == 0:
        return web.Response(status=503, text="down")
    return web.Response(text="ok")


async def arrivals(request: web.Request) -> web.Response:
    prefix = request.query["prefix"]
    since, until = float(request.query["since"]), float(request.query["until"])
    found = {
        path: [t for t in times if since <= t <= until]
        for path, times in ARRIVALS.items()
        if path.startswith(prefix)
    }
    return web.json_response(found)


async def seen(request: web.Request) -> web.Response:
    prefix = request.query["prefix"]
    return web.json_response(sum(1 for path in ARRIVALS if path.startswith(prefix)))


def main() -> None:
    app = web.Application()
    app.router.add_get("/_arrivals", arrivals)
    app.router.add_get("/_seen", seen)
    app.router.add_get("/{tail:.*}", hit)
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, backlog=4096
    )


if __name__ == "__main__":
    main()
