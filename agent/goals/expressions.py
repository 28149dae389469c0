"""Goals: Domain checks: typed variables, CEL goals/guards/bindings compiled, assignments
type-checked.

CEL errors carry a position inside the expression; it is mapped back into the goal file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from yaml.nodes import ScalarNode

from agent.core.alerts import Builtin
from agent.core.expr import Decls, ExprError, compile_expr, evaluate, node_references, references
from agent.core.spec import VarType
from agent.errors import Problem
from agent.goals.checks import unknown
from agent.goals.merged import Entry, Merged
from agent.goals.model import DomainModel, TransitionModel, VarModel
from agent.goals.positions import locate, offset_of
from agent.goals.problems import describe, short

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WORDS = "true false null in as break const continue else for function if import let loop"
RESERVED = frozenset(
    f"{_WORDS} package namespace return var void while services probes nodes".split()
)
BUILTIN_ALERTS = frozenset(Builtin)
WORDS: dict[VarType, str] = {
    "string": "a string",
    "bool": "true or false",
    "int": "an integer",
    "double": "a number",
}


def fits(value: object, kind: VarType) -> bool:
    """Whether a YAML literal is a value of the CEL type `kind` (ints count as doubles)."""
    if isinstance(value, bool) or kind == "bool":
        return kind == "bool" and isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    return isinstance(value, int) if kind == "int" else isinstance(value, int | float)


def check_domains(merged: Merged) -> Iterator[Problem]:
    """Every problem in every domain, lazily."""
    for dom in merged.domains.values():
        yield from _domain(dom, merged)


def decls_of(model: DomainModel) -> Decls:
    """The (name, type) pairs CEL sees, sorted by name; invalid names are left out."""
    state = model.state.items()
    return tuple(sorted((n, v.type) for n, v in state if _valid(n)))


def _valid(name: str) -> bool:
    return IDENTIFIER.match(name) is not None and name not in RESERVED


def _domain(dom: Entry[DomainModel], merged: Merged) -> Iterator[Problem]:
    decls = decls_of(dom.model)
    for name, var in dom.model.state.items():
        yield from _variable(dom, name, var)
        if var.bind is not None:
            yield from _expr(dom, ("state", name, "bind"), var.bind, decls, var.type, merged)
    yield from _expr(dom, ("goal",), dom.model.goal, decls, "bool", merged)
    for name, tr in dom.model.transitions.items():
        if name in BUILTIN_ALERTS:
            message = f"transition name '{name}' is reserved: it is a built-in alert's name"
            yield dom.problem(message, "transitions", name, key=True)
        yield from _expr(dom, ("transitions", name, "when"), tr.when, decls, "bool", merged)
        yield from _assignments(dom, name, tr)


def _variable(dom: Entry[DomainModel], name: str, var: VarModel) -> Iterator[Problem]:
    if name in RESERVED:
        yield dom.problem(f"variable name '{name}' is reserved", "state", name, key=True)
    elif not _valid(name):
        message = f"invalid variable name {short(name)}: use letters, digits, '_' (no digit first)"
        yield dom.problem(message, "state", name, key=True)
    if var.default is not None and not fits(var.default, var.type):
        message = f"default of '{name}' must be {WORDS[var.type]}, got {describe(var.default)}"
        yield dom.problem(message, "state", name, "default")


def _assignments(dom: Entry[DomainModel], name: str, tr: TransitionModel) -> Iterator[Problem]:
    state = dom.model.state
    for var, value in tr.assign.items():
        loc = ("transitions", name, "set", var)
        if var not in state:
            yield dom.problem(unknown("variable", var, state), *loc, key=True)
        elif state[var].bind is not None:
            yield dom.problem(f"cannot set '{var}': it is bound to an expression", *loc, key=True)
        elif not fits(value, state[var].type):
            kind = WORDS[state[var].type]
            yield dom.problem(f"value of '{var}' must be {kind}, got {describe(value)}", *loc)


def _expr(
    dom: Entry[DomainModel],
    loc: tuple[str, ...],
    text: str,
    decls: Decls,
    want: VarType,
    merged: Merged,
) -> Iterator[Problem]:
    try:
        compile_expr(text, decls, want)
    except ExprError as err:
        offset = offset_of(text, err.line, err.col)
        yield _at(dom, loc, offset, f"{loc[-1]}: {err.message}{_dotted_hint(text)}")
    else:
        if (overrun := _overruns(text, decls, want)) is not None:
            yield _at(dom, loc, 0, f"{loc[-1]}: {overrun}")
    cluster = dom.model.scope == "cluster"
    if cluster and references(text):
        message = (
            f'{loc[-1]}: a cluster domain reads facts as nodes["host"].services[...] '
            'and nodes["host"].probes[...]; services[...] and probes[...] are one node\'s'
        )
        yield _at(dom, loc, 0, message)
        return
    if not cluster and node_references(text):
        yield _at(dom, loc, 0, f"{loc[-1]}: nodes[...] needs `scope: cluster` on the domain")
        return
    for kind, name in references(text):
        table = merged.services if kind == "services" else merged.probes
        if name not in table:
            message = f"{loc[-1]}: {unknown(kind[:-1], name, table)}"
            yield _at(dom, loc, _reference(text, kind, name), message)


_DOTTED = re.compile(r"\b(services|probes)\.([A-Za-z_][\w]*(?:-[\w]+)+)")


_ZERO: dict[VarType, object] = {"string": "", "bool": False, "int": 0, "double": 0.0}
_SERVICE = {"state": "Running", "healthy": True, "health": "healthy", "active": "active",
            "sub": "running", "restarts": 0}  # fmt: skip


def _overruns(text: str, decls: Decls, want: VarType) -> str | None:
    """Why an expression is too costly to run, from one trial evaluation on neutral values.

    The evaluator offers no static cost estimate; a trial run with every variable at its
    type's zero and every named service healthy catches comprehensions over literal lists
    whose cost does not depend on the facts (the common way to write an unbounded one).
    """
    data: dict[str, object] = {name: _ZERO[kind] for name, kind in decls}
    data["services"] = {n: _SERVICE for k, n in references(text) if k == "services"}
    data["probes"] = {n: {"healthy": True, "over_budget": False}
                      for k, n in references(text) if k == "probes"}  # fmt: skip
    try:
        evaluate(text, decls, data, want)
    except ExprError as err:
        if "budget" in err.message:
            return f"too costly: {err.message} when evaluated once at load (nested comprehensions?)"
    return None


def _dotted_hint(text: str) -> str:
    """`probes.web-health` parses as a subtraction: say how to write the name."""
    found = _DOTTED.search(text)
    if found is None:
        return ""
    return f" (write {found.group(1)}[\"{found.group(2)}\"]: a name with '-' needs brackets)"


def _reference(text: str, kind: str, name: str) -> int:
    found = re.search(rf"\b{kind}\s*(?:\.\s*|\[\s*[\"']){re.escape(name)}", text)
    return found.start() if found else 0


def _at(dom: Entry[DomainModel], loc: tuple[str, ...], offset: int, message: str) -> Problem:
    node = dom.doc.values.get((*dom.path, *loc))
    if not isinstance(node, ScalarNode):
        return dom.problem(message, *loc)
    line, col = locate(dom.doc, node, offset)
    return Problem(dom.doc.file, line, col, message)
