"""The least a D-Bus client can do for a dead unit: StartUnit the moment systemd's signal says
it went down. No journal, no policy, no decision: the floor any supervisor that restarts
through systemd's API stands on (systemd_bench measures the agent beside it).

Usage: python -m bench.dbus_restarter UNIT (on $DBUS_SESSION_BUS_ADDRESS); prints "ready".
"""

from __future__ import annotations

import asyncio
import os
import sys

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from agent.adapters.systemd.protocol import (
    MANAGER,
    MANAGER_PATH,
    PROPERTIES,
    SYSTEMD,
    UNIT,
    unit_path,
)

DOWN = ("failed", "inactive")


def start_unit(unit: str) -> Message:
    """A StartUnit call for `unit` (mode "replace"), as the agent sends it."""
    return Message(destination=SYSTEMD, path=MANAGER_PATH, interface=MANAGER,
                   member="StartUnit", signature="ss", body=[unit, "replace"])  # fmt: skip


def get_property(path: str, interface: str, name: str) -> Message:
    """A Properties.Get call on one of systemd's objects."""
    return Message(destination=SYSTEMD, path=path, interface=PROPERTIES, member="Get",
                   signature="ss", body=[interface, name])  # fmt: skip


async def subscribe(bus: MessageBus, path: str) -> None:
    """Have systemd send `path`'s PropertiesChanged signals to `bus`."""
    rule = f"type='signal',path='{path}',interface='{PROPERTIES}'"
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                           body=[rule]))  # fmt: skip
    await bus.call(Message(destination=SYSTEMD, path=MANAGER_PATH, interface=MANAGER,
                           member="Subscribe"))  # fmt: skip


async def restart_on_death(unit: str) -> None:
    """Serve until the bus goes away."""
    bus = await MessageBus(bus_address=os.environ["DBUS_SESSION_BUS_ADDRESS"]).connect()
    path = unit_path(unit)
    start = start_unit(unit)
    calls: set[asyncio.Task[Message]] = set()

    def on_message(msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL or msg.path != path:
            return
        if msg.member != "PropertiesChanged" or msg.body[0] != UNIT:
            return
        state = msg.body[1].get("ActiveState")
        if state is not None and state.value in DOWN:
            call = asyncio.create_task(bus.call(start))
            calls.add(call)
            call.add_done_callback(calls.discard)

    bus.add_message_handler(on_message)
    await subscribe(bus, path)
    print("ready", flush=True)
    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    asyncio.run(restart_on_death(sys.argv[1]))
