"""Interfaces: Operator commands to a running agent over a UNIX socket in its state directory.

The socket is created mode 0600, so only the agent's own user (and root) may send commands;
the journal lock guarantees one agent per directory, so a leftover socket is safe to replace.

    POST /v1/commands  {"command": "maintenance_on", "service": "web"}   -> 202
    GET  /v1/status    the live state (`setpoint status` asks here first: the journal may lag
                       behind, e.g. while it cannot write)
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from agent.core.commands import parse
from agent.core.inputs import Input, OperatorCommand
from agent.errors import SetpointError

SOCKET = "control.sock"


def app(
    submit: Callable[[Input], None],
    services: Callable[[], set[str]],
    clock: Callable[[], float],
    status: Callable[[], dict[str, Any]] | None = None,
) -> web.Application:
    """The command endpoint (a bad request changes nothing and says why) and the live status."""

    async def post(request: web.Request) -> web.Response:
        try:
            command, service = parse(await request.read(), services())
        except ValueError as err:
            return web.json_response({"error": str(err)}, status=400)
        submit(OperatorCommand(command, clock(), service, asker(request)))
        return web.json_response({"accepted": command, "service": service}, status=202)

    async def get(_request: web.Request) -> web.Response:
        return web.json_response(status() if status is not None else {})

    application = web.Application(client_max_size=4096)
    application.router.add_post("/v1/commands", post)
    application.router.add_get("/v1/status", get)
    return application


def asker(request: web.Request) -> str:
    """Who sent a command over the socket, by the kernel's word (SO_PEERCRED): `uid 0 pid 42`."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        return "control socket"
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return "control socket"
    pid, uid, _gid = struct.unpack("3i", creds)
    return f"uid {uid} pid {pid} via control socket"


async def serve(application: web.Application, state_dir: Path) -> web.AppRunner:
    """Listen on `state_dir/control.sock` (0600)."""
    path = state_dir / SOCKET
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    old = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(path)).start()
    finally:
        os.umask(old)
    return runner


async def send(state_dir: Path, command: str, service: str = "") -> dict[str, Any]:
    """Send a command to the agent on `state_dir`; SetpointError when it is refused or absent."""
    path = state_dir / SOCKET
    body: dict[str, str] = {"command": command}
    if service:
        body["service"] = service
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session,
            session.post("http://agent/v1/commands", json=body) as resp,
        ):
            reply: dict[str, Any] = await resp.json()
    except (aiohttp.ClientConnectionError, FileNotFoundError) as err:
        raise SetpointError(f"no agent is running on {state_dir} ({path}: {err})") from None
    if resp.status != 202:
        raise SetpointError(f"command refused: {reply.get('error', resp.status)}")
    return reply


async def live_status(state_dir: Path, timeout: float = 3.0) -> dict[str, Any] | None:
    """The running agent's live status; None when no agent answers in time."""
    path = state_dir / SOCKET
    try:
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(path)),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as session,
            session.get("http://agent/v1/status") as resp,
        ):
            doc = await resp.json() if resp.status == 200 else None
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc else None
