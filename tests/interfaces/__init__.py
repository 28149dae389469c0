"""Tests of what people and programs read: metrics (promtool), logs."""
