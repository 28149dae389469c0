"""Interfaces: what people and programs talk to (HTTP, control socket, sd_notify, logs, metrics)."""
