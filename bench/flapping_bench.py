"""CPU per probe result that changes health (and so is journaled), and where it goes.

50 HTTP probes at 100 ms with failures: 1 against paths that answer 200 and 503 in turn: every
result flips its probe's health, is stepped and journaled (about 500 results/s; goal <= 150 µs
of CPU per result above what a result that changes nothing costs). The same 50 probes against
paths that always answer 200 are the baseline; the difference is the cost of a health change
(step, journal commit with its fsync, metrics). Under such a storm, batches of observations
share commits (agent.runtime.loop.COMMIT_DELAY); the same flapping run with commits not shared
(commit_delay 0) is measured for the ratio. The three runs are repeated in rounds
(SETPOINT_BENCH_FLAP_ROUNDS, 3): a shared machine's load drifts, and a single pair of runs
gave anything from 130 to 200 µs. One more flapping run times the runtime's phases
(CPU of the event loop's thread, from timers around them), and one under cProfile prints the
functions that take the time (cProfile inflates small calls: its figures are only for finding
them). Log lines are formatted as the agent does and written to /dev/null; /proc splits the
CPU by thread (the event loop versus SQLite's worker thread). The agent runs in-process (bus
none).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import functools
import io
import os
import pstats
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agent.app import Daemon, Options
from agent.core.inputs import Input, ProbeResult
from agent.interfaces import logs
from agent.journal import codec
from agent.journal.store import Journal
from agent.runtime import loop
from bench.peers.checks_bench import target_server

PROBES = 50
WINDOW = float(os.environ.get("SETPOINT_BENCH_FLAP_WINDOW", "10"))
ROUNDS = int(os.environ.get("SETPOINT_BENCH_FLAP_ROUNDS", "3"))
TICK = os.sysconf("SC_CLK_TCK")


def goals(port: int, kind: str) -> str:
    return "apiVersion: setpoint/v1\nprobes:\n" + "".join(
        f"  p{i}: {{http: {{url: 'http://127.0.0.1:{port}/{kind}/{i}'}}, interval: 100ms, "
        f"failures: 1}}\n"
        for i in range(PROBES)
    )


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread of this process, by thread name (from /proc)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    found: dict[str, float] = {}
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with open(task / "stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        name = names.get(int(task.name), "other")
        name = "event loop" if name == "MainThread" else name.split("-")[0]
        found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return found


def prepare(work: Path, text: str) -> Path:
    work.mkdir()
    (work / "goals.yaml").write_text(text)
    return work


async def run(work: Path, profile: cProfile.Profile | None, delay: float | None = None,
              ) -> dict[str, float]:  # fmt: skip
    daemon = Daemon(Options(goals=(work / "goals.yaml",), state_dir=work / "state", bus="none",
                            http_port=0))  # fmt: skip
    task = asyncio.create_task(daemon.serve())
    while daemon.runtime is None:
        if task.done():
            await task
        await asyncio.sleep(0.01)
    if delay is not None:
        daemon.runtime._commit_delay = delay
    results = [0]

    def tap(inp: Input) -> None:
        if isinstance(inp, ProbeResult):
            results[0] += 1

    daemon.runtime.tap = tap
    await asyncio.sleep(2)
    stats = daemon.runtime.stats
    before, cpu0, count0 = thread_cpu(), time.process_time(), results[0]
    batches0 = stats.batches
    if profile is not None:
        profile.enable()
    await asyncio.sleep(WINDOW)
    if profile is not None:
        profile.disable()
    after, cpu, count = thread_cpu(), time.process_time() - cpu0, results[0] - count0
    batches = stats.batches - batches0
    daemon.request_stop()
    await task
    split = {name: after[name] - before.get(name, 0.0) for name in after}
    return {"per_result_us": cpu / count * 1e6, "rate": count / WINDOW, "all": results[0],
            "commits": batches / WINDOW, **split}  # fmt: skip


PHASES: dict[str, tuple[Any, str]] = {
    "step": (loop.Runtime, "_step"),
    "journal rows": (Journal, "_rows"),
    "of which the state digest": (codec, "digest"),
    "acting (log lines)": (loop.Runtime, "_act"),
}


@contextlib.contextmanager
def timed(spent: dict[str, float]) -> Iterator[None]:
    """Add each phase's thread CPU time to `spent` while inside."""
    saved = {label: getattr(owner, name) for label, (owner, name) in PHASES.items()}

    def timer(label: str, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return func(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.thread_time() - started

        return timed_call

    for label, (owner, name) in PHASES.items():
        setattr(owner, name, timer(label, saved[label]))
    try:
        yield
    finally:
        for label, (owner, name) in PHASES.items():
            setattr(owner, name, saved[label])


def phases(spent: dict[str, float], results: float) -> str:
    """Each phase's CPU per result (over the whole run, warm-up included)."""
    return ", ".join(f"{label} {spent.get(label, 0.0) / results * 1e6:.0f} µs" for label in PHASES)


def top(profile: cProfile.Profile, key: str, lines: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out).strip_dirs().sort_stats(key)
    stats.print_stats(lines)
    body = out.getvalue().split("filename:lineno(function)", 1)[-1]
    return "\n".join("    " + line for line in body.strip().splitlines())


def measure_round(work: Path, port: int) -> tuple[dict[str, float], ...]:
    """Steady, flapping, and flapping with commits not shared, one after the other (a round:
    the machine's load drifts less within it than between rounds)."""
    work.mkdir()
    return tuple(
        asyncio.run(run(prepare(work / name, goals(port, kind)), None, delay))
        for name, kind, delay in (("steady", "steady", None), ("flap", "flap", None),
                                  ("unshared", "flap", 0.0))
    )  # fmt: skip


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs."""
    return {key: statistics.median(r.get(key, 0.0) for r in runs) for key in runs[0]}


def main() -> None:
    with open(os.devnull, "w") as null:
        logs.setup("info", "text", stream=null)  # as the agent logs: formatted, not shown
        measure()


def measure() -> None:
    with target_server() as port, tempfile.TemporaryDirectory() as tmp:
        rounds = [measure_round(Path(tmp) / str(n), port) for n in range(ROUNDS)]
        spent: dict[str, float] = {}
        with timed(spent):
            timing = asyncio.run(run(prepare(Path(tmp) / "timed", goals(port, "flap")), None))
        profile = cProfile.Profile(time.thread_time)  # CPU, not wall time (preemption)
        profiled = asyncio.run(run(prepare(Path(tmp) / "profiled", goals(port, "flap")), profile))
    steady, flapping, unshared = (median_run([r[i] for r in rounds]) for i in range(3))
    costs = sorted(f["per_result_us"] - s["per_result_us"] for s, f, _ in rounds)
    alone = sorted(u["per_result_us"] - s["per_result_us"] for s, _, u in rounds)
    cost = statistics.median(costs)
    print(
        f"flapping: {PROBES} probes at 100 ms, every result a health change: "
        f"{flapping['per_result_us']:.0f} µs CPU per result at {flapping['rate']:.0f}/s; "
        f"steady (no change): {steady['per_result_us']:.0f} µs at {steady['rate']:.0f}/s; "
        f"a journaled health change costs {cost:.0f} µs more (median of {ROUNDS} rounds, "
        f"{costs[0]:.0f}-{costs[-1]:.0f}; goal <= 150 µs per result)"
    )
    print(
        f"  commits shared: {flapping['commits']:.0f} commits/s; each batch its own commit "
        f"(commit_delay 0): {unshared['commits']:.0f} commits/s, "
        f"{statistics.median(alone):.0f} µs more per result "
        f"({statistics.median(alone) / cost:.1f}x)"
    )
    threads = ", ".join(
        f"{name} {sec / WINDOW * 100:.1f}%"
        for name, sec in flapping.items()
        if name not in ("per_result_us", "rate", "all", "commits") and sec > 0
    )
    print(f"  flapping CPU by thread (% of a core): {threads}")
    print(f"  phases, CPU per result: {phases(spent, timing['all'])}")
    print(f"  where the event loop's time goes (cProfile, {profiled['rate']:.0f} results/s):")
    print(top(profile, "tottime", 18))
    print("  by cumulative time:")
    print(top(profile, "cumulative", 30))


if __name__ == "__main__":
    main()
