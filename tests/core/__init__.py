"""Tests of the pure core: table-driven, and seeded simulations with invariants after every step."""
