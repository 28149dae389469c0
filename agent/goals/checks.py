"""Goals: Cross-file checks: every name referenced exists, and services do not depend in a circle.

Checks yield problems lazily so the loader can stop after enough of them (hints cost time).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from agent.errors import Problem
from agent.goals.merged import Entry, Merged, place
from agent.goals.model import EffectModel, GroupModel, ServiceModel
from agent.goals.problems import did_you_mean


def references(merged: Merged) -> Iterator[Problem]:
    """Unknown probes, services and sinks named by services, groups and effects."""
    for svc in merged.services.values():
        yield from _names(svc, ("probes",), svc.model.probes, merged.probes, "probe")
        yield from _names(svc, ("depends_on",), svc.model.dependencies, merged.services, "service")
    for group in merged.groups.values():
        yield from _members(group, merged)
    for entry, loc, effects in effect_lists(merged):
        yield from _sinks(entry, loc, effects, merged)


def effect_lists(
    merged: Merged,
) -> Iterator[tuple[Entry[object], tuple[str, ...], list[EffectModel]]]:
    """Every list of effects: each group's, each domain transition's, with its place."""
    for group in merged.groups.values():
        yield group, ("effects",), group.model.effects
    for dom in merged.domains.values():
        for name, tr in dom.model.transitions.items():
            yield dom, ("transitions", name, "effects"), tr.effects


def unknown(kind: str, name: str, known: Mapping[str, object]) -> str:
    """`unknown probe 'x'; did you mean 'y'?`"""
    return f"unknown {kind} '{name}'{did_you_mean(name, known)}"


def _names(
    entry: Entry[object],
    loc: tuple[object, ...],
    names: list[str],
    known: Mapping[str, object],
    kind: str,
) -> Iterator[Problem]:
    for i, name in enumerate(names):
        if name not in known:
            yield entry.problem(unknown(kind, name, known), *loc, i)


def _members(group: Entry[GroupModel], merged: Merged) -> Iterator[Problem]:
    first: dict[str, int] = {}
    for i, member in enumerate(group.model.members):
        if member.name in first:
            seen = place(group.doc, group.node("members", first[member.name], "name"))
            message = f"member '{member.name}' is already defined at {seen}"
            yield group.problem(message, "members", i, "name")
        first.setdefault(member.name, i)
        if member.service is not None and member.service not in merged.services:
            message = unknown("service", member.service, merged.services)
            yield group.problem(message, "members", i, "service")
        yield from _names(group, ("members", i, "probes"), member.probes, merged.probes, "probe")


def _sinks(
    entry: Entry[object], loc: tuple[object, ...], effects: list[EffectModel], merged: Merged
) -> Iterator[Problem]:
    for i, fx in enumerate(effects):
        sink = fx.alert.sink if fx.alert is not None else None
        if sink is not None and sink not in merged.sinks:
            yield entry.problem(unknown("sink", sink, merged.sinks), *loc, i, "alert", "sink")


NO_BROKER = "but the agent runs without an MQTT broker (--mqtt-url)"


def broker_needed(merged: Merged) -> Iterator[Problem]:
    """Sinks and effects that publish to MQTT, for an agent that has no broker."""
    for sink in merged.sinks.values():
        if sink.model.mqtt is not None:
            message = f"sink '{sink.name}' publishes to MQTT, {NO_BROKER}"
            yield sink.problem(message, "mqtt", key=True)
    for entry, loc, effects in effect_lists(merged):
        for i, fx in enumerate(effects):
            if fx.mqtt is not None:
                yield entry.problem(f"an mqtt effect, {NO_BROKER}", *loc, i, "mqtt", key=True)


SANDBOX_WRITABLE = ("/run/setpoint/", "/var/lib/setpoint/", "/tmp/", "/var/tmp/")  # noqa: S108
"""Where the shipped unit (ProtectSystem=strict, user setpoint) lets effects write."""


def sandbox(merged: Merged) -> Iterator[Problem]:
    """Warnings: file effects the shipped unit's sandbox cannot write, and the way out."""
    for entry, loc, effects in effect_lists(merged):
        for i, fx in enumerate(effects):
            path = fx.file.path if fx.file is not None else ""
            if path and not path.startswith(SANDBOX_WRITABLE):
                where = path.rsplit("/", 1)[0] or "/"
                message = (f"warning: the shipped unit cannot write {path} (ProtectSystem=strict); "
                           f"write under /run/setpoint/, or allow it with a drop-in: "
                           f"[Service] ReadWritePaths={where}")  # fmt: skip
                yield entry.problem(message, *loc, i, "file", "path")


def cycles(services: Mapping[str, Entry[ServiceModel]]) -> Iterator[Problem]:
    """One problem per dependency cycle, at the first service of the cycle (by name)."""
    found: dict[frozenset[str], list[str]] = {}
    for cycle in _walk(services):
        found.setdefault(frozenset(cycle), cycle)
    for cycle in found.values():
        first = min(range(len(cycle)), key=lambda i: cycle[i])
        ring = cycle[first:] + cycle[:first]
        message = f"dependency cycle: {' -> '.join([*ring, ring[0]])}"
        yield services[ring[0]].problem(message, key=True)


def _walk(services: Mapping[str, Entry[ServiceModel]]) -> Iterator[list[str]]:
    """Depth-first search yielding the path of every back edge found."""
    done: set[str] = set()
    for root in sorted(services):
        if root in done:
            continue
        stack = [(root, iter(services[root].model.dependencies))]
        on_path = [root]
        while stack:
            name, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                stack.pop()
                on_path.pop()
                done.add(name)
            elif dep in on_path:
                yield on_path[on_path.index(dep) :]
            elif dep in services and dep not in done:
                stack.append((dep, iter(services[dep].model.dependencies)))
                on_path.append(dep)
