"""Adapters / effects: what domain and route transitions do (exec, HTTP, file)."""
