"""Goals: Turn pydantic's validation errors into `file:line:col: message` problems at the right
node."""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable
from datetime import date
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from yaml.nodes import Node

from agent.errors import Problem
from agent.goals.model import NAME_PATTERN, GoalFile
from agent.goals.yamlsafe import Doc, PathKey, problem_at

_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
_WORDS.update({list: "a list", dict: "a mapping", type(None): "null"})
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_BOUNDS = {
    "greater_than": "greater than {gt}",
    "greater_than_equal": "at least {ge}",
    "less_than": "less than {lt}",
    "less_than_equal": "at most {le}",
}


def did_you_mean(word: object, known: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest known word, or an empty string."""
    found = difflib.get_close_matches(str(word)[:128], sorted(known), n=1, cutoff=0.6)
    return f"; did you mean '{found[0]}'?" if found else ""


def short(value: object) -> str:
    """A repr cut to a readable length (hostile files may hold huge values)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(value: object) -> str:
    """What a YAML value is, in YAML's words."""
    if isinstance(value, date):
        return "a timestamp"
    return _WORDS.get(type(value), type(value).__name__)


def from_validation(doc: Doc, err: ValidationError, limit: int) -> list[Problem]:
    """One problem per pydantic error (the first `limit`), at the YAML node it is about."""
    return [_problem(doc, detail) for detail in err.errors()[:limit]]


def _problem(doc: Doc, detail: ErrorDetails) -> Problem:
    loc = tuple(detail["loc"])
    kind = detail["type"]
    if loc and loc[-1] == "[key]":
        return problem_at(doc.file, _key(doc, loc[:-1]), _key_message(detail))
    if kind == "missing":
        return problem_at(doc.file, _key(doc, loc[:-1]), f"missing required field '{loc[-1]}'")
    if kind == "extra_forbidden":
        message = f"unknown key {short(loc[-1])}{_hint(loc)}"
        return problem_at(doc.file, _key(doc, loc), message)
    if kind == "value_error":
        message = str(detail.get("ctx", {}).get("error", detail["msg"]))
        if isinstance(detail["input"], dict):
            return problem_at(doc.file, _key(doc, loc), message)
        named = not loc or message.startswith(f"{loc[-1]} ")
        text = message if named else f"{_label(loc)}: {message}"
        return problem_at(doc.file, _value(doc, loc), text)
    return problem_at(doc.file, _value(doc, loc), f"{_label(loc)}: {_message(detail)}")


def _message(detail: ErrorDetails) -> str:
    kind, ctx, value = detail["type"], detail.get("ctx", {}), detail["input"]
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {describe(value)}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"invalid value {short(value)}; expected {ctx.get('expected')}" + did_you_mean(
            value, choices
        )
    if kind in _BOUNDS:
        bounds = {k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()}
        return f"must be {_BOUNDS[kind].format(**bounds)}, got {short(value)}"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"has too many entries (at most {ctx.get('max_length')})"
    if kind == "string_too_long":
        return f"is too long (more than {ctx.get('max_length')} characters)"
    if kind == "string_pattern_mismatch":
        return _pattern_message(value, str(ctx.get("pattern", "")))
    return str(detail["msg"])


def _pattern_message(value: object, pattern: str) -> str:
    if pattern == NAME_PATTERN:
        return (
            f"invalid name {short(value)}: use letters, digits, '_', '.', '@', '-', "
            "starting with a letter or digit, at most 128 characters"
        )
    if pattern.startswith("^https?"):
        return f"invalid URL {short(value)}: expected http://... or https://..."
    if "[A-Za-z_]" in pattern:
        return f"invalid environment variable name {short(value)}"
    return f"{short(value)} does not match {pattern}"


def _key_message(detail: ErrorDetails) -> str:
    if detail["type"] in _EXPECTED:
        return f"expected a name (a string) as key, got {describe(detail['input'])}"
    return _message(detail)


def _label(loc: PathKey) -> str:
    """`unit`, `probes[0]`: the last named step of `loc` and the list positions after it."""
    for i in range(len(loc) - 1, -1, -1):
        if isinstance(loc[i], str):
            return str(loc[i]) + "".join(f"[{p}]" for p in loc[i + 1 :])
    return "value"


def _value(doc: Doc, loc: PathKey) -> Node | None:
    """The node at `loc`, or at its nearest ancestor that exists."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in doc.values:
            return doc.values[loc[:end]]
    return None


def _key(doc: Doc, loc: PathKey) -> Node | None:
    """The key naming `loc` when there is one (a mapping entry), else its value node."""
    return doc.keys.get(loc) or _value(doc, loc)


def _hint(loc: PathKey) -> str:
    """Did-you-mean for an unknown key, from the fields the model at that place accepts."""
    model = _model_at(loc[:-1])
    if model is None:
        return ""
    known = [field.alias or name for name, field in model.model_fields.items()]
    hint = did_you_mean(loc[-1], known)
    return hint or f"; expected one of: {', '.join(known)}"


def _model_at(path: PathKey) -> type[BaseModel] | None:
    kind: Any = GoalFile
    for part in path:
        kind = _child(_strip(kind), part)
        if kind is None:
            return None
    kind = _strip(kind)
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _child(kind: Any, part: object) -> Any:
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        fields = kind.model_fields.items()
        return next((f.annotation for n, f in fields if (f.alias or n) == part), None)
    origin = get_origin(kind)
    if origin is dict:
        return get_args(kind)[1]
    if origin is list:
        return get_args(kind)[0]
    return None


def _strip(kind: Any) -> Any:
    """Annotated[X, ...] -> X and X | None -> X."""
    while True:
        origin = get_origin(kind)
        if origin is Annotated:
            kind = get_args(kind)[0]
        elif origin in (Union, types.UnionType):
            rest = [a for a in get_args(kind) if a is not type(None)]
            if len(rest) != 1:
                return kind
            kind = rest[0]
        else:
            return kind
