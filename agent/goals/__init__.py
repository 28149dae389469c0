"""Goals: The goal-file edge: YAML in, the core's frozen GoalSet out (or every problem, located).

`load_goals` and `goals_schema` are imported on first use: a process that only needs
`agent.goals.isolated` (the daemon, which loads its goals in a child process) or
`agent.goals.durations` never imports YAML, pydantic or the goal models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.goals.loader import load_goals
    from agent.goals.schema import goals_schema

__all__ = ["goals_schema", "load_goals"]


def __getattr__(name: str) -> Any:
    if name == "load_goals":
        from agent.goals.loader import load_goals  # noqa: PLC0415 - pydantic on first use

        return load_goals
    if name == "goals_schema":
        from agent.goals.schema import goals_schema  # noqa: PLC0415 - pydantic on first use

        return goals_schema
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
