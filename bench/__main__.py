"""`make bench`: run every benchmark and print its figures."""

from __future__ import annotations

import importlib
import sys

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
    "bench.flapping_bench",
]


def main() -> int:
    for name in BENCHES:
        print(f"== {name}", flush=True)
        importlib.import_module(name).main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
