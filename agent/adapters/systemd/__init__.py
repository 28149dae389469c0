"""Adapters / systemd: units over D-Bus (observe, run jobs) and the polkit rule for them."""
