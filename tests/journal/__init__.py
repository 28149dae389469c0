"""Tests of the journal on real SQLite files, and of its codec."""
