"""Goals: Validated files merged into one namespace per kind; a name defined twice is a problem."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from yaml.nodes import Node

from agent.errors import Problem
from agent.goals.model import DomainModel, GoalFile, GroupModel, ProbeModel, ServiceModel, SinkModel
from agent.goals.yamlsafe import Doc, PathKey, problem_at

M_co = TypeVar("M_co", covariant=True)
KINDS = {"services": "service", "probes": "probe", "groups": "group", "domains": "domain"}
KINDS["sinks"] = "sink"


@dataclass(frozen=True)
class Entry(Generic[M_co]):
    """A named thing and the file place it came from (`path` is e.g. ('services', 'web'))."""

    name: str
    doc: Doc
    path: PathKey
    model: M_co

    def node(self, *sub: object) -> Node | None:
        """The value node at `sub` below this entry (its nearest existing ancestor)."""
        loc = (*self.path, *sub)
        for end in range(len(loc), len(self.path) - 1, -1):
            if loc[:end] in self.doc.values:
                return self.doc.values[loc[:end]]
        return self.doc.keys.get(self.path)

    def key(self, *sub: object) -> Node | None:
        """The key node naming `sub` below this entry, else its value node."""
        return self.doc.keys.get((*self.path, *sub)) or self.node(*sub)

    def problem(self, message: str, *sub: object, key: bool = False) -> Problem:
        """A problem at this entry's value (or key) node at `sub`."""
        return problem_at(self.doc.file, self.key(*sub) if key else self.node(*sub), message)


@dataclass
class Merged:
    """Every file's named things, by kind and name."""

    services: dict[str, Entry[ServiceModel]] = field(default_factory=dict)
    probes: dict[str, Entry[ProbeModel]] = field(default_factory=dict)
    groups: dict[str, Entry[GroupModel]] = field(default_factory=dict)
    domains: dict[str, Entry[DomainModel]] = field(default_factory=dict)
    sinks: dict[str, Entry[SinkModel]] = field(default_factory=dict)


def place(doc: Doc, node: Node | None) -> str:
    """`file:line:col` of a node."""
    if node is None:
        return doc.file
    return f"{doc.file}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def where(entry: Entry[object]) -> str:
    """`file:line:col` of an entry's name."""
    return place(entry.doc, entry.key())


def merge(files: list[tuple[Doc, GoalFile]], limit: int) -> tuple[Merged, list[Problem]]:
    """Merge files in order; report names defined twice and kinds with over `limit` names."""
    merged, problems = Merged(), []
    for doc, model in files:
        for kind, singular in KINDS.items():
            table: dict[str, Entry[object]] = getattr(merged, kind)
            for name, item in getattr(model, kind).items():
                entry: Entry[object] = Entry(name, doc, (kind, name), item)
                if name in table:
                    message = f"{singular} '{name}' is already defined at {where(table[name])}"
                    problems.append(entry.problem(message, key=True))
                elif len(table) == limit:
                    message = f"too many {kind} (at most {limit} across all files)"
                    problems.append(entry.problem(message, key=True))
                    break
                else:
                    table[name] = entry
    return merged, problems


def duplicate_keys(doc: Doc) -> list[Problem]:
    """Keys given twice in one mapping (YAML would silently keep the last)."""
    problems = []
    for path, first, again in doc.duplicates:
        seen = place(doc, first)
        if len(path) == 2 and path[0] in KINDS:
            message = f"{KINDS[str(path[0])]} '{path[1]}' is already defined at {seen}"
        else:
            message = f"key '{path[-1]}' is already defined at {seen}"
        problems.append(problem_at(doc.file, again, message))
    return problems
