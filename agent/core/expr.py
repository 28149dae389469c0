"""Core: CEL for goal predicates, guards and bindings: compiled once per text, evaluated purely.

The goal layer calls `compile_expr` at load time to type-check; the core calls `evaluate`.
Facts visible to every expression: `services` and `probes` (maps of name to attributes),
plus the domain's own variables.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache, lru_cache
from typing import Any

from agent.core.spec import Scalar, VarType

Decls = tuple[tuple[str, VarType], ...]
_STATUS = re.compile(r"^[A-Z_]+: ")
_LOCATION = re.compile(r"<input>:(\d+):(\d+): (.*?)(?:\n|$)")
_REFERENCE = re.compile(r"""\b(services|probes)(?:\.([A-Za-z_][\w]*)|\[\s*["']([^"']+)["']\s*\])""")


class ExprError(Exception):
    """A CEL expression failed to compile, type-check or evaluate; line/col are 1-based."""

    def __init__(self, message: str, line: int = 1, col: int = 1) -> None:
        super().__init__(message)
        self.message, self.line, self.col = message, line, col


@cache
def _cel() -> Any:
    """The CEL library, loaded by the first expression: its native code takes ~6 MB resident,
    which an agent whose goals have no expression never maps."""
    from cel_expr_python import cel  # noqa: PLC0415 - see the docstring

    return cel


def _scalar(kind: VarType) -> Any:
    t = _cel().Type
    return {"string": t.STRING, "bool": t.BOOL, "int": t.INT, "double": t.DOUBLE}[kind]


@lru_cache(maxsize=256)
def _env(decls: Decls) -> Any:
    t = _cel().Type
    facts = t.Map(t.STRING, t.Map(t.STRING, t.DYN))
    variables = {"services": facts, "probes": facts, "nodes": facts}
    variables.update({name: _scalar(kind) for name, kind in decls})
    return _cel().NewEnv(variables=variables)


def _located(err: Exception) -> ExprError:
    text = str(err)
    found = _LOCATION.search(text)
    if found is None:
        return ExprError(text.removeprefix("INVALID_ARGUMENT: ").strip())
    return ExprError(found.group(3).strip(), int(found.group(1)), int(found.group(2)))


@lru_cache(maxsize=8192)
def compile_expr(text: str, decls: Decls, want: VarType | None = "bool") -> Any:
    """Compile and type-check `text`; raise ExprError with the position inside the text."""
    try:
        program = _env(decls).compile(text)
    except RuntimeError as err:
        raise _located(err) from None
    got = program.return_type()
    if want is not None and got != _cel().Type.DYN and got != _scalar(want):
        raise ExprError(f"expression has type {got.name().lower()}, expected {want}")
    return program


def evaluate(text: str, decls: Decls, data: Mapping[str, object], want: VarType = "bool") -> Scalar:
    """Evaluate a compiled expression; any evaluation failure or a wrong type raises ExprError.

    The evaluator raises RuntimeError for some failures (iteration budget exceeded) and may
    raise others; each is a fault of the expression, never of the caller, so all are converted.
    """
    program = compile_expr(text, decls, want)
    try:
        result = program.eval(data=data)
    except Exception as err:  # any evaluator failure is the expression's fault
        raise ExprError(_plain(str(err)) or type(err).__name__) from None
    value = result.value()
    if result.type() == _cel().Type.ERROR:
        raise ExprError(_plain(str(value)))
    if not isinstance(value, str | bool | int | float) or not _fits(value, want):
        raise ExprError(f"expression gave {type(value).__name__}, expected {want}")
    return value


def _plain(message: str) -> str:
    """The evaluator's message without its status code (`INVALID_ARGUMENT: `) and tags."""
    return _STATUS.sub("", message).replace(" [INTERNAL]", "").strip()


def _fits(value: Scalar, want: VarType) -> bool:
    if want == "bool" or isinstance(value, bool):
        return want == "bool" and isinstance(value, bool)
    if want == "string":
        return isinstance(value, str)
    return isinstance(value, int) if want == "int" else isinstance(value, int | float)


_NODE_REFERENCE = re.compile(
    r"""\bnodes\[\s*["']([^"']+)["']\s*\]\s*\.\s*(services|probes)"""
    r"""(?:\.([A-Za-z_][\w]*)|\[\s*["']([^"']+)["']\s*\])"""
)


@lru_cache(maxsize=8192)
def node_references(text: str) -> tuple[tuple[str, str, str], ...]:
    """The (node, `services`|`probes`, name) triples an expression names literally."""
    return tuple(
        (m.group(1), m.group(2), m.group(3) or m.group(4)) for m in _NODE_REFERENCE.finditer(text)
    )


@lru_cache(maxsize=8192)
def references(text: str) -> tuple[tuple[str, str], ...]:
    """The (`services`|`probes`, name) pairs an expression names literally."""
    found = _REFERENCE.finditer(_NODE_REFERENCE.sub("", text))
    return tuple((m.group(1), m.group(2) or m.group(3)) for m in found)
