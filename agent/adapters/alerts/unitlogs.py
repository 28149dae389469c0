"""Adapters / alerts: the failing unit's last journal lines on an alert about a service.

At delivery time (the core stays pure: its alert names the service), a firing alert about a
service that died, sits in Error, hit its restart limit or thrashes carries the lines of the
invocation that ended last; one about a service that is unhealthy or slow to start or stop, the
lines of the running invocation. They are read once per firing alert (every sink and every
reminder gets the same lines) by a reader the app supplies (adapters.systemd.unitlog). When the
journal cannot be read, the alert goes out without logs and one log line says why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agent.core.actions import Alert
from agent.core.alerts import Builtin
from agent.errors import SetpointError

log = logging.getLogger("setpoint.alert.logs")

Reader = Callable[[str, bool], Awaitable[dict[str, Any]]]
"""(unit, ended) -> {"unit", "invocation", "lines", "truncated"}; raises SetpointError."""
ENDED = frozenset({Builtin.SERVICE_ERROR, Builtin.RESTART_LIMIT_REACHED, Builtin.SERVICE_THRASHING})
RUNNING = frozenset(
    {
        Builtin.SERVICE_UNHEALTHY,
        Builtin.SERVICE_STARTING_TOO_LONG,
        Builtin.SERVICE_STOPPING_TOO_LONG,
    }
)
KEEP = 256
"""Alerts whose lines are remembered (the oldest are forgotten beyond)."""


class AlertLogs:
    """The unit log lines of service alerts, read once per firing alert and remembered."""

    def __init__(self, read: Reader, unit_of: Callable[[str], str | None]) -> None:
        self._read = read
        self._unit_of = unit_of
        self._reads: dict[str, tuple[float, asyncio.Task[dict[str, Any] | None]]] = {}

    async def for_alert(self, alert: Alert) -> dict[str, Any] | None:
        """The lines for a firing service alert, or None (not one, or the journal failed)."""
        if not alert.firing or alert.name not in ENDED | RUNNING:
            return None
        unit = self._unit_of(alert.subject)
        if unit is None:
            return None
        held = self._reads.get(alert.fingerprint)
        if held is None or held[0] != alert.starts_at:
            task = asyncio.ensure_future(self._fetch(alert, unit))
            self._reads[alert.fingerprint] = held = (alert.starts_at, task)
            self._forget_old()
        return await asyncio.shield(held[1])

    def get(self, fingerprint: str) -> dict[str, Any] | None:
        """What was read for an alert, if anything (for the status view)."""
        held = self._reads.get(fingerprint)
        if held is None or not held[1].done() or held[1].cancelled():
            return None
        return held[1].result()

    async def _fetch(self, alert: Alert, unit: str) -> dict[str, Any] | None:
        try:
            return await self._read(unit, alert.name in ENDED)
        except SetpointError as err:
            log.warning("alert %s about %s goes out without unit logs: %s", alert.name,
                        alert.subject, err)  # fmt: skip
            return None

    def _forget_old(self) -> None:
        while len(self._reads) > KEEP:
            del self._reads[next(iter(self._reads))]
