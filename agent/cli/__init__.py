"""CLI: the `setpoint` command."""
