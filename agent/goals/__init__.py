"""Goals: The goal-file edge: YAML in, the core's frozen GoalSet out (or every problem, located)."""

from agent.goals.loader import load_goals
from agent.goals.schema import goals_schema

__all__ = ["goals_schema", "load_goals"]
