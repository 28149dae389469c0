"""Tests of the whole agent as a process (and the runtime wired as the app wires it)."""
