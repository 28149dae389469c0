"""Goals: Service phase checks: each `when` compiles as a CEL bool over `probes`, `phase` and
`lifecycle`, and names only probes that exist; every problem at `file:line:col`."""

from __future__ import annotations

from collections.abc import Iterator

from yaml.nodes import ScalarNode

from agent.core.expr import ExprError, compile_expr, node_references, references
from agent.core.phases import DECLS
from agent.errors import Problem
from agent.goals.checks import unknown
from agent.goals.expressions import _dotted_hint, _reference
from agent.goals.merged import Entry, Merged
from agent.goals.model import ServiceModel
from agent.goals.positions import locate, offset_of

SEES = "a phase sees probes, phase and lifecycle"


def check_phases(merged: Merged) -> Iterator[Problem]:
    """Every problem in every service's phases, lazily."""
    for svc in merged.services.values():
        for name, phase in svc.model.phases.items():
            yield from _when(svc, ("phases", name, "when"), phase.when, merged)


def _when(
    svc: Entry[ServiceModel], loc: tuple[str, ...], text: str, merged: Merged
) -> Iterator[Problem]:
    try:
        compile_expr(text, DECLS, "bool")
    except ExprError as err:
        offset = offset_of(text, err.line, err.col)
        yield _at(svc, loc, offset, f"when: {err.message}{_dotted_hint(text)}")
        return
    if node_references(text):
        yield _at(svc, loc, text.find("nodes"), f"when: {SEES}, not nodes[...]")
    for kind, name in references(text):
        if kind == "services":
            yield _at(svc, loc, _reference(text, kind, name), f"when: {SEES}, not services")
        elif name not in merged.probes:
            message = f"when: {unknown('probe', name, merged.probes)}"
            yield _at(svc, loc, _reference(text, kind, name), message)


def _at(svc: Entry[ServiceModel], loc: tuple[str, ...], offset: int, message: str) -> Problem:
    node = svc.doc.values.get((*svc.path, *loc))
    if not isinstance(node, ScalarNode):
        return svc.problem(message, *loc)
    line, col = locate(svc.doc, node, max(offset, 0))
    return Problem(svc.doc.file, line, col, message)
