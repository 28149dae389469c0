"""Goals: The JSON Schema of goal files, for editors (`setpoint schema`)."""

from __future__ import annotations

from typing import Any

from agent.goals.model import GoalFile


def goals_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of one goal file, generated from the pydantic models."""
    schema = _tidy(GoalFile.model_json_schema(by_alias=True, mode="validation"))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://setpoint.invalid/schema/goals-v1.json",
        "title": "Setpoint goal file (apiVersion: setpoint/v1)",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def _tidy(node: Any) -> Any:
    """Names must match their pattern; `default: null` only means "see the docs"."""
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    if not isinstance(node, dict):
        return node
    tidy = {k: _tidy(v) for k, v in node.items() if not (k == "default" and v is None)}
    if "patternProperties" in tidy:
        tidy.setdefault("additionalProperties", False)
    return tidy
