"""Run the real agent (`python -m agent run`) as a subprocess in tests."""

from __future__ import annotations

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


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


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
