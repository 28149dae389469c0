"""Adapters / systemd: the last lines a unit logged in one invocation, from the journal.

`journalctl -o json` runs as an asyncio subprocess (an argv list; bounded in time and in the
bytes read), so reading the journal never blocks the event loop. Two small queries:

1. which invocation: the newest message systemd itself wrote about the unit with the message id
   of an invocation that ended (process exited, unit failed or succeeded, resources consumed) or,
   for an alert about the running invocation, of a start job; its INVOCATION_ID (USER_ for a
   user manager) names the invocation. Without such a message, the unit's newest own line's.
2. that invocation's last lines: `_SYSTEMD_INVOCATION_ID=<id> -n N`, then kept within a byte
   budget (the newest lines win; an over-long line is cut). For an invocation that ended, read
   again until two reads agree: journald takes a process's output through its own stream socket,
   so the manager's "exited" message can be in the journal before the process's last lines are.

journald tags a stream's lines with the unit and invocation when it reads the first one; a
process that dies before that (a busy journald, a service that prints and exits at once) leaves
lines with only the unit the stream named and the PID that opened it. So for an ended invocation
the lines of its main process (ExecMainPID, asked from the manager) that carry no invocation
count too.

Any trouble (no journalctl, no access, no entries, too slow) is a JournalUnreadable saying why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import SetpointError

ENDED = (
    "98e322203f7a4ed290d09fe03c09fe15",  # unit process exited
    "d9b373ed55a64feb8242e02dbe79a49c",  # unit failed
    "7ad2d189f7e94e70a38c781354912448",  # unit succeeded
    "ae8f7b866b0347b9af31fe1c80b127c0",  # resources consumed by the unit's runtime
)
"""systemd's catalog message ids that end an invocation (systemd.catalog)."""
STARTED = ("7d4958e842da4a758f6c1cdc7b36dcc5",)  # a start job for the unit has begun
TOO_LONG = "[line over journalctl's 4096-byte field limit]"
ELLIPSIS = "…"


class JournalUnreadable(SetpointError):
    """The unit's journal could not be read; the message says why."""


@dataclass(frozen=True)
class Limits:
    """How much of a unit's journal an alert carries, and how long reading it may take."""

    lines: int = 20
    max_bytes: int = 4096
    timeout: float = 5.0
    read_bytes: int = 1 << 20
    """Most bytes read from one journalctl; it is killed beyond."""
    settle: float = 0.2
    """Seconds between reads of an ended invocation's lines, until two agree."""
    quiet: float = 1.0
    """An ended invocation that shows no lines is read again for this long before it counts as
    one that printed nothing."""


@dataclass(frozen=True)
class UnitLog:
    """The last lines of one invocation of a unit, oldest first."""

    unit: str
    invocation: str
    lines: tuple[str, ...]
    truncated: bool
    """Lines or bytes were left out to stay within the limits."""

    def doc(self) -> dict[str, Any]:
        """The JSON form webhooks, MQTT and the status view carry."""
        return {"unit": self.unit, "invocation": self.invocation, "lines": list(self.lines),
                "truncated": self.truncated}  # fmt: skip


def entries(out: bytes) -> list[dict[str, Any]]:
    """journalctl's JSON lines; anything else (a cut last line) is skipped. Pure."""
    found = []
    for line in out.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                found.append(entry)
    return found


def text(value: object) -> str:
    """A MESSAGE field: a string, bytes as a list of ints (not UTF-8), or null (too long)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value).decode("utf-8", "replace")
    return TOO_LONG


def bounded(lines: Sequence[str], count: int, max_bytes: int) -> tuple[tuple[str, ...], bool]:
    """The newest `count` lines within `max_bytes` (UTF-8, a newline each); whether any were
    left out or cut. The newest line alone over budget keeps its start. Pure."""
    kept: list[str] = []
    used = 0
    cut = False
    for line in reversed(lines[-count:] if count > 0 else []):
        size = len(line.encode()) + 1
        if used + size > max_bytes:
            if not kept and max_bytes > 1:
                kept.append(_cut(line, max_bytes - 1))
                cut = True
            break
        kept.append(line)
        used += size
    return tuple(reversed(kept)), cut or len(kept) < len(lines)


def _cut(line: str, size: int) -> str:
    """The start of `line` in at most `size` UTF-8 bytes, marked as cut."""
    room = max(0, size - len(ELLIPSIS.encode()))
    return line.encode()[:room].decode("utf-8", "ignore") + ELLIPSIS


def invocation_of(entry: dict[str, Any]) -> str:
    """The invocation a journal entry names: the manager's field or the process's own."""
    for key in ("INVOCATION_ID", "USER_INVOCATION_ID", "_SYSTEMD_INVOCATION_ID"):
        value = entry.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


LastProcess = Callable[[str], Awaitable[tuple[str, int]]]
"""A unit's current invocation id and its main process's PID, ("", 0) when unknown."""


class UnitLogs:
    """Reads units' journals with journalctl (`user` for units of a user manager); with
    `last_process`, also the untagged lines of an ended invocation's main process."""

    def __init__(
        self,
        *,
        user: bool = False,
        limits: Limits = Limits(),
        journalctl: Sequence[str] = ("journalctl",),
        last_process: LastProcess | None = None,
    ) -> None:
        self.user = user
        self.limits = limits
        self._argv = (*journalctl, "--no-pager", "--quiet", "-o", "json")
        self._last_process = last_process

    async def last_lines(self, unit: str, *, ended: bool) -> UnitLog:
        """The last lines of the invocation that ended last (`ended`) or is running."""
        invocation = await self.invocation(unit, ended=ended)
        matches = [f"_SYSTEMD_INVOCATION_ID={invocation}"]
        if ended:
            matches += await self._untagged(unit, invocation)
        found = await self._lines(invocation, matches)
        if ended:
            found = await self._settled(invocation, matches, found)
        messages = [text(e.get("MESSAGE")) for e in found]
        lines, cut = bounded(messages, self.limits.lines, self.limits.max_bytes)
        return UnitLog(unit, invocation, lines, cut)

    async def _untagged(self, unit: str, invocation: str) -> list[str]:
        """journalctl matches, OR-ed on, for the lines of `invocation`'s main process that
        journald could not tag; none when the manager cannot tell that process."""
        if self._last_process is None:
            return []
        current, pid = await self._last_process(unit)
        if current != invocation or pid <= 0:
            return []
        fields = ("_SYSTEMD_USER_UNIT", "_SYSTEMD_UNIT") if self.user else ("_SYSTEMD_UNIT",)
        return [m for f in fields for m in ("+", f"_PID={pid}", f"{f}={unit}")]

    async def _lines(self, invocation: str, matches: Sequence[str]) -> list[dict[str, Any]]:
        """The newest lines `matches` selects, but those tagged with another invocation."""
        n = str(max(1, self.limits.lines) + 1)  # one more: were any left out?
        found = await self._query("-n", n, "--output-fields=MESSAGE,_SYSTEMD_INVOCATION_ID",
                                  *matches)  # fmt: skip
        return [e for e in found if e.get("_SYSTEMD_INVOCATION_ID", invocation) == invocation]

    async def _settled(
        self, invocation: str, matches: Sequence[str], found: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The ended invocation's lines once two reads `settle` apart agree (and, while there
        are none, `quiet` has passed), or as last read when `timeout` runs out."""
        waited = 0.0
        while waited < self.limits.timeout:
            await asyncio.sleep(self.limits.settle)
            waited += self.limits.settle
            again = await self._lines(invocation, matches)
            if again == found and (found or waited >= self.limits.quiet):
                return found
            found = again
        return found

    async def invocation(self, unit: str, *, ended: bool) -> str:
        """The invocation an alert about `unit` is about; JournalUnreadable when none is found."""
        field = "USER_UNIT" if self.user else "UNIT"
        ids = [f"MESSAGE_ID={m}" for m in (ENDED if ended else STARTED)]
        fields = "--output-fields=INVOCATION_ID,USER_INVOCATION_ID,_SYSTEMD_INVOCATION_ID"
        found = await self._query("-r", "-n", "1", fields, f"{field}={unit}", *ids)
        if not found:
            own = "_SYSTEMD_USER_UNIT" if self.user else "_SYSTEMD_UNIT"
            found = await self._query("-r", "-n", "1", fields, f"{own}={unit}")
        invocation = invocation_of(found[0]) if found else ""
        if not invocation:
            raise JournalUnreadable(f"no invocation of {unit} in the journal")
        return invocation

    async def _query(self, *args: str) -> list[dict[str, Any]]:
        """Run journalctl with `args`; its entries, or JournalUnreadable."""
        argv = [*self._argv, *args]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as err:
            raise JournalUnreadable(f"{argv[0]}: {err.strerror or err}") from None
        try:
            async with asyncio.timeout(self.limits.timeout):
                out = await _read(proc.stdout, self.limits.read_bytes)
                if len(out) >= self.limits.read_bytes:
                    return entries(out)  # as much as we read; it is killed below
                errout = await _read(proc.stderr, 4096)
                code = await proc.wait()
        except TimeoutError:
            raise JournalUnreadable(
                f"journalctl: no answer within {self.limits.timeout:g}s"
            ) from None
        finally:
            await _stop(proc)
        if code != 0:
            why = errout.decode("utf-8", "replace").strip().splitlines()[:1] or [f"exit {code}"]
            raise JournalUnreadable(f"journalctl: {why[0]}")
        return entries(out)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """Kill it if still running, and reap it: asyncio's wait() returns once its pipes are
    closed, so what it wrote beyond what was read is drained (a pipe buffer at most)."""
    if proc.returncode is None:
        proc.kill()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5.0):
            for stream in (proc.stdout, proc.stderr):
                while stream is not None and await stream.read(65536):
                    pass
    await proc.wait()


async def _read(stream: asyncio.StreamReader | None, limit: int) -> bytes:
    """Up to `limit` bytes, or everything until EOF."""
    if stream is None:
        return b""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`setpoint run` options for the unit log lines alerts carry."""
    parser.add_argument(
        "--unit-log-lines", type=int, default=Limits.lines, metavar="N",
        help=f"journal lines of the failing unit in a service alert (default {Limits.lines}; "
        "0: none)",
    )  # fmt: skip
    parser.add_argument(
        "--unit-log-bytes", type=int, default=Limits.max_bytes, metavar="N",
        help=f"at most this many bytes of them (default {Limits.max_bytes})",
    )  # fmt: skip


def from_args(args: argparse.Namespace) -> Limits:
    """The limits the options ask for; ValueError when out of range."""
    lines, size = args.unit_log_lines, args.unit_log_bytes
    if not 0 <= lines <= 1000:
        raise ValueError(f"--unit-log-lines must be 0 to 1000, got {lines}")
    if not 64 <= size <= 1 << 20:
        raise ValueError(f"--unit-log-bytes must be 64 to 1048576, got {size}")
    return Limits(lines=lines, max_bytes=size)
