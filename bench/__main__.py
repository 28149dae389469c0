"""`make bench`: run every benchmark and print its figures.

SETPOINT_BENCH_ONLY=peers,memory runs only the benches whose module name contains one of those.
"""

from __future__ import annotations

import importlib
import os
import sys

from agent.interfaces import logs

BENCHES = [
    "bench.step_bench",
    "bench.idle_bench",
    "bench.journal_bench",
    "bench.systemd_bench",
    "bench.probes_bench",
    "bench.observability_bench",
    "bench.ha_bench",
    "bench.peers.checks_bench",
    "bench.memory_bench",
    "bench.fleet_bench",
    "bench.flapping_bench",
    "bench.soak_bench",
]


def main() -> int:
    only = [word for word in os.environ.get("SETPOINT_BENCH_ONLY", "").split(",") if word]
    with open(os.devnull, "w") as null:
        logs.setup("info", "text", stream=null)  # agents run in-process log as they would, unseen
        for name in BENCHES:
            if only and not any(word in name for word in only):
                continue
            print(f"== {name}", flush=True)
            importlib.import_module(name).main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
