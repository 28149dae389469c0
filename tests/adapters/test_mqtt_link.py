"""The MQTT link in-process (under the blocking-call detector) against a real mosquitto."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from agent.adapters.mqtt.config import MqttConfig
from agent.adapters.mqtt.link import MqttLink
from agent.core.actions import Owner, RunEffect
from agent.core.inputs import GoalsLoaded
from agent.core.spec import Effect, GoalSet
from agent.core.state import State
from agent.core.step import step
from agent.errors import PermanentError, TransientError
from tests.agentproc import free_port, wait_until_async
from tests.brokers import Mosquitto, Watcher
from tests.corekit import service


async def test_publish_without_a_broker_is_transient() -> None:
    link = MqttLink(MqttConfig("127.0.0.1", free_port()), "h", backoff=(0.05, 0.1))
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(stop), name="mqtt")
    try:
        with pytest.raises(TransientError, match="not connected"):
            await link.publish("setpoint/h/x", b"1", wait=0.2)
        effect = RunEffect(1, Effect("mqtt", topic="a/#"), Owner("domain", "D"), "T")
        with pytest.raises(PermanentError, match="invalid MQTT topic"):
            await link.effect(effect)
    finally:
        stop.set()
        await task
    with pytest.raises(TransientError, match="closed"):
        await link.publish("setpoint/h/x", b"1")


async def test_link_publishes_state_effects_and_goes_offline(mosquitto: Mosquitto) -> None:
    host = f"l-{uuid.uuid4().hex[:8]}"
    watch = await asyncio.to_thread(Watcher, mosquitto.port, f"setpoint/{host}/#", f"r/{host}")
    link = MqttLink(MqttConfig("127.0.0.1", mosquitto.port), host)
    state, _ = step(State(), GoalsLoaded(GoalSet(services=(service("web"),)), 0.0))
    link.on_commit(state)  # before the connection: queued, published on connect
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(stop), name="mqtt")
    try:
        assert await link.wait_connected(10)
        await wait_until_async(
            lambda: watch.doc(f"setpoint/{host}/services/web") is not None, 30, "the state"
        )
        effect = Effect("mqtt", topic="r/{target}", payload="to {target}")
        route = RunEffect(2, effect, Owner("group", "g"), "route", host)
        assert await link.effect(route) == f"published to r/{host}"
        await wait_until_async(
            lambda: watch.payload(f"r/{host}") == f"to {host}".encode(), 30, "the effect"
        )
        assert watch.last(f"r/{host}").retain is False  # type: ignore[union-attr] # live
    finally:
        stop.set()
        await task
    await wait_until_async(
        lambda: watch.payload(f"setpoint/{host}/status") == b"offline", 30, "offline status"
    )
    await asyncio.to_thread(watch.close)
