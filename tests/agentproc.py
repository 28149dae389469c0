"""Run the real agent (`python -m agent run`) as a subprocess in tests; and the one way tests
wait: `wait_until` (and `wait_until_async` for coroutines)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def metric(port: int, series: str) -> float:
    """The value of one series (`name{labels}` as exposed) on the agent's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert found, f"{series} not in /metrics"
    return float(found.group(1))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, *, every: float = 0.02
) -> None:
    """Poll `predicate` every `every` seconds until it holds; fail with `what` after `timeout`.

    Wait for an event, never for time: "nothing happened" is shown by a later event that
    proves the moment has passed (see `marker`), not by a sleep.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


async def wait_until_async(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    wake: asyncio.Event | None = None,
) -> None:
    """`wait_until` for coroutines: the event loop goes on while it waits.

    With `wake`, an event the producer sets on every change, `predicate` is checked again at
    each change instead of being polled.
    """
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                if wake is None:
                    await asyncio.sleep(0.02)
                else:
                    wake.clear()  # no await since `predicate()`: no change can be missed
                    await wake.wait()
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `setpoint ARGS...` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True, text=True, check=False, cwd=ROOT, env=env, timeout=60,
    )  # fmt: skip


def status(state_dir: Path) -> dict[str, Any]:
    """`setpoint status --json` (readable while the agent runs)."""
    result = cli("status", "--json", "--state-dir", str(state_dir))
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def journal_rows(state_dir: Path, limit: int = 100000) -> list[dict[str, Any]]:
    """Every journaled entry, newest first (`setpoint history --json`)."""
    result = cli("history", "--json", "--limit", str(limit), "--state-dir", str(state_dir))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def last_seq(state_dir: Path) -> int:
    """The sequence number of the newest journal entry (0 for an empty journal)."""
    rows = journal_rows(state_dir, 1)
    return int(rows[0]["seq"]) if rows else 0


def marker(state_dir: Path, command: str, target: str = "", timeout: float = 60.0) -> int:
    """Send an operator command to the running agent as a marker input; once it is journaled,
    the sequence number of its entry.

    The agent steps its inputs in the order they arrive and journals every decision before
    acting on it, so once the marker's entry is there, every input queued before the command
    has been stepped: the journal up to the marker holds all the agent decided until then.
    That is how a test shows that something did NOT happen, without sleeping.
    `command` is an OperatorCommand (`resync`, `reset`, `maintenance_on`, `maintenance_off`).
    """
    after = last_seq(state_dir)
    argv = [*command.split("_"), *([target] if target else []), "--state-dir", str(state_dir)]
    result = cli(*argv)
    assert result.returncode == 0, result.stdout + result.stderr
    found: list[int] = []

    def journaled() -> bool:
        found.extend(
            row["seq"] for row in journal_rows(state_dir)
            if row["seq"] > after and row["input"]["type"] == "OperatorCommand"
            and (row["input"]["command"], row["input"]["target"]) == (command, target)
        )  # fmt: skip
        return bool(found)

    wait_until(journaled, timeout, f"the marker command {command} in the journal", every=0.1)
    return min(found)


def rows_between(state_dir: Path, first: int, last: int) -> list[dict[str, Any]]:
    """Journal entries with `first` < seq <= `last`, oldest first."""
    return sorted(
        (r for r in journal_rows(state_dir) if first < r["seq"] <= last),
        key=lambda r: int(r["seq"]),
    )


def decided(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The actions of type `kind` (RunEffect, UnitJob, SendAlert...) in journal `rows`."""
    return [a for row in rows for a in row["actions"] if a["type"] == kind]


def probe_results(port: int, probe: str) -> float:
    """How many results of `probe` the agent has received (its /metrics latency count);
    counted as each result is handed to the runtime, before it is stepped."""
    return metric(port, f'setpoint_probe_latency_seconds_count{{probe="{probe}"}}')


class AgentProcess:
    """`setpoint run` in a subprocess, its log in `state_dir/../agent-N.log`."""

    count = 0

    def __init__(
        self,
        goals: Path,
        state_dir: Path,
        *,
        bus: str = "none",
        env: Mapping[str, str] | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        AgentProcess.count += 1
        self.port = free_port()
        self.log = state_dir.parent / f"agent-{AgentProcess.count}.log"
        argv = [
            sys.executable, "-m", "agent", "run", "--goals", str(goals),
            "--state-dir", str(state_dir), "--bus", bus, "--tick", "100ms",
            "--listen", f"127.0.0.1:{self.port}", "--log-level", "debug", "--log-format", "text",
            *extra,
        ]  # fmt: skip
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text()

    def wait_started(self, timeout: float = 20.0) -> None:
        """Until the agent logs that it is up (journal open, pending actions restored)."""

        def up() -> bool:
            code = self.proc.poll()
            assert code is None, f"agent exited with {code}:\n{self.output()}"
            return "started:" in self.output()

        wait_until(up, timeout, "the agent to start")

    def metric(self, series: str) -> float:
        return metric(self.port, series)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)
