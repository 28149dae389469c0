"""Tests of each adapter against its real peer (systemd, mosquitto, Alertmanager, HTTP, exec)."""
