"""The target of every checker: answers GET /<anything> with 200 (paths under /flap/: 200 and
503 in turn, so a probe with failures: 1 changes health on every result) and records when each
path was asked (CLOCK_MONOTONIC, which every process on the host shares).

GET /_arrivals?prefix=P&since=T0&until=T1 returns {path: [arrival, ...]} for paths under P;
GET /_seen?prefix=P returns how many distinct paths under P were asked so far.
Run as `python -m bench.peers.server PORT`.

A bare asyncio protocol rather than a web framework: the server shares the two cores with the
checkers it serves, so the less CPU it takes per request, the less it disturbs their figures.
It understands what checkers send: GET without a body, keep-alive unless `Connection: close`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import parse_qs, urlsplit

ARRIVALS: dict[str, list[float]] = {}
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
DOWN = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\ndown"
)


class Target(asyncio.Protocol):
    """One connection: answer each complete request head in the buffer."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer and self.transport is not None:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
            self.transport.write(answer(target))
            if b"\r\nconnection: close" in head.lower():
                self.transport.close()
                return


def answer(target: str) -> bytes:
    url = urlsplit(target)
    if url.path in ("/_arrivals", "/_seen"):
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        body = json.dumps(report(url.path, query)).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        return head.encode() + b"\r\n\r\n" + body
    times = ARRIVALS.setdefault(url.path, [])
    times.append(time.monotonic())
    return DOWN if url.path.startswith("/flap/") and len(times) % 2 == 0 else OK


def report(path: str, query: dict[str, str]) -> object:
    prefix = query["prefix"]
    if path == "/_seen":
        return sum(1 for p in ARRIVALS if p.startswith(prefix))
    since, until = float(query["since"]), float(query["until"])
    return {
        p: [t for t in times if since <= t <= until]
        for p, times in ARRIVALS.items()
        if p.startswith(prefix)
    }


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Target, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
