"""Tests of the goal-file edge: YAML, schema, CEL checks, file:line:col."""
