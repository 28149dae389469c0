"""Soak: 50 probes flapping at 10 results/s each (every result a health change, journaled) for
SETPOINT_BENCH_SOAK seconds (default 60; 1800 for the full half hour). RSS must stay flat after
warm-up and the journal bounded (snapshots prune the entries before the oldest one kept)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.app import Daemon, Options
from agent.interfaces import logs
from bench.flapping_bench import goals, prepare
from bench.peers.checks_bench import target_server
from tests.agentproc import ROOT

SOAK = float(os.environ.get("SETPOINT_BENCH_SOAK", "60"))
WARMUP = min(20.0, SOAK / 3)
EVERY = 5.0


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def journal_mb(state: Path) -> float:
    return sum(p.stat().st_size for p in state.glob("journal.db*")) / 2**20


def entries(state: Path) -> int:
    with sqlite3.connect(f"file:{state / 'journal.db'}?mode=ro", uri=True) as db:
        count: int = db.execute("SELECT count(*) FROM entries").fetchone()[0]
        return count


async def soak(work: Path) -> list[tuple[float, float, float]]:
    """(seconds, RSS MB, journal MB) every EVERY seconds."""
    state = work / "state"
    daemon = Daemon(Options(goals=(work / "goals.yaml",), state_dir=state, bus="none",
                            http_port=0))  # fmt: skip
    task = asyncio.create_task(daemon.serve())
    samples: list[tuple[float, float, float]] = []
    started = time.monotonic()
    try:
        while (at := time.monotonic() - started) < SOAK:
            if task.done():
                await task
            samples.append((at, rss_mb(), journal_mb(state) if state.exists() else 0.0))
            await asyncio.sleep(EVERY)
        samples.append((time.monotonic() - started, rss_mb(), journal_mb(state)))
    finally:
        daemon.request_stop()
        await task
    return samples


def main() -> None:
    """In a fresh interpreter, so that RSS is the agent's and not what earlier benches left in
    this one (`make bench` runs them all in one process)."""
    subprocess.run([sys.executable, "-m", "bench.soak_bench"], check=True, cwd=ROOT)


def run_here() -> None:
    with open(os.devnull, "w") as null:
        logs.setup("info", "text", stream=null)  # as the agent logs: formatted, not shown
        measure()


def measure() -> None:
    with target_server() as port, tempfile.TemporaryDirectory() as tmp:
        work = prepare(Path(tmp) / "soak", goals(port, "flap"))
        samples = asyncio.run(soak(work))
        kept = entries(work / "state")
    warm = [s for s in samples if s[0] >= WARMUP]
    first, last = warm[0], warm[-1]
    growth = (last[1] - first[1]) / max(1e-9, (last[0] - first[0]) / 60)
    print(
        f"soak: 50 flapping probes at 10/s each for {SOAK:.0f}s: RSS {first[1]:.1f} MB after "
        f"{WARMUP:.0f}s warm-up, {last[1]:.1f} MB at the end ({growth:+.2f} MB/min), peak "
        f"{max(s[1] for s in samples):.1f} MB; journal at most {max(s[2] for s in samples):.1f} "
        f"MB, {kept} entries kept at the end"
    )


if __name__ == "__main__":
    run_here()
