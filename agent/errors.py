"""Errors: Setpoint's error tree. Adapters convert library exceptions into these at their edge.

    SetpointError
    ├── ConfigError            goal files: carries every problem found, each with file:line:col
    ├── JournalError           the journal cannot be used as it is
    │   ├── JournalLocked      another agent holds the state directory
    │   └── JournalCorrupt     unreadable, wrong schema, or failed integrity check
    └── EffectError            an effect did not achieve its purpose
        ├── TransientError     worth retrying (timeouts, connection refused, bus dropped)
        └── PermanentError     retrying cannot help (no such unit, masked, bad argv)
            └── NotPermitted   the manager refused us (polkit rule, AccessDenied)

Retryability is a property of the type, never decided by a blanket `except Exception`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One error in a goal file, located at `file:line:col` (1-based)."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class SetpointError(Exception):
    """Base of every error Setpoint raises on purpose."""


class ConfigError(SetpointError):
    """Goal files are invalid; `problems` lists all of them, sorted by place."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.col, p.message))
        super().__init__("\n".join(str(p) for p in self.problems))


class JournalError(SetpointError):
    """The journal cannot be used as it is."""


class JournalLocked(JournalError):
    """Another agent holds the state directory."""


class JournalCorrupt(JournalError):
    """The journal is unreadable, of an unknown schema, or fails its integrity check."""


class EffectError(SetpointError):
    """An effect did not achieve its purpose."""


class TransientError(EffectError):
    """Retrying may help."""


class PermanentError(EffectError):
    """Retrying cannot help."""


class NotPermitted(PermanentError):
    """The manager refused: this agent may not do that (polkit, AccessDenied)."""
