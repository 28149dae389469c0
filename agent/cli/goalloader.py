"""CLI: `python -m agent.cli.goalloader --broker|--no-broker -- PATH...`: the short-lived child
in which `setpoint run` loads and validates its goal files (see agent.goals.isolated), so that
the daemon never imports YAML, pydantic or the goal models. It sits here, above the journal,
for the codec that encodes its answer."""

from __future__ import annotations

import sys

from agent.goals.isolated import child_main
from agent.journal.codec import encode

if __name__ == "__main__":
    raise SystemExit(child_main(sys.argv[1:], encode))
