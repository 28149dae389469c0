"""Goals: `load_goals`: files and directories in, one validated GoalSet out, or every problem found.

Checking runs in two phases. First each file on its own: reading, YAML, apiVersion, schema.
If any file fails there, its problems are reported and cross-file checks are skipped (they would
only repeat the damage as unknown names). Then, over the merged files: names defined twice,
references, dependency cycles and the domains' CEL.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import ValidationError

from agent.core.spec import GoalSet
from agent.errors import ConfigError, Problem
from agent.goals import checks, expressions, phases
from agent.goals.build import build
from agent.goals.merged import duplicate_keys, merge
from agent.goals.model import API_VERSION, MAX_ITEMS, GoalFile
from agent.goals.problems import from_validation, short
from agent.goals.yamlsafe import Doc, problem_at, read

SUFFIXES = (".yaml", ".yml")
MAX_PROBLEMS = 100


def load_goals(
    paths: Sequence[str | Path], *, broker: bool = True, warnings: list[Problem] | None = None
) -> GoalSet:
    """Load, validate and merge goal files; a directory means its *.yaml and *.yml files.

    `broker=False` (an agent without MQTT) makes every MQTT sink and effect a problem.
    Raises ConfigError carrying every problem found, each at `file:line:col`. `warnings`
    receives what is valid but will not work under the shipped unit's sandbox.
    """
    files, problems = discover(paths)
    valid: list[tuple[Doc, GoalFile]] = []
    for path, shown in files:
        try:
            doc = read(path, shown)
        except ConfigError as err:
            problems += err.problems
            continue
        model, found = validate(doc)
        problems += found
        if model is not None:
            valid.append((doc, model))
    if problems:
        raise ConfigError(capped(problems))
    merged, problems = merge(valid, MAX_ITEMS)
    later = itertools.chain(
        problems,
        checks.references(merged),
        checks.cycles(merged.services),
        expressions.check_domains(merged),
        phases.check_phases(merged),
        () if broker else checks.broker_needed(merged),
    )
    problems = capped(later)
    if problems:
        raise ConfigError(problems)
    if warnings is not None:
        warnings.extend(checks.sandbox(merged))
    return build(merged)


def capped(problems: Iterable[Problem]) -> list[Problem]:
    """At most MAX_PROBLEMS problems; past that, one note saying the rest were not checked."""
    found = list(itertools.islice(problems, MAX_PROBLEMS + 1))
    if len(found) > MAX_PROBLEMS:
        last = found.pop()
        note = f"too many problems; stopped after {MAX_PROBLEMS}"
        found.append(Problem(last.file, last.line, last.col, note))
    return found


def discover(paths: Sequence[str | Path]) -> tuple[list[tuple[Path, str]], list[Problem]]:
    """The files to read, in order, each once, with the name to show in messages."""
    files: list[tuple[Path, str]] = []
    problems: list[Problem] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
        elif path.is_file():
            found = [path]
        else:
            reason = "not a regular file" if path.exists() else "no such file or directory"
            problems.append(Problem(str(given), 1, 1, reason))
            continue
        for file in found:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                files.append((file, str(file)))
    return files, problems


def validate(doc: Doc) -> tuple[GoalFile | None, list[Problem]]:
    """The file's model, or the problems that keep it from being one."""
    problems = duplicate_keys(doc)
    version = _version(doc)
    if version is not None:
        return None, [*problems, version]
    try:
        model = GoalFile.model_validate(doc.data)
    except ValidationError as err:
        return None, problems + from_validation(doc, err, MAX_PROBLEMS + 1)
    return (None if problems else model), problems


def _version(doc: Doc) -> Problem | None:
    """A problem when the file is not a mapping with `apiVersion: setpoint/v1`."""
    wanted = f"'apiVersion: {API_VERSION}'"
    top = doc.values.get(())
    if doc.data is None:
        return Problem(doc.file, 1, 1, f"empty file: expected a mapping with {wanted}")
    if not isinstance(doc.data, dict):
        return problem_at(doc.file, top, "expected a mapping at the top level")
    if "apiVersion" not in doc.data:
        return problem_at(doc.file, top, f"missing apiVersion: expected {wanted}")
    version = doc.data["apiVersion"]
    if version != API_VERSION:
        message = f"unsupported apiVersion {short(version)}: expected '{API_VERSION}'"
        return problem_at(doc.file, doc.values.get(("apiVersion",)), message)
    return None
