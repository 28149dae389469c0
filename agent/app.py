"""App: the composition root of `setpoint run`: journal, runtime, lanes, adapters, interfaces.

Every background task is named and lives in one TaskGroup: if one dies, the agent exits
non-zero (systemd restarts it and `restore` picks up the pending work). SIGTERM/SIGINT stop
intake, let in-flight effects finish up to a timeout, commit, snapshot and exit 0. SIGHUP
reloads the goals; invalid goals are reported and the last good ones stay in force.

Goal files are read in a short-lived child process (agent.goals.isolated), at start and at each
reload: the daemon never imports YAML, pydantic or the goal models, which only checking them needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from agent.adapters.alerts.sinks import Sinks
from agent.adapters.alerts.unitlogs import AlertLogs
from agent.adapters.cluster.bridge import ClusterBridge, Executor
from agent.adapters.cluster.config import ClusterConfig
from agent.adapters.effects.exec import run_exec
from agent.adapters.effects.web import Webhook, write_file
from agent.adapters.mqtt import no_broker
from agent.adapters.mqtt.config import MqttConfig
from agent.adapters.probes import Prober
from agent.adapters.systemd.bus import SystemdAdapter
from agent.adapters.systemd.unitlog import LastProcess, Limits, UnitLogs
from agent.core.actions import JobOp, RunEffect, TrackedAction, UnitJob
from agent.core.alerts import ALERTMANAGER_RESEND
from agent.core.inputs import GoalsLoaded, GoalsRejected, Input, ProbeResult, Tick
from agent.core.spec import GoalSet
from agent.core.state import State
from agent.errors import ConfigError, PermanentError
from agent.goals.isolated import LoaderFailed, load_isolated
from agent.interfaces import control
from agent.interfaces import http as httpapi
from agent.interfaces.metrics import Metrics
from agent.interfaces.page import Live, Page, add_routes
from agent.interfaces.sd_notify import Notifier, StatusLines, status_line
from agent.interfaces.views import UnitLogsOf, status_dict
from agent.journal import codec
from agent.journal.store import Journal
from agent.runtime.clock import SteadyClock
from agent.runtime.degraded import health, journal_alert
from agent.runtime.heap import Heap, keep_trimmed
from agent.runtime.lanes import RetryPolicy
from agent.runtime.loop import Runtime

if TYPE_CHECKING:  # imported where used: grpc and aiomqtt load only when configured
    from agent.adapters.cluster.link import ClusterView
    from agent.adapters.mqtt.link import MqttLink

log = logging.getLogger("setpoint")
ALERT_RETRY = RetryPolicy(attempts=5, initial=0.5, maximum=8.0, deadline=30.0)
"""A sink still down after this is reported failed; the core sends again 30 s later."""
MQTT_RETRY = RetryPolicy(attempts=5, initial=0.5, maximum=8.0, deadline=30.0)


@dataclass
class Outputs:
    """What `wire` set up; the daemon runs `mqtt.run` and closes `sinks` at the end."""

    sinks: Sinks
    mqtt: MqttLink | None


def wire_outputs(
    rt: Runtime,
    mqtt: MqttConfig | None,
    hostname: str = "",
    *,
    http_port: int = 9477,
    clock: Callable[[], float] = time.time,
    to_wall: Callable[[float], float] | None = None,
    logs: AlertLogs | None = None,
) -> Outputs:
    """Register the `alert:*`, `alert` and `mqtt` lanes; feed committed state to MQTT.

    `hostname` (default: the machine's) names the host in topics and alert labels.
    """
    hostname = hostname or socket.gethostname()
    generator_url = f"http://{hostname}:{http_port}/api/v1/status"
    link = None
    if mqtt is not None:
        from agent.adapters.mqtt.link import MqttLink  # noqa: PLC0415 - only with a broker

        link = MqttLink(
            mqtt,
            hostname,
            submit=rt.submit,
            services=lambda: set(rt.state.services.keys()),
            clock=clock,
        )
        rt.on_commit.append(link.on_commit)
        link.on_commit(rt.state)
    sinks = Sinks(
        lambda: rt.state.goals.sinks,
        hostname,
        mqtt=link,
        generator_url=generator_url,
        clock=clock,
        to_wall=to_wall,
        logs=logs,
    )
    rt.lanes.register("alert:", sinks.send, ALERT_RETRY)
    rt.lanes.register("alert", sinks.effect, ALERT_RETRY)
    rt.lanes.register("mqtt", link.effect if link is not None else no_broker, MQTT_RETRY)
    return Outputs(sinks, link)


@dataclass(frozen=True)
class Options:
    """What `setpoint run` was asked to do."""

    goals: tuple[Path, ...]
    state_dir: Path
    bus: Literal["system", "user", "none"] = "system"
    tick: float = 1.0
    shutdown_timeout: float = 30.0
    resync_interval: float = 60.0
    job_timeout: float = 90.0
    http_host: str = "127.0.0.1"
    http_port: int = 9477
    page_token: str = ""
    """The status page's operator actions are on when this (read from a token file) is set."""
    mqtt: MqttConfig | None = None
    hostname: str = ""
    cluster: ClusterConfig | None = None
    unit_logs: Limits = field(default_factory=Limits)


def alert_logs(
    rt: Runtime, bus: str, limits: Limits, last_process: LastProcess | None = None
) -> AlertLogs | None:
    """Unit log lines for service alerts, from the journal of the bus's manager (none without
    a bus, or with `limits.lines` 0)."""
    if bus == "none" or limits.lines <= 0:
        return None
    reader = UnitLogs(user=bus == "user", limits=limits, last_process=last_process)

    async def read(unit: str, ended: bool) -> dict[str, Any]:
        return (await reader.last_lines(unit, ended=ended)).doc()

    def unit_of(service: str) -> str | None:
        spec = rt.state.index.services.get(service)
        return spec.unit if spec is not None else None

    return AlertLogs(read, unit_of)


class Daemon:
    """One running agent."""

    def __init__(self, opts: Options, clock: Callable[[], float] | None = None) -> None:
        self.opts = opts
        self._given_clock = clock
        self.clock: Callable[[], float] = clock or time.time
        """The agent's clock (agent.runtime.clock.SteadyClock unless given): set in `serve`."""
        self._to_wall: Callable[[float], float] | None = None
        self.runtime: Runtime | None = None
        self.systemd: SystemdAdapter | None = None
        self.prober: Prober | None = None
        self.metrics: Metrics | None = None
        self.webhook = Webhook()
        self.outputs: Outputs | None = None
        self.notifier = Notifier.from_env()
        self.bridge: ClusterBridge | None = None
        self._stop = asyncio.Event()
        self._resync = asyncio.Event()
        self._reload = asyncio.Event()
        self._settled = True

    def request_stop(self) -> None:
        """Begin an orderly shutdown."""
        self._stop.set()

    async def serve(self) -> int:
        """Run until stopped; the exit status."""
        goals = await self._read_goals()
        journal = await Journal.open(self.opts.state_dir)
        if self._given_clock is None:
            steady = SteadyClock(journal.last_at)
            self.clock, self._to_wall = steady, steady.to_wall
        try:
            state, _ = await journal.load()
            self.metrics = Metrics(lambda: self._state(state), self.clock)
            rt = self.runtime = Runtime(
                journal, state, clock=self.clock, on_resync=self._resync.set, metrics=self.metrics
            )
            self.metrics.watch_runtime(lambda: rt.degraded is not None, rt.mailbox.qsize)
            async with self._cluster(rt):
                self._wire_lanes(rt)
                self._install_signals()
                self._load(rt, goals)
                pending = rt.restore()
                runner = await self._serve_http(rt, journal)
                commands = control.app(
                    rt.submit, lambda: set(rt.state.services.keys()), self.clock, self._live(rt)
                )
                control_runner = await control.serve(commands, self.opts.state_dir)
                log.info("started: %d pending actions restored", pending)
                try:
                    await self._supervise(rt)
                finally:
                    await control_runner.cleanup()
                    await runner.cleanup()
            await self._shutdown(rt, journal)
        finally:
            await journal.close()
        return 0

    async def _read_goals(self) -> GoalSet:
        """The goal files, checked against what this agent can do (MQTT needs a broker), in a
        child process; ConfigError when they are invalid, LoaderFailed when it gave no answer."""
        broker = self.opts.mqtt is not None
        return await load_isolated(self.opts.goals, broker=broker, decode=codec.decode)

    @contextlib.asynccontextmanager
    async def _cluster(self, rt: Runtime) -> AsyncIterator[None]:
        """The etcd link for cluster domains, when configured (see adapters/cluster/bridge)."""
        config = self.opts.cluster
        if config is None:
            yield
            return

        def on_change(view: ClusterView) -> None:
            if self.bridge is not None:
                self.bridge.on_view(view)

        from agent.adapters.cluster.link import ClusterLink  # noqa: PLC0415 - only with etcd

        link = ClusterLink(config, on_change=on_change)
        bridge = self.bridge = ClusterBridge(link, rt.submit, self.clock)
        rt.gate = bridge.gate
        rt.on_commit.append(bridge.project)
        async with link:
            bridge.on_view(link.view())
            yield

    def _state(self, initial: State) -> State:
        return self.runtime.state if self.runtime is not None else initial

    async def _serve_http(self, rt: Runtime, journal: Journal) -> web.AppRunner:
        assert self.metrics is not None
        api = httpapi.app(self.metrics, lambda: rt.state, rt.alive, self.clock, self._logs())
        add_routes(api, self._page(rt, journal))
        runner = await httpapi.serve(api, self.opts.http_host, self.opts.http_port)
        log.info("metrics on http://%s:%d/metrics", self.opts.http_host, self.opts.http_port)
        actions = "operator actions on (token)" if self.opts.page_token else "read-only"
        log.info("status page on http://%s:%d/ (%s)", *self._address(), actions)
        return runner

    def _logs(self) -> UnitLogsOf | None:
        """The unit log lines each firing alert was sent with, when they are read at all."""
        logs = self.outputs.sinks.logs if self.outputs is not None else None
        return logs.get if logs is not None else None

    def _address(self) -> tuple[str, int]:
        host = self.opts.http_host
        return (f"[{host}]" if ":" in host else host), self.opts.http_port

    def _live(self, rt: Runtime) -> Callable[[], dict[str, Any]]:
        """The live status document (`setpoint status` over the control socket)."""

        def doc() -> dict[str, Any]:
            now = self.clock()
            view = status_dict(rt.state, now, self._logs())
            return {**view, "journal": health(rt.degraded, now),
                    "source": "agent"}  # fmt: skip

        return doc

    def _page(self, rt: Runtime, journal: Journal) -> Page:
        """The status page, woken by every commit, its history read from the journal."""
        assert self.metrics is not None
        live = Live()
        rt.on_commit.append(live.on_commit)
        return Page(
            state=lambda: rt.state,
            clock=self.clock,
            submit=rt.submit,
            recent=lambda: journal.history(limit=200),
            token=self.opts.page_token,
            live=live,
            latency=self.metrics.probes.last.get,
            journal=lambda: health(rt.degraded, self.clock()),
            logs=self._logs(),
        )

    def _wire_lanes(self, rt: Runtime) -> None:
        metrics = self.metrics
        assert metrics is not None

        def probe_result(inp: Input) -> None:
            if isinstance(inp, ProbeResult):
                metrics.observe_probe(inp)
            rt.submit(inp)

        self.prober = Prober(probe_result, clock=self.clock)
        guard = self.bridge.guard if self.bridge is not None else _unguarded
        rt.lanes.register("exec", guard(run_exec), RetryPolicy(attempts=3))
        rt.lanes.register("file", guard(write_file), RetryPolicy(attempts=3))
        rt.lanes.register("http", guard(self.webhook), RetryPolicy(attempts=4))
        if self.bridge is not None:
            etcd = self.bridge.link
            metrics.watch_link("etcd", lambda: etcd.healthy)
        self.outputs = wire_outputs(
            rt,
            self.opts.mqtt,
            self.opts.hostname,
            http_port=self.opts.http_port,
            logs=alert_logs(rt, self.opts.bus, self.opts.unit_logs, self._last_process),
            clock=self.clock,
            to_wall=self._to_wall,
        )
        if (link := self.outputs.mqtt) is not None:
            metrics.watch_link("mqtt", lambda: link.connected)
        if self.opts.bus == "none":
            return
        self.systemd = SystemdAdapter(
            bus=self.opts.bus,
            on_input=rt.submit,
            clock=self.clock,
            resync_interval=self.opts.resync_interval,
        )
        adapter, timeout = self.systemd, self.opts.job_timeout
        metrics.watch_link("systemd", lambda: adapter.connected)

        async def unit_job(action: TrackedAction) -> str:
            if isinstance(action, UnitJob):
                return await adapter.run_job(action.unit, action.op, timeout, unit_failure_ok=True)
            if isinstance(action, RunEffect) and action.effect.operation != "":
                op: JobOp = action.effect.operation
                return await adapter.run_job(action.effect.unit, op, timeout)
            raise PermanentError(f"action {action.id} is not a unit job")

        rt.lanes.register("systemd", unit_job, RetryPolicy(attempts=3, initial=0.2))

    async def _last_process(self, unit: str) -> tuple[str, int]:
        """The unit's invocation and main PID from the manager (unit log lines for alerts)."""
        return await self.systemd.last_process(unit) if self.systemd else ("", 0)

    def _load(self, rt: Runtime, goals: GoalSet) -> None:
        rt.submit(GoalsLoaded(goals, self.clock()))
        if self.metrics is not None:
            self.metrics.observe_reload(True, self.clock())
        if self.prober is not None:
            self.prober.configure(goals.probes)
        if self.systemd is not None:
            self.systemd.watch(s.unit for s in goals.services)
        self._resync.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)

    async def reload(self) -> bool:
        """Validate the goal files again; switch to them only when they are valid."""
        try:
            goals = await self._read_goals()
        except (ConfigError, LoaderFailed) as err:
            problems = tuple(map(str, err.problems if isinstance(err, ConfigError) else [err]))
            for problem in problems:
                log.error("reload rejected, keeping the last good goals: %s", problem)
            if self.metrics is not None:
                self.metrics.observe_reload(False, self.clock())
            if self.runtime is not None:
                self.runtime.submit(GoalsRejected(problems, self.clock()))
            return False
        if self.runtime is not None:
            self._load(self.runtime, goals)
        log.info("goals reloaded (%s)", goals.digest[:12])
        return True

    async def _supervise(self, rt: Runtime) -> None:
        async with asyncio.TaskGroup() as tg:
            main = tg.create_task(rt.run(), name="runtime")
            helpers = [
                tg.create_task(self._ticker(rt), name="ticker"),
                tg.create_task(self._reloader(), name="reload"),
            ]
            if self.prober is not None:
                helpers.append(tg.create_task(self.prober.run(), name="probes"))
            watchers = []  # still watching while in-flight effects finish (see _settle)
            if self.systemd is not None:
                watchers.append(tg.create_task(self.systemd.run(), name="systemd"))
                helpers.append(tg.create_task(self._resyncer(), name="resync"))
            helpers.append(tg.create_task(self._notify(rt), name="sd-notify"))
            helpers.append(tg.create_task(self._journal_alarm(rt), name="journal-alarm"))
            if (libc_heap := Heap.glibc()) is not None:
                helpers.append(tg.create_task(keep_trimmed(libc_heap), name="heap"))
            if self.outputs is not None and self.outputs.mqtt is not None:
                tg.create_task(self.outputs.mqtt.run(self._stop), name="mqtt")
            tg.create_task(self._stopper(rt, helpers), name="stopper")
            await main
            self._settled = await self._settle(rt)
            for task in watchers:
                task.cancel()

    async def _settle(self, rt: Runtime) -> bool:
        """Let in-flight effects finish (their unit jobs' ends are still seen on the bus);
        while the system shuts down, unit jobs were dropped: nothing to wait for or keep."""
        return await rt.settle(0.5 if rt.state.stopping else self.opts.shutdown_timeout)

    async def _stopper(self, rt: Runtime, helpers: list[asyncio.Task[None]]) -> None:
        await self._stop.wait()
        log.info("stopping: no new inputs; finishing in-flight effects")
        self.notifier.stopping()
        for task in helpers:
            task.cancel()
        rt.stop()

    async def _ticker(self, rt: Runtime) -> None:
        while True:
            await asyncio.sleep(self.opts.tick)
            rt.submit(Tick(self.clock()))

    async def _reloader(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            self.notifier.reloading()
            await self.reload()
            self.notifier.reloaded(status_line(self.runtime.state) if self.runtime else "")

    async def _notify(self, rt: Runtime) -> None:
        """sd_notify: READY=1 after the first full resync, then STATUS= and watchdog pings."""
        ready = self.systemd.wait_ready if self.systemd is not None else None
        lines = StatusLines()
        await self.notifier.serve(ready, lambda: _status_line(rt, lines), rt.alive)

    async def _journal_alarm(self, rt: Runtime) -> None:
        """JournalDegraded cannot be journaled: sent untracked to every sink, again every
        ALERTMANAGER_RESEND seconds while the journal cannot write, resolved once it can."""
        began: float | None = None
        sent = 0.0
        while True:
            await asyncio.sleep(1.0)
            gap, now = rt.degraded, self.clock()
            if self.outputs is None:
                continue
            if gap is not None and (began != gap.began or now - sent >= ALERTMANAGER_RESEND):
                began, sent = gap.began, now
                await self.outputs.sinks.broadcast(journal_alert(gap.began, now, gap.error))
            elif gap is None and began is not None:
                await self.outputs.sinks.broadcast(journal_alert(began, now, None))
                began = None

    async def _resyncer(self) -> None:
        assert self.systemd is not None
        while True:
            await self._resync.wait()
            self._resync.clear()
            await self.systemd.resync()

    async def _shutdown(self, rt: Runtime, journal: Journal) -> None:
        if not self._settled:
            log.warning(
                "%d effects still running; they stay pending for the next start", rt.lanes.running
            )
        if rt.lanes.busy:  # also those waiting to retry: a shutdown does not wait them out
            await rt.lanes.cancel()
        if self.systemd is not None:
            await self.systemd.close()
        await self.webhook.close()
        if self.outputs is not None:
            await self.outputs.sinks.close()
        await rt.checkpoint()
        log.info("stopped cleanly; %d actions pending", len(rt.state.pending))


def _status_line(rt: Runtime, lines: StatusLines) -> str:
    """sd_notify's STATUS=, which says first when the journal cannot write."""
    line = lines(rt.state)
    if rt.degraded is not None:
        return f"DEGRADED: journal cannot write ({rt.degraded.error[:120]}); {line}"
    return line


def _unguarded(executor: Executor) -> Executor:
    return executor
