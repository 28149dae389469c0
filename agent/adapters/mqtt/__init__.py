"""Adapters / MQTT: the broker link, the state projection, commands and their options."""
