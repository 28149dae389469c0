"""Setpoint: a reconciliation daemon for systemd hosts."""

__version__ = "0.1.0"
