"""A ClusterLink in its own process (inside a namespace host), driven over stdin/stdout.

The process (`python -m tests.e2e.linkdriver ...`) prints one JSON line per view change
(`{"ev": "view", "t": <CLOCK_MONOTONIC>, ...}`; the clock is shared by every namespace, so
times compare across hosts) and answers JSON commands read from stdin:

    {"id": 1, "op": "fenced_put", "key": k, "value": v, "term": "current" | "last"}
    {"id": 2, "op": "get", "key": k}
    {"id": 3, "op": "publish", "name": n, "value": v}

`"term": "last"` writes with the last term this node held, even after it lost it (a deposed
leader's late write). The link runs under the blocking-call detector.

`LinkProcess` is the test side: start, wait for a view (event-driven), call, kill.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.netns import Hosts

ROOT = Path(__file__).resolve().parents[2]

View = dict[str, Any]


# -- the driver process ------------------------------------------------------------------------


async def _drive(args: argparse.Namespace) -> None:
    from blockbuster import blockbuster_ctx

    from agent.adapters.cluster import ClusterConfig, ClusterLink, ClusterView, Term
    from agent.errors import SetpointError

    out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    last_term: list[Term] = []

    def on_change(view: ClusterView) -> None:
        if view.term is not None:
            last_term[:] = [view.term]
        out.put_nowait({
            "ev": "view", "t": time.monotonic(), "node": view.node, "healthy": view.healthy,
            "leader": view.leader, "fence": view.fence, "members": list(view.members),
            "facts": {n: dict(f) for n, f in view.facts.items()},
            "digests": dict(view.digests), "valid": link.lease_valid(),
        })  # fmt: skip

    async def writer() -> None:
        while True:
            line = json.dumps(await out.get())
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    async def serve(cmd: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"ev": "reply", "id": cmd["id"], "t": time.monotonic()}
        try:
            if cmd["op"] == "fenced_put":
                stale = cmd.get("term") == "last"
                term = last_term[0] if stale and last_term else None
                reply["ok"] = await link.fenced_put(cmd["key"], cmd["value"], term=term)
            elif cmd["op"] == "get":
                reply["value"] = await link.get(cmd["key"])
            elif cmd["op"] == "publish":
                link.publish(cmd["name"], cmd["value"])
                reply["ok"] = True
        except SetpointError as err:
            reply["error"] = f"{type(err).__name__}: {err}"
        out.put_nowait(reply)

    config = ClusterConfig(tuple(args.endpoint), args.cluster, args.node, ttl=args.ttl)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    with blockbuster_ctx("agent"):
        async with asyncio.TaskGroup() as tasks, ClusterLink(config, on_change=on_change) as link:
            started = [tasks.create_task(writer(), name="writer")]
            for fact in args.fact:
                name, _, value = fact.partition("=")
                link.publish(name, value)
            if args.digest:
                link.publish_digest(args.digest)
            stopping = asyncio.ensure_future(stop.wait())
            while True:
                reading = asyncio.ensure_future(stdin.readline())
                await asyncio.wait((reading, stopping), return_when=asyncio.FIRST_COMPLETED)
                if not reading.done() or not (line := reading.result()):
                    reading.cancel()
                    break
                started.append(tasks.create_task(serve(json.loads(line)), name="command"))
            stopping.cancel()
            for task in started:
                task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--fact", action="append", default=[], help="name=value to publish")
    parser.add_argument("--digest", help="this node's goal digest to publish")
    parser.add_argument("endpoint", nargs="+")
    asyncio.run(_drive(parser.parse_args()))


# -- the test side -----------------------------------------------------------------------------


@dataclass
class LinkProcess:
    """A linkdriver on host `node` of `net`; views and replies arrive as the process prints."""

    net: Hosts
    node: str
    endpoints: list[str]
    cluster: str
    logdir: Path
    ttl: int = 2
    facts: dict[str, str] = field(default_factory=dict)
    digest: str = ""
    views: list[View] = field(default_factory=list)
    started: float = 0.0
    _proc: asyncio.subprocess.Process | None = None
    _reader: asyncio.Task[None] | None = None
    _news: asyncio.Event = field(default_factory=asyncio.Event)
    _replies: dict[int, asyncio.Future[View]] = field(default_factory=dict)
    _ids: int = 0

    @property
    def view(self) -> View:
        return self.views[-1] if self.views else {}

    @property
    def log(self) -> Path:
        return self.logdir / f"link-{self.cluster}-{self.node}.log"

    async def start(self) -> None:
        argv = [sys.executable, "-m", "tests.e2e.linkdriver", "--cluster", self.cluster,
                "--node", self.node, "--ttl", str(self.ttl)]  # fmt: skip
        argv += [f"--fact={k}={v}" for k, v in self.facts.items()]
        argv += [f"--digest={self.digest}"] if self.digest else []
        argv += self.endpoints
        self.views.clear()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as err:
            self.started = time.monotonic()
            self._proc = await asyncio.create_subprocess_exec(
                *self.net.argv(self.node, argv), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=err, cwd=ROOT, env=env,
                start_new_session=True,
            )  # fmt: skip
        self._reader = asyncio.create_task(self._read(), name=f"read-{self.node}")

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for line in self._proc.stdout:
            msg: View = json.loads(line)
            if msg["ev"] == "view":
                self.views.append(msg)
            elif msg["ev"] == "reply":
                future = self._replies.pop(msg["id"], None)
                if future is not None and not future.done():
                    future.set_result(msg)
            news, self._news = self._news, asyncio.Event()
            news.set()
        news, self._news = self._news, asyncio.Event()
        news.set()

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    async def wait(
        self,
        predicate: Callable[[View], object],
        timeout: float,
        what: str,
        *,
        since: float | None = None,
    ) -> View:
        """The first view that satisfies `predicate`, from the current one on or, with
        `since`, from the first view printed at or after that monotonic time."""
        seen = max(0, len(self.views) - 1)
        if since is not None:
            seen = next((i for i, v in enumerate(self.views) if v["t"] >= since), len(self.views))
        try:
            async with asyncio.timeout(timeout):
                while True:
                    news = self._news
                    for view in self.views[seen:]:
                        if predicate(view):
                            return view
                    seen = len(self.views)
                    if self._proc is not None and self._proc.returncode is not None:
                        raise AssertionError(f"{self.node}: driver exited:\n{self._tail()}")
                    await news.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.node}: no view with {what} in {timeout}s; last: {self.view}\n{self._tail()}"
            ) from None

    async def call(self, op: str, timeout: float = 10.0, **args: Any) -> View:
        assert self._proc is not None and self._proc.stdin is not None
        self._ids += 1
        future: asyncio.Future[View] = asyncio.get_running_loop().create_future()
        self._replies[self._ids] = future
        self._proc.stdin.write(json.dumps({"id": self._ids, "op": op, **args}).encode() + b"\n")
        await self._proc.stdin.drain()
        async with asyncio.timeout(timeout):
            return await future

    def kill(self) -> float:
        """SIGKILL the driver (no lease revoke): the monotonic time it was sent."""
        assert self._proc is not None
        now = time.monotonic()
        self._proc.kill()
        return now

    async def stop(self) -> None:
        """SIGTERM (the link revokes its lease) and wait; SIGKILL after 5 s."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._proc = None


if __name__ == "__main__":
    main()
