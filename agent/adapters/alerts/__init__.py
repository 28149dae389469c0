"""Adapters / alerts: delivering alerts to Alertmanager, webhooks, MQTT and the log."""
