"""Adapters / alerts: Alert sinks: Alertmanager API v2, webhook, MQTT. Executors for the
`alert:<sink>` lanes (the core's SendAlert) and for the `alert` lane (alert effects of domain
and route transitions).

Library errors become TransientError (connection refused, timeouts, 5xx, 429) or
PermanentError (other 4xx, bad configuration) here, at the edge. Every alert carries the labels
alertname, severity, subject and host. A webhook may be signed: `X-Setpoint-Signature:
sha256=<hex HMAC-SHA256 of the body>` with the secret from the environment variable the sink
names (read at send time, never logged). A firing alert about a service may carry that unit's
last journal lines (.unitlogs): `logs` in the webhook/MQTT document, the `logs` annotation
(its newest AM_LOGS_BYTES) for Alertmanager.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

import aiohttp

from agent.adapters.alerts.log import log_alert
from agent.adapters.alerts.unitlogs import AlertLogs
from agent.adapters.edge import http_outcome, publish_topic
from agent.core.actions import Alert, RunEffect, SendAlert, TrackedAction
from agent.core.alerts import EXPIRY, effect_alert
from agent.core.spec import AlertSink
from agent.errors import EffectError, PermanentError, TransientError
from agent.journal.reports import utc_iso

log = logging.getLogger("setpoint.sinks")
HOST_LABEL = "host"
SIGNATURE_HEADER = "X-Setpoint-Signature"
AM_LOGS_BYTES = 1024
"""Most bytes of unit log lines in an Alertmanager annotation (the newest are kept)."""


def rfc3339(ts: float) -> str:
    """UTC, millisecond precision, `Z` suffix."""
    return utc_iso(ts, z=True)


def labels_of(alert: Alert, host: str) -> dict[str, str]:
    """The alert's labels plus the host's."""
    return {**dict(alert.labels), HOST_LABEL: host}


def ends_at(alert: Alert, now: float) -> float:
    """Firing: a future end (re-sent before it passes); resolved: when it was resolved."""
    if alert.firing:
        return alert.ends_at if alert.ends_at > now else now + EXPIRY
    return alert.ends_at or now


def alertmanager_body(
    alert: Alert, host: str, now: float, generator_url: str, logs: dict[str, Any] | None = None
) -> bytes:
    """POST /api/v2/alerts body: a list with one postable alert."""
    annotations = {"summary": alert.summary}
    if logs is not None:
        annotations["logs"] = logs_annotation(logs["lines"])
        annotations["invocation"] = logs["invocation"]
    doc = {
        "labels": labels_of(alert, host),
        "annotations": annotations,
        "startsAt": rfc3339(alert.starts_at),
        "endsAt": rfc3339(ends_at(alert, now)),
        "generatorURL": generator_url,
    }
    return json.dumps([doc], sort_keys=True).encode()


def logs_annotation(lines: list[str]) -> str:
    """The newest lines within AM_LOGS_BYTES, joined; a leading "…" when some were left out."""
    body = "\n".join(lines).encode()
    if len(body) <= AM_LOGS_BYTES:
        return body.decode()
    tail = body[-(AM_LOGS_BYTES - 3) :].decode("utf-8", "ignore")
    return "…" + tail


def alert_doc(
    alert: Alert, host: str, now: float, logs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON document webhooks and MQTT receive."""
    extra = {"logs": logs} if logs is not None else {}
    return {
        **extra,
        "status": "firing" if alert.firing else "resolved",
        "fingerprint": alert.fingerprint,
        "labels": labels_of(alert, host),
        "summary": alert.summary,
        "severity": alert.severity,
        "startsAt": rfc3339(alert.starts_at),
        "endsAt": rfc3339(ends_at(alert, now)),
    }


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class Publisher(Protocol):
    """What an MQTT sink needs of a broker link (the app passes the MQTT adapter's)."""

    def topic(self, *parts: str) -> str: ...

    async def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, wait: float = 2.0
    ) -> None: ...


class Sinks:
    """Delivers alerts to the sinks the current goals define."""

    def __init__(
        self,
        sinks: Callable[[], Sequence[AlertSink]],
        hostname: str,
        *,
        mqtt: Publisher | None = None,
        generator_url: str = "",
        clock: Callable[[], float] = time.time,
        env: Mapping[str, str] = os.environ,
        timeout: float = 10.0,
        to_wall: Callable[[float], float] | None = None,
        logs: AlertLogs | None = None,
    ) -> None:
        self._sinks = sinks
        self.logs = logs
        self._to_wall = to_wall
        """Readings of `clock` as wall time (agent.runtime.clock); what Alertmanager reads."""
        self.hostname = hostname
        self.mqtt = mqtt
        self.generator_url = generator_url or f"http://{hostname}/"
        self._clock = clock
        self._env = env
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, action: TrackedAction) -> str:
        """Executor of the `alert:<sink>` lanes."""
        if not isinstance(action, SendAlert):
            raise PermanentError(f"action {action.id} is not an alert delivery")
        sink = next((s for s in self._sinks() if s.name == action.sink), None)
        if sink is None:
            raise PermanentError(f"no alert sink named {action.sink!r} in the goals")
        return await self.deliver(sink, action.alert, action.id)

    async def effect(self, action: TrackedAction) -> str:
        """Executor of the `alert` lane: to the effect's sink, or every sink, or the log."""
        if not isinstance(action, RunEffect) or action.effect.kind != "alert":
            raise PermanentError(f"action {action.id} is not an alert effect")
        sinks = [s for s in self._sinks() if action.effect.sink in ("", s.name)]
        if not sinks:
            if action.effect.sink:
                raise PermanentError(f"no alert sink named {action.effect.sink!r} in the goals")
            return await log_alert(action)
        alert = effect_alert(action, self._clock())
        results = await asyncio.gather(
            *(self.deliver(s, alert, action.id) for s in sinks), return_exceptions=True
        )
        failed = [
            (s.name, r) for s, r in zip(sinks, results, strict=True) if isinstance(r, BaseException)
        ]
        for _name, err in failed:
            if not isinstance(err, EffectError):
                raise err
        if any(isinstance(err, TransientError) for _n, err in failed):
            raise TransientError("; ".join(f"{n}: {e}" for n, e in failed))
        if failed:
            raise PermanentError("; ".join(f"{n}: {e}" for n, e in failed))
        return "delivered to " + ", ".join(s.name for s in sinks)

    async def deliver(self, sink: AlertSink, alert: Alert, action_id: int) -> str:
        """One alert to one sink; TransientError or PermanentError when it is not accepted."""
        now = self._clock()
        lines = await self.logs.for_alert(alert) if self.logs is not None else None
        if (wall := self._to_wall) is not None:
            ends = wall(alert.ends_at) if alert.ends_at else 0.0
            alert, now = replace(alert, starts_at=wall(alert.starts_at), ends_at=ends), wall(now)
        if sink.kind == "alertmanager":
            url = sink.url.rstrip("/") + "/api/v2/alerts"
            body = alertmanager_body(alert, self.hostname, now, self.generator_url, lines)
            return await self._post(url, body, {})
        doc = alert_doc(alert, self.hostname, now, lines)
        body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        if sink.kind == "webhook":
            headers = {"X-Setpoint-Action-Id": str(action_id)}
            if sink.secret_env:
                headers[SIGNATURE_HEADER] = sign(self._secret(sink), body)
            return await self._post(sink.url, body, headers)
        return await self._publish(sink, alert, body)

    async def broadcast(self, alert: Alert) -> None:
        """Best effort, untracked: `alert` to every sink (or the log when there is none); for
        what cannot wait for the journal (it is the journal that fails)."""
        sinks = self._sinks()
        results = await asyncio.gather(
            *(self.deliver(s, alert, 0) for s in sinks), return_exceptions=True
        )
        for sink, result in zip(sinks, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("alert %s not delivered to %s: %s", alert.name, sink.name, result)
        if not sinks:
            log.warning("alert %s (%s): %s", alert.name, "firing" if alert.firing else
                        "resolved", alert.summary)  # fmt: skip

    def _secret(self, sink: AlertSink) -> bytes:
        value = self._env.get(sink.secret_env)
        if not value:
            raise PermanentError(
                f"webhook sink {sink.name}: environment variable {sink.secret_env} is not set"
            )
        return value.encode()

    async def _publish(self, sink: AlertSink, alert: Alert, body: bytes) -> str:
        if self.mqtt is None:
            raise PermanentError(f"mqtt sink {sink.name}: no MQTT broker configured (--mqtt-url)")
        base = [p for p in sink.topic.split("/") if p] or ["alerts"]
        topic = publish_topic(self.mqtt.topic(*base, alert.name), f"mqtt sink {sink.name}")
        await self.mqtt.publish(topic, body)
        return f"published to {topic}"

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Content-Type": "application/json", **headers}
        try:
            async with self._session.post(url, data=body, headers=headers) as resp:
                text = (await resp.content.read(512)).decode("utf-8", "replace")
        except aiohttp.InvalidURL as err:
            raise PermanentError(f"POST {url}: invalid URL ({err})") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise TransientError(f"POST {url}: {type(err).__name__}: {err}") from None
        return f"{http_outcome(f'POST {url}', resp.status, text)} from {url}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
