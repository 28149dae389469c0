"""The systemd unit cache (pure) against a model of systemd and its bus, in seeded simulation.

The model: each unit's truth changes; each change is emitted as two signals (the Service part,
then the Unit part) into one ordered bus queue; a resync is a ListUnitsByNames reply generated
when it is sent, then a GetAll(Service) reply generated when the first one has been read, both
ordered in the same queue behind the signals emitted before them. Signals can be lost and the
connection can drop. A light resync (the adapter's periodic one) asks for the Service
properties only of units whose row differs from the cache. Invariants after every step: the
published state of a unit never goes backwards (main_pid carries the truth's version); and once
the queue is drained after a deep resync that began after the last lost signal, the cache and
the last published state equal the truth.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import pytest

from agent.adapters.systemd.cache import SERVICE_PROPS, UNIT_PROPS, Seen, UnitCache

UNITS = ("a.service", "b.service", "c.service")
STATES = (("active", "running"), ("failed", "failed"), ("inactive", "dead"),
          ("activating", "start"), ("deactivating", "stop"))  # fmt: skip


def path_of(name: str) -> str:
    return "/unit/" + name.replace(".", "_")


@dataclass
class Truth:
    """systemd's view of one unit; `version` grows with every change and is the MainPID."""

    active: str = "inactive"
    sub: str = "dead"
    version: int = 1

    def unit_props(self) -> dict[str, object]:
        return {"ActiveState": self.active, "SubState": self.sub, "LoadState": "loaded"}

    def service_props(self) -> dict[str, object]:
        return {"Result": "success", "MainPID": self.version, "NRestarts": 0,
                "ExecMainCode": 0, "ExecMainStatus": 0}  # fmt: skip


@dataclass
class Resync:
    """One resync in flight: the seq when it began and the Unit rows once they arrived."""

    began: int
    epoch: int
    light: bool = False
    rows: dict[str, dict[str, object]] = field(default_factory=dict)


@dataclass
class Signal:
    name: str
    service: bool
    props: dict[str, object]


@dataclass
class Reply:
    """A resync reply: the Unit rows (first) or the Service properties (second)."""

    resync: Resync
    props: dict[str, dict[str, object]]
    services: bool


@dataclass
class World:
    rng: random.Random
    cache: UnitCache = field(default_factory=UnitCache)
    truth: dict[str, Truth] = field(default_factory=lambda: {u: Truth() for u in UNITS})
    queue: list[Signal | Reply] = field(default_factory=list)
    published: dict[str, int] = field(default_factory=dict)
    epoch: int = 0
    """Bumped when a signal is lost or the connection drops; a resync must begin after it."""
    repaired: bool = False
    """A resync that began in the current epoch has been read."""

    def emit(self, name: str, seen: Seen | None) -> None:
        if seen is None:
            return
        assert seen.main_pid >= self.published.get(name, 0), f"{name} went backwards"
        self.published[name] = seen.main_pid

    def change(self) -> None:
        name = self.rng.choice(UNITS)
        t = self.truth[name]
        t.active, t.sub = self.rng.choice(STATES)
        t.version += 1
        self.queue.append(Signal(name, True, t.service_props()))
        self.queue.append(Signal(name, False, t.unit_props()))

    def begin_resync(self, light: bool = False) -> None:
        rows = {u: self.truth[u].unit_props() for u in UNITS}
        self.queue.append(Reply(Resync(self.cache.seq, self.epoch, light), rows, services=False))

    def lose(self) -> None:
        signals = [i for i, msg in enumerate(self.queue) if isinstance(msg, Signal)]
        if signals:
            del self.queue[self.rng.choice(signals)]
            self.epoch += 1
            self.repaired = False

    def reconnect(self) -> None:
        self.queue.clear()
        self.epoch += 1
        self.repaired = False
        self.begin_resync()  # the adapter resyncs on every (re)connect

    def deliver(self) -> None:
        msg = self.queue.pop(0)
        if isinstance(msg, Signal):
            out = self.cache.signal(path_of(msg.name), msg.service, msg.props, ())
            for unit, seen in out.publish:
                self.emit(unit, seen)
        elif not msg.services:  # the adapter now asks for the Service properties
            msg.resync.rows = msg.props
            services = {
                u: self.truth[u].service_props()
                for u, row in msg.props.items()
                if not msg.resync.light or not self.cache.unchanged(u, **_row(row))
            }
            self.queue.append(Reply(msg.resync, services, services=True))
        else:
            for name in msg.props:
                state = Seen()
                state.merge(msg.resync.rows[name], UNIT_PROPS, 0)
                state.merge(msg.props[name], SERVICE_PROPS, 0)
                self.emit(name, self.cache.fetched(name, state, msg.resync.began, force=False))
            if not msg.resync.light:
                self.repaired = self.repaired or msg.resync.epoch == self.epoch

    def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.35:
            self.change()
        elif roll < 0.40:
            self.begin_resync()
        elif roll < 0.45:
            self.begin_resync(light=True)
        elif roll < 0.48:
            self.lose()
        elif roll < 0.50:
            self.reconnect()
        elif self.queue:
            self.deliver()

    def settle(self) -> None:
        """Drain, resync, drain: the repair a lost signal waits for."""
        while self.queue:
            self.deliver()
        self.begin_resync()
        while self.queue:
            self.deliver()
        self.check_converged()

    def check_converged(self) -> None:
        for name in UNITS:
            t, seen = self.truth[name], self.cache.seen[name]
            assert (seen.active, seen.sub, seen.main_pid) == (t.active, t.sub, t.version), name
            assert self.published[name] == t.version, name


def _row(props: dict[str, object]) -> dict[str, str]:
    return {"load": str(props["LoadState"]), "active": str(props["ActiveState"]),
            "sub": str(props["SubState"])}  # fmt: skip


SEEDS = int(os.environ.get("SETPOINT_SIM_SEEDS", "200"))


@pytest.mark.parametrize("seed", range(0, SEEDS, SEEDS // 10 or 1))
def test_the_cache_equals_the_truth_after_any_interleaving(seed: int) -> None:
    for run in range(seed, seed + max(SEEDS // 10, 1)):
        world = World(random.Random(run))
        world.cache.watch(UNITS, path_of)
        world.reconnect()
        for _ in range(300):
            world.step()
            if not world.queue and world.repaired:
                world.check_converged()
        world.settle()


def test_a_reply_older_than_a_signal_keeps_the_signal() -> None:
    """The race the simulation covers, spelled out: the resync reply was generated before the
    unit failed, and is read after the signal saying so."""
    cache = UnitCache()
    cache.watch(["a.service"], path_of)
    began = cache.seq
    old = Seen(active="active", sub="running", load="loaded", main_pid=1)
    cache.signal(path_of("a.service"), True, {"MainPID": 2}, ())
    out = cache.signal(
        path_of("a.service"), False, {"ActiveState": "failed", "SubState": "failed"}, ()
    )
    assert out.publish == []  # LoadState unknown yet: nothing to publish...
    assert out.refresh == ["a.service"]  # ...so the unit is fetched
    seen = cache.fetched("a.service", old, began, force=False)
    assert seen is not None and (seen.active, seen.sub, seen.main_pid) == ("failed", "failed", 2)


def test_a_row_is_unchanged_only_for_a_unit_known_in_full_in_that_state() -> None:
    cache = UnitCache()
    cache.watch(["a.service"], path_of)
    assert not cache.unchanged("a.service", "loaded", "active", "running")  # never seen
    cache.signal(path_of("a.service"), False, {"ActiveState": "active", "SubState": "running"}, ())
    assert not cache.unchanged("a.service", "loaded", "active", "running")  # LoadState unknown
    full = Seen(active="active", sub="running", load="loaded", main_pid=7)
    cache.fetched("a.service", full, cache.seq, force=False)
    assert cache.unchanged("a.service", "loaded", "active", "running")
    assert not cache.unchanged("a.service", "loaded", "active", "exited")
    assert not cache.unchanged("a.service", "masked", "active", "running")
