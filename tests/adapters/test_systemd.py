"""The systemd adapter against a real private `systemd --user` manager (no mocks)."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable

import pytest

from agent.adapters.systemd.bus import SystemdAdapter
from agent.adapters.systemd.protocol import ReplyError, convert, unit_path
from agent.core.inputs import Input, ManagerStarted, UnitObserved
from agent.errors import PermanentError, TransientError
from tests.agentproc import wait_until_async
from tests.sysmgr import SystemdUser, alive, running_manager

SLEEPER = "[Service]\nExecStart=/bin/sleep infinity\n"


class ObservationRecorder:
    """Records the adapter's UnitObserved inputs; lets a test wait for a matching one."""

    def __init__(self) -> None:
        self.inputs: list[UnitObserved] = []
        self.manager_started: list[float] = []
        self.stopping: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, inp: Input) -> None:
        if isinstance(inp, ManagerStarted):
            self.manager_started.append(inp.started)
            if inp.stopping:
                self.stopping.append(inp.stopping)
            return
        assert isinstance(inp, UnitObserved)
        self.inputs.append(inp)
        self._changed.set()

    def of(self, unit: str, since: int = 0) -> list[UnitObserved]:
        return [o for o in self.inputs[since:] if o.unit == unit]

    def mark(self) -> int:
        return len(self.inputs)

    async def wait(
        self,
        unit: str,
        pred: Callable[[UnitObserved], bool],
        since: int = 0,
        timeout: float = 30.0,
    ) -> UnitObserved:
        """The first observation of `unit` from index `since` on that satisfies `pred`."""
        found: list[UnitObserved] = []

        def seen() -> bool:
            found[:] = [obs for obs in self.of(unit, since) if pred(obs)][:1]
            return bool(found)

        await wait_until_async(seen, timeout, f"an observation of {unit}", wake=self._changed)
        return found[0]


def active(state: str, sub: str | None = None) -> Callable[[UnitObserved], bool]:
    return lambda o: o.active == state and (sub is None or o.sub == sub)


def new_unit(mgr: SystemdUser, stem: str, text: str | None = SLEEPER) -> str:
    """A fresh unit name; with `text`, its unit file is written and the manager reloaded."""
    name = f"{stem}-{secrets.token_hex(3)}.service"
    if text is not None:
        mgr.write_unit(name, text)
        mgr.daemon_reload()
    return name


async def ctl(mgr: SystemdUser, *args: str) -> None:
    """`systemctl --user ARGS` off the event loop, failing loudly."""
    out = await asyncio.to_thread(mgr.systemctl, *args)
    assert out.returncode == 0, out.stderr


@pytest.fixture
async def adapter(
    systemd_user: SystemdUser,
) -> AsyncIterator[tuple[SystemdAdapter, ObservationRecorder]]:
    rec = ObservationRecorder()
    ad = SystemdAdapter(rec, bus="user", bus_address=systemd_user.bus_address)
    task = asyncio.create_task(ad.run(), name="systemd-adapter")
    await asyncio.wait_for(ad.wait_ready(), 10)
    yield ad, rec
    await ad.close()
    await asyncio.wait_for(task, 5)


# -- pure -----------------------------------------------------------------------------------


def test_unit_path_escapes_like_systemd() -> None:
    prefix = "/org/freedesktop/systemd1/unit/"
    assert unit_path("dbus.service") == prefix + "dbus_2eservice"
    assert unit_path("web-1@a:b.service") == prefix + "web_2d1_40a_3ab_2eservice"
    assert unit_path("2x.service") == prefix + "_32x_2eservice"
    assert unit_path("-.slice") == prefix + "_2d_2eslice"
    assert unit_path("é.service") == prefix + "_c3_a9_2eservice"
    assert unit_path("") == prefix + "_"


async def test_run_job_without_a_connection_is_transient() -> None:
    ad = SystemdAdapter(lambda _: None, bus="user", bus_address="unix:path=/nonexistent/bus")
    with pytest.raises(TransientError, match=r"start web\.service"):
        await ad.run_job("web.service", "start", timeout=0.2)


async def test_user_bus_without_an_address_is_permanent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    ad = SystemdAdapter(lambda _: None, bus="user")
    with pytest.raises(PermanentError, match="DBUS_SESSION_BUS_ADDRESS"):
        await asyncio.wait_for(ad.run(), 5)


# -- against the real manager ---------------------------------------------------------------


@pytest.mark.systemd
def test_unit_path_matches_the_manager(systemd_user: SystemdUser) -> None:
    argv = ["--user", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1"]
    argv += ["org.freedesktop.systemd1.Manager", "LoadUnit", "s"]
    for name in ("web-1.service", "2x.service", "a_b@c.service", "x:y\\x2d.socket"):
        out = subprocess.run(
            ["busctl", *argv, name],
            env=systemd_user.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[1].strip('"') == unit_path(name)


@pytest.mark.systemd
async def test_observes_start_and_kill(
    systemd_user: SystemdUser, adapter: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    ad, rec = adapter
    unit = await asyncio.to_thread(new_unit, systemd_user, "obs")
    ad.watch([unit])
    first = await rec.wait(unit, lambda o: True)
    assert (first.active, first.sub, first.load) == ("inactive", "dead", "loaded")

    await ctl(systemd_user, "start", unit)
    up = await rec.wait(unit, active("active", "running"))
    assert up.main_pid == await asyncio.to_thread(systemd_user.main_pid, unit) > 0

    mark = rec.mark()
    killed_at = time.monotonic()
    os.kill(up.main_pid, signal.SIGKILL)
    down = await rec.wait(unit, lambda o: o.active in ("failed", "inactive"), since=mark)
    latency = time.monotonic() - killed_at
    print(f"\nkill -9 -> UnitObserved({down.active}/{down.sub}) in {latency * 1000:.1f} ms")
    assert (down.active, down.result, down.main_pid) == ("failed", "signal", 0)
    assert (down.exit_code, down.exit_status) == (2, signal.SIGKILL)  # killed, by SIGKILL
    assert latency < 5
    # the manager's start time, told once per connection (a reboot is not a crash)
    assert len(rec.manager_started) == 1 and rec.manager_started[0] > 0


def state_change_timestamp(mgr: SystemdUser, unit: str) -> float:
    """systemd's StateChangeTimestamp of `unit`, in seconds (microsecond precision)."""
    argv = ["busctl", "--user", "get-property", "org.freedesktop.systemd1", unit_path(unit),
            "org.freedesktop.systemd1.Unit", "StateChangeTimestamp"]  # fmt: skip
    out = subprocess.run(argv, env=mgr.env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[1]) / 1e6


@pytest.mark.systemd
async def test_observations_carry_systemds_state_change_time(
    systemd_user: SystemdUser, adapter: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    ad, rec = adapter
    unit = await asyncio.to_thread(new_unit, systemd_user, "since")
    await ctl(systemd_user, "start", unit)
    await asyncio.sleep(0.3)
    ad.watch([unit])  # first seen by a resync, 0.3 s after it started
    first = await rec.wait(unit, active("active", "running"))
    started = await asyncio.to_thread(state_change_timestamp, systemd_user, unit)
    assert abs(first.changed_at - started) < 0.01 and first.at - started >= 0.3
    mark, killed = rec.mark(), time.time()
    os.kill(first.main_pid, signal.SIGKILL)
    down = await rec.wait(unit, active("failed"), since=mark)  # seen through a signal
    failed = await asyncio.to_thread(state_change_timestamp, systemd_user, unit)
    assert abs(down.changed_at - failed) < 0.01 and killed <= failed <= down.at


@pytest.mark.systemd
async def test_restarts_are_counted(
    systemd_user: SystemdUser, adapter: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    ad, rec = adapter
    text = "[Service]\nExecStart=/bin/sleep infinity\nRestart=always\nRestartSec=100ms\n"
    unit = await asyncio.to_thread(new_unit, systemd_user, "restarts", text)
    ad.watch([unit])
    await ctl(systemd_user, "start", unit)
    up = await rec.wait(unit, active("active", "running"))
    assert up.n_restarts == 0
    os.kill(up.main_pid, signal.SIGKILL)
    again = await rec.wait(unit, lambda o: o.n_restarts == 1 and o.active == "active")
    assert again.main_pid not in (0, up.main_pid)
    assert any(o.sub == "auto-restart" for o in rec.of(unit))
    await ctl(systemd_user, "stop", unit)


@pytest.mark.systemd
async def test_observations_are_complete_and_not_repeated(
    systemd_user: SystemdUser, adapter: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    ad, rec = adapter
    unit = await asyncio.to_thread(new_unit, systemd_user, "dedup")
    later = await asyncio.to_thread(new_unit, systemd_user, "dedup-marker")
    ad.watch([unit, later])
    await ctl(systemd_user, "start", unit)
    await rec.wait(unit, active("active", "running"))
    # The marker: a unit started after the first start is done. systemd sends its signals
    # after every signal about the first start, and the adapter handles them in that order.
    await ctl(systemd_user, "start", later)
    await rec.wait(later, active("active", "running"))
    seen = rec.of(unit)
    keys = [(o.active, o.sub, o.load, o.result, o.main_pid, o.n_restarts) for o in seen]
    assert all(k1 != k2 for k1, k2 in itertools.pairwise(keys)), keys
    assert all(o.load == "loaded" for o in seen)

    mark = rec.mark()
    await ad.resync()  # an explicit resync reports every watched unit, changed or not
    again = rec.of(unit, mark)
    assert [(o.active, o.sub) for o in again] == [("active", "running")]
    await ctl(systemd_user, "stop", unit, later)


@pytest.mark.systemd
async def test_run_job_start_restart_stop(
    systemd_user: SystemdUser, adapter: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    ad, rec = adapter
    unit = await asyncio.to_thread(new_unit, systemd_user, "job")
    ad.watch([unit])

    assert await ad.run_job(unit, "start", timeout=10) == "done"
    assert await asyncio.to_thread(systemd_user.active_state, unit) == "active"
    up = await rec.wait(unit, active("active", "running"))

    assert await ad.run_job(unit, "restart", timeout=10) == "done"
    again = await rec.wait(unit, lambda o: o.active == "active" and o.main_pid != up.main_pid)
    assert again.main_pid == await asyncio.to_thread(systemd_user.main_pid, unit)

    assert await ad.run_job(unit, "stop", timeout=10) == "done"
    assert await asyncio.to_thread(systemd_user.active_state, unit) == "inactive"
    await rec.wait(unit, active("inactive", "dead"))
    assert await ad.run_job(unit, "stop", timeout=10) == "done"  # stopping again is a no-op


@pytest.mark.systemd
async def test_back_to_back_jobs_all_complete(
    systemd_user: SystemdUser, adapter: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    """JobRemoved is often read before the StartUnit reply resumes the caller (seen ~6%)."""
    ad, _ = adapter
    units = [await asyncio.to_thread(new_unit, systemd_user, f"burst{i}") for i in range(5)]
    for _ in range(10):
        for op in ("start", "stop"):
            results = await asyncio.gather(*(ad.run_job(u, op, timeout=5) for u in units))
            assert results == ["done"] * len(units)


@pytest.mark.systemd
async def test_run_job_errors(
    systemd_user: SystemdUser, adapter: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    ad, _ = adapter
    missing = new_unit(systemd_user, "missing", text=None)
    for op in ("start", "stop", "restart"):
        with pytest.raises(PermanentError, match=rf"{op} {missing}: .*(not found|not loaded)"):
            await ad.run_job(missing, op, timeout=10)

    masked = new_unit(systemd_user, "masked", text=None)
    await ctl(systemd_user, "mask", masked)
    with pytest.raises(PermanentError, match=rf"start {masked}: .*UnitMasked"):
        await ad.run_job(masked, "start", timeout=10)

    with pytest.raises(PermanentError, match=r"start no-suffix: .*InvalidArgs"):
        await ad.run_job("no-suffix", "start", timeout=10)

    failing = await asyncio.to_thread(
        new_unit, systemd_user, "fails", "[Service]\nType=oneshot\nExecStart=/bin/false\n"
    )
    with pytest.raises(TransientError, match=rf"start {failing}: .*'failed'"):
        await ad.run_job(failing, "start", timeout=10)


@pytest.mark.systemd
async def test_resync_reports_not_found_and_masked(
    systemd_user: SystemdUser, adapter: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    ad, rec = adapter
    missing = new_unit(systemd_user, "gone", text=None)
    masked = new_unit(systemd_user, "hidden", text=None)
    await ctl(systemd_user, "mask", masked)
    ad.watch([missing, masked, "not a unit name"])
    gone = await rec.wait(missing, lambda o: True)
    assert (gone.load, gone.active, gone.sub) == ("not-found", "inactive", "dead")
    hidden = await rec.wait(masked, lambda o: True)
    assert (hidden.load, hidden.active) == ("masked", "inactive")
    invalid = await rec.wait("not a unit name", lambda o: True)
    assert (invalid.load, invalid.active) == ("not-found", "inactive")


@pytest.mark.systemd
async def test_daemon_reload_resyncs_and_signals_keep_coming(
    systemd_user: SystemdUser, adapter: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    ad, rec = adapter
    steady = await asyncio.to_thread(new_unit, systemd_user, "steady")
    late = new_unit(systemd_user, "late", text=None)
    ad.watch([steady, late])
    await rec.wait(late, lambda o: o.load == "not-found")
    await rec.wait(steady, lambda o: o.load == "loaded")

    mark = rec.mark()
    systemd_user.write_unit(late, SLEEPER)
    await ctl(systemd_user, "daemon-reload")
    loaded = await rec.wait(late, lambda o: o.load == "loaded", since=mark)
    assert (loaded.active, loaded.sub) == ("inactive", "dead")
    assert not rec.of(steady, mark), "an unchanged unit is not reported again"

    await ctl(systemd_user, "start", late)
    await rec.wait(late, active("active", "running"), since=mark)
    await ctl(systemd_user, "stop", late)
    await rec.wait(late, active("inactive"), since=mark)


@pytest.mark.systemd
async def test_daemon_reexec_resubscribes(
    systemd_user: SystemdUser, adapter: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    ad, rec = adapter
    unit = await asyncio.to_thread(new_unit, systemd_user, "reexec")
    ad.watch([unit])
    await rec.wait(unit, lambda o: True)
    generation = ad.generation

    await ctl(systemd_user, "daemon-reexec")
    await wait_until_async(lambda: ad.generation > generation, 30, "a new generation")

    mark = rec.mark()
    await ctl(systemd_user, "start", unit)
    up = await rec.wait(unit, active("active", "running"), since=mark)
    assert up.main_pid > 0
    assert await ad.run_job(unit, "stop", timeout=10) == "done"
    await rec.wait(unit, active("inactive"), since=mark)


@pytest.mark.systemd
async def test_reconnects_when_the_bus_goes_away(
    systemd_user: SystemdUser, adapter: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    ad, rec = adapter
    unit = await asyncio.to_thread(new_unit, systemd_user, "rebus")
    ad.watch([unit])
    await rec.wait(unit, lambda o: True)
    generation = ad.generation

    await ctl(systemd_user, "restart", "dbus.service")  # drops every bus connection
    await wait_until_async(
        lambda: ad.generation > generation and ad.connected, 30, "a new connection"
    )

    mark = rec.mark()
    await ctl(systemd_user, "start", unit)
    await rec.wait(unit, active("active", "running"), since=mark)
    assert await ad.run_job(unit, "stop", timeout=10) == "done"


@pytest.mark.systemd
async def test_user_bus_address_from_the_environment(
    systemd_user: SystemdUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", systemd_user.bus_address)
    rec = ObservationRecorder()
    ad = SystemdAdapter(rec, bus="user", clock=lambda: 1234.5)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(ad.run(), name="systemd-adapter")
        ad.watch(["dbus.socket"])
        await asyncio.wait_for(ad.wait_ready(), 10)
        sock = await rec.wait("dbus.socket", lambda o: True)
        assert (sock.load, sock.active, sock.at) == ("loaded", "active", 1234.5)
        await ad.close()
    assert task.done()


@pytest.mark.systemd
def test_stop_leaves_no_process_behind() -> None:
    straggler = "[Service]\nKillMode=process\nExecStart=/bin/sh -c 'sleep 600 & exec sleep 601'\n"
    with running_manager() as mgr:
        mgr.write_unit("straggler.service", straggler)
        mgr.daemon_reload()
        mgr.systemctl("start", "straggler.service", check=True)
        mgr.wait_for("straggler.service", "active")
        procs = mgr.processes()
        assert len(procs) >= 4  # the manager, dbus-daemon, sleep 601 and its sleep 600
        root = mgr.root
        cgroups = mgr.cgroup_dirs()
    assert mgr.stopped
    assert not [p for p in procs if alive(p)]
    assert not root.exists()
    assert not [c for c in cgroups if c.exists()]


@pytest.mark.systemd
async def test_cancelling_run_disconnects(systemd_user: SystemdUser) -> None:
    ad = SystemdAdapter(lambda _: None, bus="user", bus_address=systemd_user.bus_address)
    task = asyncio.create_task(ad.run(), name="systemd-adapter")
    await asyncio.wait_for(ad.wait_ready(), 10)
    bus = ad._bus
    assert bus is not None and bus.connected
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not ad.connected
    await wait_until_async(lambda: not bus.connected, 30, "the bus to disconnect")
    assert await asyncio.wait_for(bus.wait_for_disconnect(), 1) is None  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("org.freedesktop.DBus.Error.InteractiveAuthorizationRequired", "NotPermitted"),
        ("org.freedesktop.DBus.Error.AccessDenied", "NotPermitted"),
        ("org.freedesktop.systemd1.NoSuchUnit", "PermanentError"),
        ("org.freedesktop.DBus.Error.NoReply", "TransientError"),
    ],
)
def test_dbus_refusals_are_not_permitted_other_errors_keep_their_class(
    name: str, kind: str
) -> None:

    err = convert(ReplyError(name, "nope"), "start web.service")
    assert type(err).__name__ == kind and str(err) == f"start web.service: nope ({name})"


HUNG = (
    "[Service]\nExecStart=/bin/sh -c 'trap \"\" TERM; while :; do sleep 0.2; done'\n"
    "TimeoutStopSec=90\n"
)


@pytest.mark.systemd
async def test_kill_ends_a_hung_stop_and_the_restart_goes_on(
    systemd_user: SystemdUser, adapter: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    ad, rec = adapter
    unit = await asyncio.to_thread(new_unit, systemd_user, "hung", HUNG)
    ad.watch([unit])
    assert await ad.run_job(unit, "start", timeout=10) == "done"
    up = await rec.wait(unit, active("active", "running"))
    restart = asyncio.create_task(ad.run_job(unit, "restart", timeout=60))
    await rec.wait(unit, active("deactivating", "stop-sigterm"))
    assert await ad.run_job(unit, "kill", timeout=5) == "killed"
    assert await asyncio.wait_for(restart, 10) == "done"  # long before TimeoutStopSec
    await rec.wait(unit, lambda o: o.active == "active" and o.main_pid not in (0, up.main_pid))


@pytest.mark.systemd
async def test_a_unit_that_fails_to_start_reports_systemds_reason(
    systemd_user: SystemdUser, adapter: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    ad, rec = adapter
    text = "[Service]\nType=exec\nExecStart=/nonexistent/daemon\n"
    unit = await asyncio.to_thread(new_unit, systemd_user, "noexec", text)
    ad.watch([unit])
    assert await ad.run_job(unit, "start", timeout=10, unit_failure_ok=True) == "failed"
    failed = await rec.wait(unit, active("failed"))
    assert (failed.result, failed.exit_code, failed.exit_status) == ("exit-code", 1, 203)
    with pytest.raises(TransientError, match="'failed'"):  # an effect's start still fails
        await ad.run_job(unit, "start", timeout=10)


@pytest.mark.systemd
async def test_last_process_names_the_ended_invocation_and_its_main_pid(
    systemd_user: SystemdUser, adapter: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    """What unit log lines journald could not tag are found by (unitlog.py)."""
    ad, rec = adapter
    text = "[Service]\nExecStart=/bin/sh -c 'echo bye; exit 3'\n"
    unit = await asyncio.to_thread(new_unit, systemd_user, "ends", text)
    assert await ad.last_process(unit) == ("", 0)  # loaded, never started
    ad.watch([unit])
    for _ in range(2):
        mark = rec.mark()
        await ad.run_job(unit, "start", timeout=10, unit_failure_ok=True)
        await rec.wait(unit, active("failed"), since=mark)
        invocation, pid = await ad.last_process(unit)
        assert invocation == await asyncio.to_thread(systemd_user.show, unit, "InvocationID")
        assert pid == int(await asyncio.to_thread(systemd_user.show, unit, "ExecMainPID")) > 0
    for other in (new_unit(systemd_user, "missing", text=None), "default.target", "no-suffix"):
        assert await ad.last_process(other) == ("", 0)
    await ad.close()
    assert await ad.last_process(unit) == ("", 0)


@pytest.mark.systemd
async def test_a_queued_shutdown_is_reported_and_refuses_new_jobs(
    systemd_user: SystemdUser, adapter: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    """kexec.target stands for the system's shutdown targets (a user manager has none of its
    own but exit.target, which would end the test's manager)."""
    ad, rec = adapter
    await asyncio.to_thread(systemd_user.write_unit, "kexec.target", "[Unit]\nDescription=x\n")
    await asyncio.to_thread(systemd_user.daemon_reload)
    unit = await asyncio.to_thread(new_unit, systemd_user, "late")
    await ctl(systemd_user, "start", "--no-block", "kexec.target")
    await wait_until_async(lambda: bool(rec.stopping), 10, "the shutdown reported")
    assert rec.stopping == ["kexec.target queued"]
    with pytest.raises(PermanentError, match="shutting down"):
        await ad.run_job(unit, "start", timeout=5)
    assert await ad.run_job(unit, "stop", timeout=5) == "done"  # stopping stays possible


@pytest.fixture
async def fast_resync(
    systemd_user: SystemdUser,
) -> AsyncIterator[tuple[SystemdAdapter, ObservationRecorder]]:
    """An adapter whose periodic (light) resync runs every 0.2 s."""
    rec = ObservationRecorder()
    ad = SystemdAdapter(rec, bus="user", bus_address=systemd_user.bus_address,
                        resync_interval=0.2)  # fmt: skip
    task = asyncio.create_task(ad.run(), name="systemd-adapter")
    await asyncio.wait_for(ad.wait_ready(), 10)
    yield ad, rec
    await ad.close()
    await asyncio.wait_for(task, 5)


def lose_signals(ad: SystemdAdapter) -> Callable[[], None]:
    """Drop every PropertiesChanged from now on, as a full bus queue would; the undo."""
    ad._on_properties = lambda path, body: None  # type: ignore[method-assign]
    return lambda: delattr(ad, "_on_properties")


@pytest.mark.systemd
async def test_the_periodic_resync_repairs_a_lost_state_change(
    systemd_user: SystemdUser, fast_resync: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    ad, rec = fast_resync
    unit = await asyncio.to_thread(new_unit, systemd_user, "lost")
    ad.watch([unit])
    await ctl(systemd_user, "start", unit)
    await rec.wait(unit, active("active", "running"))
    undo = lose_signals(ad)
    mark = rec.mark()
    await ctl(systemd_user, "stop", unit)  # its signals are lost; the row says inactive
    down = await rec.wait(unit, active("inactive", "dead"), since=mark)
    assert down.main_pid == 0
    undo()


@pytest.mark.systemd
async def test_the_periodic_resync_repairs_a_lost_restart_back_to_the_same_state(
    systemd_user: SystemdUser, fast_resync: tuple[SystemdAdapter, ObservationRecorder]
) -> None:
    """systemd restarted the unit on its own and every signal of it was lost: the row reads
    active/running as before; the moved state-change timestamp gives the restart away."""
    ad, rec = fast_resync
    text = "[Service]\nExecStart=/bin/sleep infinity\nRestart=always\nRestartSec=100ms\n"
    unit = await asyncio.to_thread(new_unit, systemd_user, "lost-restart", text)
    ad.watch([unit])
    await ctl(systemd_user, "start", unit)
    up = await rec.wait(unit, active("active", "running"))
    undo = lose_signals(ad)
    mark = rec.mark()
    os.kill(up.main_pid, signal.SIGKILL)
    # (a resync may also catch it half-way, in auto-restart: then the row tells)
    again = await rec.wait(
        unit, lambda o: o.n_restarts == 1 and o.sub == "running", since=mark, timeout=30
    )
    assert again.main_pid not in (0, up.main_pid)
    undo()
    await ctl(systemd_user, "stop", unit)
