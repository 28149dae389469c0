"""Adapters / mqtt: The agent's MQTT link (aiomqtt): one supervised task that keeps a broker
connection.

    setpoint/<host>/status              retained "online" / "offline" (also the last will)
    setpoint/<host>/services|domains|routes/<name>   retained state (see .projection)
    setpoint/<host>/alerts/<alertname>  alerts from mqtt sinks (QoS 1, adapters.alerts.sinks)
    setpoint/<host>/commands[/response] optional operator commands (see .commands)
    homeassistant/...                   optional Home Assistant discovery (see .discovery)

The broker may be down at start or go away at any time: the link reconnects with exponential
backoff and the agent keeps reconciling. Retained state is republished on every connect (the
latest value per topic, nothing in between). Alerts and mqtt effects are tracked actions: a
publish succeeds only once the broker acknowledged it (QoS 1), otherwise it raises
TransientError and the lane, then the core, retry it. The password is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import Callable

import aiomqtt

from agent.adapters.edge import effect_action, publish_topic
from agent.adapters.mqtt import commands as mqtt_commands
from agent.adapters.mqtt.config import MqttConfig
from agent.adapters.mqtt.discovery import Discovery
from agent.adapters.mqtt.projection import Projection
from agent.core.actions import TrackedAction
from agent.core.inputs import Input, OperatorCommand
from agent.core.state import State
from agent.errors import PermanentError, TransientError

log = logging.getLogger("setpoint.mqtt")


class _Session:
    """One live connection."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.ended = asyncio.Event()


class MqttLink:
    """Owns the broker connection; adapters publish through it."""

    def __init__(
        self,
        config: MqttConfig,
        hostname: str,
        *,
        submit: Callable[[Input], None] = lambda _inp: None,
        services: Callable[[], set[str]] = set,
        clock: Callable[[], float] = time.time,
        timeout: float = 10.0,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.config = config
        self.prefix = f"setpoint/{hostname}"
        self._submit = submit
        self._services = services
        self._clock = clock
        self._timeout = timeout
        self._backoff = backoff
        self._session: _Session | None = None
        self._up = asyncio.Event()
        self._wake = asyncio.Event()
        self._retained: dict[str, bytes] = {}
        self._dirty: dict[str, bytes] = {}
        discovery = None
        if config.discovery is not None:
            discovery = Discovery(config.discovery, hostname, self.prefix)
        self._projection = Projection(self.prefix, discovery)
        self._tls: ssl.SSLContext | None = None
        self.inflight = 0
        self.connects = 0
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._session is not None

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to `timeout` for the broker connection; whether it is up."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._up.wait()
        return self._session is not None

    def topic(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    # -- retained state ---------------------------------------------------------------------

    def on_commit(self, state: State) -> None:
        """Runtime hook: queue retained updates for what changed in the committed state."""
        for topic, payload in self._projection.changes(state):
            self.retain(topic, payload)

    def retain(self, topic: str, payload: bytes) -> None:
        """Publish `payload` retained now or on the next connect (latest value wins)."""
        if payload:
            self._retained[topic] = payload
        else:
            self._retained.pop(topic, None)
        self._dirty[topic] = payload
        self._wake.set()

    # -- tracked publishes ------------------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, wait: float = 2.0
    ) -> None:
        """QoS 1; returns once the broker acknowledged. TransientError otherwise."""
        session = self._session
        if session is None and self._closed:
            raise TransientError("MQTT link closed (the agent is stopping)")
        if session is None:
            await self.wait_connected(wait)
            session = self._session
            if session is None:
                raise TransientError(f"MQTT broker {self.config.where} not connected")
        self.inflight += 1
        try:
            await self._acked(session, topic, payload, retain)
        finally:
            self.inflight -= 1

    async def _acked(self, session: _Session, topic: str, payload: bytes, retain: bool) -> None:
        sending = asyncio.ensure_future(
            session.client.publish(topic, payload, qos=1, retain=retain, timeout=math.inf)
        )
        lost = asyncio.ensure_future(session.ended.wait())
        try:
            done, _ = await asyncio.wait(
                (sending, lost), timeout=self._timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
            if not sending.done():
                sending.cancel()
        if sending not in done:
            why = "connection lost" if lost in done else "no acknowledgement in time"
            raise TransientError(f"MQTT publish to {topic}: {why}")
        try:
            sending.result()
        except aiomqtt.MqttError as err:
            raise TransientError(f"MQTT publish to {topic}: {err}") from None

    async def effect(self, action: TrackedAction) -> str:
        """Executor of the `mqtt` lane: a route or domain effect's message (route ones retained)."""
        effect = effect_action(action, "mqtt")
        topic = effect.fill(effect.effect.topic)
        payload = effect.fill(effect.effect.payload) or effect.target
        publish_topic(topic, f"mqtt effect {action.id}")
        await self.publish(topic, payload.encode(), retain=bool(effect.target))
        return f"published to {topic}"

    # -- the connection task ----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, reconnect with backoff; on `stop`, say offline and disconnect."""
        delay = self._backoff[0]
        while not stop.is_set():
            connects = self.connects
            try:
                await self._serve(stop)
            except aiomqtt.MqttError as err:
                if self.connects != connects:
                    delay = self._backoff[0]  # it was up: start the backoff again
                log.warning("MQTT broker %s: %s; retrying in %.1fs", self.config.where, err, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            delay = min(delay * 2, self._backoff[1])
        self._closed = True

    async def _serve(self, stop: asyncio.Event) -> None:
        client = aiomqtt.Client(
            self.config.host,
            self.config.port,
            username=self.config.username,
            password=self.config.password,
            will=aiomqtt.Will(self.topic("status"), b"offline", qos=1, retain=True),
            tls_context=await self._tls_context(),
            keepalive=self.config.keepalive,
            timeout=self._timeout,
            logger=logging.getLogger("setpoint.mqtt.client"),
        )
        async with client:
            session = _Session(client)
            try:
                await self._online(session, stop)
            finally:
                session.ended.set()
                self._session = None
                self._up.clear()

    async def _online(self, session: _Session, stop: asyncio.Event) -> None:
        client = session.client
        await client.publish(self.topic("status"), b"online", qos=1, retain=True)
        if self.config.commands is not None:
            await client.subscribe(self.topic("commands"), qos=1)
        self.connects += 1
        log.info("MQTT connected to %s as %s", self.config.where, self.prefix)
        self._dirty = {**self._retained, **self._dirty}
        self._wake.set()
        self._session = session
        self._up.set()
        tasks: tuple[asyncio.Task[None], ...] = (
            asyncio.create_task(self._flush(client), name="mqtt-flush"),
            asyncio.create_task(self._listen(client), name="mqtt-listen"),
        )
        stopping: asyncio.Task[bool] = asyncio.create_task(stop.wait(), name="mqtt-stop")
        try:
            done, _ = await asyncio.wait((*tasks, stopping), return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task in done:
                    task.result()  # MqttError when the connection dropped
                    raise aiomqtt.MqttError("connection closed")
            await self._drain()
        finally:
            for pending in (*tasks, stopping):
                pending.cancel()
            await asyncio.gather(*tasks, stopping, return_exceptions=True)
        await client.publish(self.topic("status"), b"offline", qos=1, retain=True, timeout=2)
        log.info("MQTT: published offline, disconnecting")

    async def _drain(self, grace: float = 5.0) -> None:
        """Let acknowledged-publish waits finish before going offline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline:
            if not (self.inflight or self._dirty):
                return
            await asyncio.sleep(0.02)

    async def _tls_context(self) -> ssl.SSLContext | None:
        if not self.config.tls:
            return None
        if self._tls is None:
            cafile = str(self.config.ca_file) if self.config.ca_file else None
            self._tls = await asyncio.to_thread(ssl.create_default_context, cafile=cafile)
        return self._tls

    async def _flush(self, client: aiomqtt.Client) -> None:
        """Publish queued retained updates; on failure they stay queued for the next connect."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._dirty = self._dirty, {}
            try:
                await asyncio.gather(
                    *(client.publish(t, p, qos=1, retain=True) for t, p in batch.items())
                )
            except BaseException:
                self._dirty = {**batch, **self._dirty}
                raise

    async def _listen(self, client: aiomqtt.Client) -> None:
        """Read commands; the iterator also raises MqttError when the connection drops."""
        async for message in client.messages:
            if message.topic.matches(self.topic("commands")):
                await self._command(client, message)

    async def _command(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        policy = self.config.commands
        if policy is None:
            return
        raw = message.payload
        payload = bytes(raw) if isinstance(raw, bytes | bytearray) else b""
        if not payload:
            return  # someone cleared a retained message on the command topic
        request, ident, error = mqtt_commands.authorise(
            payload, message.retain, self._services(), policy
        )
        if request is None:
            log.warning("MQTT command rejected: %s", error)
        else:
            log.info("MQTT command accepted: %s %s", request.command, request.service)
            self._submit(OperatorCommand(request.command, self._clock(), request.service))
        answer = mqtt_commands.reply(request, ident, error)
        await client.publish(self.topic("commands", "response"), answer, qos=1)


async def no_broker(action: TrackedAction) -> str:
    """The `mqtt` lane when no broker is configured."""
    raise PermanentError(f"action {action.id}: no MQTT broker configured (setpoint run --mqtt-url)")
