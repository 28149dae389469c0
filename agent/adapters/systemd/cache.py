"""Adapters / systemd: the unit cache, pure (no bus, no clock): what is known of each watched
unit, how a resync reply merges with signals handled while it was on its way, and whether an
observation is worth publishing.

Ordering is the subtle part. A resync reply can be older than a signal handled while we waited
for it (dbus-fast reads and dispatches signals before our coroutine resumes with the reply), so
every field a signal set after the resync began keeps the signal's value (`rebase`). Signals may
carry only some properties: a unit is published once every relevant field is known, and only
when one of them changed (or when a resync forces it).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

UNIT_PROPS = {
    "ActiveState": "active",
    "SubState": "sub",
    "LoadState": "load",
    "StateChangeTimestampMonotonic": "changed",
}
SERVICE_PROPS = {
    "Result": "result",
    "MainPID": "main_pid",
    "NRestarts": "n_restarts",
    "ExecMainCode": "exit_code",
    "ExecMainStatus": "exit_status",
    "Restart": "restart",
    "RestartUSec": "restart_usec",
}


@dataclass(slots=True)
class Seen:
    """What is known of one unit; `touched` says which signal (by sequence) last set a field."""

    active: str | None = None
    sub: str | None = None
    load: str | None = None
    result: str = "success"
    main_pid: int = 0
    n_restarts: int = 0
    exit_code: int = 0
    exit_status: int = 0
    restart: str = ""
    """The unit's own Restart= setting (no, on-failure, always...)."""
    restart_usec: int = 0
    changed: int = 0
    """systemd's StateChangeTimestampMonotonic (us of CLOCK_MONOTONIC: a wall-clock step does
    not move it); 0 when unknown."""
    touched: dict[str, int] = field(default_factory=dict)

    def rebase(self, fetched: Seen, since: int) -> Seen:
        """`fetched` (a resync reply), except fields a signal set after `since`."""
        for name, seq in self.touched.items():
            if seq > since:
                setattr(fetched, name, getattr(self, name))
                fetched.touched[name] = seq
        return fetched

    def key(self) -> tuple[Any, ...] | None:
        """The relevant fields, or None while incomplete."""
        if self.active is None or self.sub is None or self.load is None:
            return None
        return (self.active, self.sub, self.load, self.result, self.main_pid, self.n_restarts,
                self.exit_code, self.exit_status)  # fmt: skip

    def merge(self, changed: Mapping[str, Any], props: Mapping[str, str], seq: int) -> None:
        """Copy the relevant properties (plain values) in; `seq` 0 for a resync."""
        for prop, name in props.items():
            if prop in changed:
                value = changed[prop]
                setattr(self, name, sys.intern(value) if isinstance(value, str) else value)
                if seq:
                    self.touched[name] = seq


@dataclass
class Signalled:
    """What a PropertiesChanged signal calls for: units to publish, units to fetch again."""

    publish: list[tuple[str, Seen]] = field(default_factory=list)
    refresh: list[str] = field(default_factory=list)


class UnitCache:
    """The watched units, their object paths, what is known of each and what was published."""

    def __init__(self) -> None:
        self.watched: frozenset[str] = frozenset()
        self.paths: dict[str, tuple[str, ...]] = {}
        """Object path -> the watched names it stands for (usually one; tuples, not sets: a
        set of one costs 216 bytes, times 10,000 units)."""
        self.seen: dict[str, Seen] = {}
        self._emitted: dict[str, tuple[Any, ...]] = {}
        self.seq = 0
        """Counts signals handled; a resync remembers it when it begins (see `fetched`)."""

    def watch(self, units: Iterable[str], path_of: Any) -> bool:
        """Replace the watched set (`path_of(name)` gives a unit's object path); True when a
        new unit needs a resync."""
        new = frozenset(units)
        old_paths = self.paths
        for name in self.watched - new:
            self.seen.pop(name, None)
            self._emitted.pop(name, None)
        self.watched = new
        self.paths = {}
        for path, names in old_paths.items():
            for name in names:
                if name in new:
                    self.located(name, path)
        for name in new:
            self.located(name, path_of(name))
        return bool(new - set(self.seen))

    def located(self, name: str, path: str) -> None:
        """systemd names `path` as the object of `name` (a resync row, UnitNew)."""
        names = self.paths.get(path, ())
        if name not in names:
            self.paths[path] = (*names, name)

    def fetched(self, name: str, state: Seen, began: int, *, force: bool) -> Seen | None:
        """A resync reply for `name`, requested when `seq` was `began`; what to publish."""
        seen = self.seen.get(name)
        self.seen[name] = state if seen is None else seen.rebase(state, began)
        return self.publish(name, force=force)

    def unchanged(self, name: str, load: str, active: str, sub: str) -> bool:
        """A resync row that tells nothing new: the unit is known in full, in that state."""
        seen = self.seen.get(name)
        return (
            seen is not None
            and seen.key() is not None
            and (seen.load, seen.active, seen.sub) == (load, active, sub)
        )

    def unusable(self, name: str, *, force: bool) -> tuple[bool, Seen | None]:
        """systemd refuses the name: it reads as not found. (first time?, what to publish)"""
        first = name not in self.seen
        self.seen[name] = Seen(active="inactive", sub="dead", load="not-found")
        return first, self.publish(name, force=force)

    def signal(
        self, path: str, service: bool, changed: Mapping[str, Any], invalidated: Iterable[str]
    ) -> Signalled:
        """PropertiesChanged of a unit object (Unit or Service interface), values unwrapped.

        systemd sends the Service part first and then the Unit part of one change, so only the
        Unit part publishes; an invalidated or still incomplete unit is fetched instead.
        """
        out = Signalled()
        names = self.paths.get(path)
        if not names:
            return out
        props = SERVICE_PROPS if service else UNIT_PROPS
        self.seq += 1
        for name in sorted(names):
            seen = self.seen.setdefault(name, Seen())
            seen.merge(changed, props, self.seq)
            if set(invalidated) & props.keys() or seen.key() is None:
                out.refresh.append(name)
            elif not service and (ready := self.publish(name, force=False)) is not None:
                out.publish.append((name, ready))
        return out

    def publish(self, name: str, *, force: bool) -> Seen | None:
        """The unit's state if complete, watched and (unless forced) changed since published."""
        seen = self.seen.get(name)
        key = seen.key() if seen is not None else None
        if seen is None or key is None or name not in self.watched:
            return None
        if not force and self._emitted.get(name) == key:
            return None
        self._emitted[name] = key
        return seen
