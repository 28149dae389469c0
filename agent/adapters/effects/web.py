"""Adapters / effects: Route and domain effects besides exec: an atomically written file and an
HTTP webhook.

Both state the target, never a delta, so re-running one after a crash is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path

import aiohttp

from agent.adapters.edge import effect_action, http_outcome
from agent.core.actions import TrackedAction
from agent.errors import PermanentError, TransientError


async def write_file(action: TrackedAction) -> str:
    """Write the target (plus a newline) to the effect's path: temp file, fsync, rename."""
    effect = effect_action(action, "file")
    content = (effect.target or effect.reason) + "\n"
    if effect.fence:  # a cluster domain's: readers refuse a file with a smaller fence
        content += f"fence={effect.fence}\n"
    try:
        await asyncio.to_thread(atomic_write, Path(effect.effect.path), content.encode())
    except PermissionError as err:
        raise PermanentError(f"cannot write {effect.effect.path}: {err.strerror}") from None
    except OSError as err:
        raise TransientError(f"cannot write {effect.effect.path}: {err.strerror}") from None
    return f"wrote {content.strip()!r} to {effect.effect.path}"


def atomic_write(path: Path, data: bytes) -> None:
    """Never a half-written file: readers see the old content or the new, nothing between."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Webhook:
    """The http effect: a request carrying the target; 2xx is success."""

    def __init__(self, timeout: float = 10.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, action: TrackedAction) -> str:
        effect = effect_action(action, "http")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"X-Setpoint-Action-Id": str(action.id), "Content-Type": "application/json"}
        if effect.fence:
            headers["X-Setpoint-Fence"] = str(effect.fence)
        body = effect.fill(effect.effect.body) if effect.effect.body else None
        url = effect.fill(effect.effect.url)
        try:
            async with self._session.request(
                effect.effect.method, url, data=body, headers=headers
            ) as resp:
                text = (await resp.content.read(2048)).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise TransientError(f"{effect.effect.method} {url}: {err!r}") from None
        return http_outcome(f"{effect.effect.method} {url}", resp.status, text)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
