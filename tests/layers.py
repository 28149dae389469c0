"""`make check`: every module of agent/ lives in a room of the layers contract, and its
docstring's first line names that room (DESIGN.md section 6)."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = {"__init__", "__main__"}
"""Modules of the package itself, outside every room."""
ROOMS = {
    "cli": "CLI",
    "app": "App",
    "interfaces": "Interfaces",
    "adapters": "Adapters",
    "runtime": "Runtime",
    "journal": "Journal",
    "goals": "Goals",
    "core": "Core",
    "errors": "Errors",
}


def contracts() -> tuple[set[str], set[str]]:
    """The layer packages and the independent adapters named in pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers: set[str] = set()
    adapters: set[str] = set()
    for contract in config["contracts"]:
        if contract["type"] == "layers":
            for level in contract["layers"]:
                layers.update(m.strip().removeprefix("agent.") for m in level.split("|"))
        if contract["type"] == "independence":
            adapters.update(m.removeprefix("agent.adapters.") for m in contract["modules"])
    return layers, adapters


def problems() -> list[str]:
    layers, adapters = contracts()
    found = []
    for path in sorted((ROOT / "agent").rglob("*.py")):
        parts = path.relative_to(ROOT / "agent").with_suffix("").parts
        head = parts[0]
        if len(parts) == 1 and head in TOP:
            continue
        where = path.relative_to(ROOT)
        if head not in layers or head not in ROOMS:
            found.append(f"{where}: not in any layer of the import-linter contract")
            continue
        known = {*adapters, "edge", "__init__"}
        if head == "adapters" and len(parts) > 1 and parts[1] not in known:
            found.append(f"{where}: an adapter outside the independence contract")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if not doc.startswith(ROOMS[head]):
            found.append(f"{where}: docstring must begin with its room, {ROOMS[head]!r}")
    return found


if __name__ == "__main__":
    issues = problems()
    print("\n".join(issues) or "layers: every module of agent/ is in its room")
    sys.exit(1 if issues else 0)
