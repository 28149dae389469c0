"""Adapters: the edges to the outside world."""
