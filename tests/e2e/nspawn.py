"""A booted Debian 12 under systemd-nspawn: the production path under a real PID 1.

- `rootfs()` builds a minimal Debian 12 root file system with debootstrap once and caches it
  outside the checkout (`/var/cache/setpoint-e2e/rootfs-<key>/rootfs`, the key being a digest of the
  suite, variant, package list and the tweaks below). It is built in a temporary directory and
  renamed into place, so an interrupted build never leaves a half-made cache entry.
- `wheelhouse()` downloads the locked runtime set (`requirements/runtime.txt` plus the build
  backend of `requirements/build.txt`, with their hashes) as binary wheels, cached the same way.
  The container has no network (`--private-network`): Setpoint is installed from these.
- `Container` boots a throwaway copy: an overlay of the cached tree (writes go to an upper
  directory under /var/tmp/setpoint-e2e/<session>) mounted inside a private mount namespace
  (`unshare -m`) that also holds `systemd-nspawn --keep-unit --register=no -b --console=pipe`
  (the host has no system bus). When nspawn exits, the namespace and its mounts are gone with it.
  Commands run inside with `nsenter -t <pid of its systemd> -a`. An overlay costs ~2 ms against
  ~0.6 s for `cp -a --reflink=auto` of the 312 MB tree on ext4 (no reflinks there).
- Teardown (`Container.close`): SIGTERM to nspawn (a clean halt of the container), SIGKILL to the
  container's PID 1 if that takes too long (the kernel then kills its whole PID namespace), then
  the session directory is removed. nspawn gets SIGTERM when pytest dies (`setpriv
  --pdeathsig`), and sessions left by a killed pytest are swept at the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from tests.needs import unavailable

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SETPOINT_E2E_CACHE", "/var/cache/setpoint-e2e"))
WORK = Path(os.environ.get("SETPOINT_E2E_WORK", "/var/tmp/setpoint-e2e"))
MIRROR = os.environ.get("SETPOINT_E2E_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "libpam-systemd", "polkitd", "python3", "python3-venv",
    "make",
    "nginx-light", "postgresql",  # real services for tests/e2e/test_real_services.py
)  # fmt: skip
HOST_TOOLS = {  # command -> Debian package
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "setpriv": "util-linux",
}
# Timers that would reach for the network or churn the disk in the middle of a test.
MASKED = ("apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer")
TWEAKS = 1
"""Bump when the post-debootstrap tweaks change: it is part of the cache key."""

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_ENV = {
    "PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
    "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "SYSTEMD_LOG_COLOR": "0",
}  # fmt: skip


class BootError(RuntimeError):
    """The container did not come up (or went away); the message has its console."""


def log(message: str) -> None:
    """Progress on stderr (shown with `pytest -s`; kept in the report otherwise)."""
    print(f"[e2e] {message}", file=sys.stderr, flush=True)


def unavailable_reason() -> str | None:
    """Why nspawn containers cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "a booted Debian under systemd-nspawn needs root"
    for name, package in HOST_TOOLS.items():
        if shutil.which(name) is None:
            return f"{name} not found (Debian package {package}; `make setup` installs it)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        subprocess.run(["modprobe", "overlay"], capture_output=True, check=False)
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "the kernel has no overlay file system"
    return None


# --- caches ------------------------------------------------------------------------------------


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One builder per cache entry at a time (another pytest may be building the same)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield


def _build_atomically(final: Path, build: Callable[[Path], None]) -> Path:
    """`build(tmpdir)`, then rename tmpdir to `final`; never leaves a partial `final`."""
    if final.exists():
        return final
    with _locked(final.name):
        if final.exists():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=CACHE))
        try:
            build(tmp)
            tmp.rename(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def rootfs_key() -> str:
    return _digest(SUITE, VARIANT, ",".join(sorted(PACKAGES)), str(TWEAKS))


def rootfs() -> Path:
    """The cached Debian 12 tree (built on first use, ~45 s with a nearby mirror)."""
    return _build_atomically(CACHE / f"rootfs-{rootfs_key()}", _debootstrap) / "rootfs"


def _debootstrap(tmp: Path) -> None:
    target = tmp / "rootfs"
    started = time.monotonic()
    log(f"debootstrap {SUITE} into {target} (cached after this)")
    cmd = [
        "debootstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}",
        SUITE, str(target), MIRROR,
    ]  # fmt: skip
    # In a private mount namespace: the /proc etc. debootstrap mounts cannot outlive it.
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", *cmd],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise RuntimeError(f"debootstrap failed ({result.returncode}):\n{tail}")
    (target / "etc/hostname").write_text("setpoint-e2e\n")
    for unit in MASKED:
        link = target / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (target / cache).glob("*"):
            if item.is_file():
                item.unlink()
    log(f"debootstrap done in {time.monotonic() - started:.0f}s")


def requirement_files() -> list[Path]:
    """The lock files `make install` installs from (build backend first)."""
    req = ROOT / "requirements"
    return [p for p in (req / "build.txt", req / "runtime.txt") if p.exists()]


def wheelhouse() -> Path:
    """Binary wheels of the locked runtime set (and the build backend), cached by their digest.

    Falls back to pyproject.toml's dependencies (unpinned) while there is no
    requirements/runtime.txt.
    """
    files = requirement_files()
    if any(p.name == "runtime.txt" for p in files):
        key = _digest("locked", *(p.read_bytes() for p in files))
        args = ["--require-hashes", *(arg for p in files for arg in ("-r", str(p)))]
    else:
        deps = [*_pyproject_dependencies(), "setuptools>=64", "wheel"]
        key = _digest("unlocked", *deps)
        args = deps
    return _build_atomically(CACHE / f"wheels-{key}", lambda tmp: _download(tmp, args))


def _pyproject_dependencies() -> list[str]:
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps: list[str] = data["project"]["dependencies"]
    return deps


def _download(tmp: Path, args: Sequence[str]) -> None:
    started = time.monotonic()
    log("downloading the wheelhouse (cached after this)")
    result = subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--dest", str(tmp), *args,
        ],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"pip download failed:\n{result.stdout}{result.stderr}")
    log(f"wheelhouse: {len(list(tmp.glob('*.whl')))} wheels in {time.monotonic() - started:.0f}s")


def checkout_files() -> list[str]:
    """The working tree as `git ls-files -co --exclude-standard` sees it (uncommitted too)."""
    out = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "-co", "--exclude-standard"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    names = [n for n in out.decode().split("\0") if n]
    return [n for n in names if (ROOT / n).is_file() or (ROOT / n).is_symlink()]


def copy_checkout(dest: Path) -> int:
    """Copy the working tree's files (tracked and untracked, not ignored) to `dest`.

    SETPOINT_E2E_SRC=DIR copies that directory instead (e.g. a `git archive` of a commit, to
    run these tests against it while the working tree is in the middle of a change).
    """
    other = os.environ.get("SETPOINT_E2E_SRC")
    if other:
        shutil.copytree(other, dest, symlinks=True, dirs_exist_ok=True)
        return sum(1 for p in dest.rglob("*") if p.is_file())
    files = checkout_files()
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target, follow_symlinks=False)
    return len(files)


def project_wheel(src: Path, dest: Path) -> Path | None:
    """A wheel of the project itself, built from the copy `src` (never in the checkout)."""
    result = subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
            "--no-deps", "--no-build-isolation", "--wheel-dir", str(dest), str(src),
        ],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    if result.returncode != 0:
        log(f"no project wheel (pip wheel failed): {result.stderr.strip()[-500:]}")
        return None
    return next(dest.glob("setpoint-*.whl"), None)


# --- sessions ----------------------------------------------------------------------------------


def _alive(pid: int, start: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[19] == start


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def sweep_stale() -> list[Path]:
    """Remove session directories whose pytest is gone (killed before it could clean up)."""
    removed: list[Path] = []
    if not WORK.is_dir():
        return removed
    for session in WORK.iterdir():
        try:
            owner = json.loads((session / "owner.json").read_text())
        except (OSError, ValueError):
            owner = None
        if owner is not None and _alive(owner["pid"], owner["start"]):
            continue
        if owner is None and time.time() - session.stat().st_mtime < 3600:
            continue  # being created right now, perhaps
        if owner is not None and owner.get("nspawn") and _alive(*owner["nspawn"]):
            os.kill(owner["nspawn"][0], signal.SIGTERM)  # PDEATHSIG did not reach it
            continue
        shutil.rmtree(session, ignore_errors=True)
        _remove_nspawn_leftovers(session.name)
        removed.append(session)
    return removed


def _remove_nspawn_leftovers(machine: str) -> None:
    """nspawn's per-machine directory under /run (on this host /run is not a tmpfs)."""
    with contextlib.suppress(OSError):
        (Path("/run/systemd/nspawn/propagate") / machine).rmdir()


@dataclass
class Boot:
    """One boot: how long it took, the state it reached and the units that failed."""

    seconds: float
    state: str
    failed: list[str]


@dataclass
class Container:
    """A throwaway Debian booted from `rootfs` (see the module docstring)."""

    rootfs: Path
    binds_ro: Mapping[str, Path] = field(default_factory=dict)
    """Container path -> host path, bound read-only."""
    session: Path = field(init=False)
    machine: str = field(init=False)
    proc: subprocess.Popen[bytes] | None = field(init=False, default=None)
    pid: int = field(init=False, default=0)
    """The container's systemd (PID 1 inside) as the host sees it."""
    boots: list[Boot] = field(init=False, default_factory=list)
    timings: dict[str, float] = field(init=False, default_factory=dict)
    """Seconds spent preparing and booting, by phase."""
    console: Path = field(init=False)
    """The console (stdout and stderr of nspawn) of the current boot."""

    def __post_init__(self) -> None:
        WORK.mkdir(parents=True, exist_ok=True)
        self.session = Path(tempfile.mkdtemp(prefix="sp-", dir=WORK))
        suffix = re.sub(r"[^a-z0-9]", "x", self.session.name[3:].lower())
        self.machine = f"setpoint-e2e-{suffix}"  # unique: nspawn keeps state under /run by it
        for sub in ("upper", "ovl-work", "root"):
            (self.session / sub).mkdir()
        self.console = self.session / "console-0.log"
        self._write_owner()

    def _write_owner(self) -> None:
        owner: dict[str, object] = {"pid": os.getpid(), "start": _start_time(os.getpid())}
        if self.proc is not None and self.proc.poll() is None:
            owner["nspawn"] = [self.proc.pid, _start_time(self.proc.pid)]
        (self.session / "owner.json").write_text(json.dumps(owner))

    def console_tail(self, lines: int = 40) -> str:
        path = self.console
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle

    def boot(self, timeout: float = 120.0) -> Boot:
        """Boot (again, on the same upper directory) and wait for `is-system-running`."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        started = time.monotonic()
        s = self.session
        options = f"lowerdir={self.rootfs},upperdir={s / 'upper'},workdir={s / 'ovl-work'}"
        nspawn = [
            "systemd-nspawn", "--quiet", "--keep-unit", "--register=no",
            f"--machine={self.machine}", "--directory", str(s / "root"), "--boot",
            "--console=pipe", "--private-network", "--link-journal=no",
            "--resolv-conf=off", "--timezone=off",
            *(f"--bind-ro={host}:{inside}" for inside, host in self.binds_ro.items()),
        ]  # fmt: skip
        script = 'mount -t overlay overlay -o "$1" "$2" && shift 2 && exec "$@"'
        self.console = s / f"console-{len(self.boots)}.log"
        with open(self.console, "wb") as console:
            self.proc = subprocess.Popen(
                ["setpriv", "--pdeathsig", "TERM",  # nspawn halts the container if pytest dies
                 "unshare", "--mount", "--propagation", "private",
                 "sh", "-c", script, "sh", options, str(s / "root"), *nspawn],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C reaches pytest, whose teardown halts it
            )  # fmt: skip
        self._write_owner()
        deadline = started + timeout
        self.pid = self._wait_for_init(deadline)
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            result = self.run("systemctl", "is-system-running", check=False, timeout=30)
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                break
            if state in ("maintenance", "stopping"):
                raise BootError(f"the container is {state}:\n{self.console_tail()}")
            time.sleep(0.1)
        else:
            raise BootError(f"not up after {timeout}s (state {state!r}):\n{self.console_tail()}")
        failed: list[str] = []
        if state == "degraded":
            out = self.run("systemctl", "--failed", "--plain", "--no-legend", check=False)
            failed = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
        record = Boot(time.monotonic() - started, state, failed)
        self.boots.append(record)
        log(f"booted {self.machine} in {record.seconds:.1f}s: {state}"
            + (f" (failed: {', '.join(failed)})" if failed else ""))  # fmt: skip
        return record

    def _wait_for_init(self, deadline: float) -> int:
        """The host pid of the container's PID 1 (nspawn's child running systemd)."""
        assert self.proc is not None
        while time.monotonic() < deadline:
            self._check_alive()
            for child in _children(self.proc.pid):
                if _comm(child) == "systemd":
                    return child
            time.sleep(0.02)
        raise BootError(f"no systemd in the container:\n{self.console_tail()}")

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BootError(
                f"systemd-nspawn exited with {self.proc.returncode}:\n{self.console_tail()}"
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def poweroff(self, timeout: float = 90.0) -> int:
        """`systemctl poweroff` inside; wait for nspawn to exit (its mounts go with it)."""
        assert self.proc is not None
        self.run("systemctl", "poweroff", "--no-block", check=False, timeout=30)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BootError(f"no poweroff after {timeout}s:\n{self.console_tail()}") from None
        self.pid = 0
        return code

    def close(self, timeout: float = 30.0) -> None:
        """Halt the container (or kill it), remove the session. Safe to call twice."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)  # nspawn: halt the container cleanly
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.machine} did not halt in {timeout}s; killing it")
                for pid in (self.pid, proc.pid):  # PID 1 first: its namespace dies with it
                    if pid:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                proc.wait(30)
        self.pid = 0
        if self.session.exists():
            shutil.rmtree(self.session, ignore_errors=True)
        _remove_nspawn_leftovers(self.machine)

    # -- inside

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the container (all its namespaces), as root, with a clean env."""
        assert self.pid, "the container is not running"
        environ = {**BASE_ENV, **(env or {})}
        cmd = [
            "nsenter", "--target", str(self.pid), "--all",
            "env", "-i", *(f"{k}={v}" for k, v in environ.items()), *argv,
        ]  # fmt: skip
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, check=False, timeout=timeout,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"inside the container: {' '.join(argv)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """`sh -ec SCRIPT` inside."""
        return self.run("sh", "-ec", script, check=check, timeout=timeout)

    def path(self, inside: str) -> Path:
        """A path inside the container, as the host can reach it (/proc/PID/root/...)."""
        assert self.pid, "the container is not running"
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        path = self.path(inside)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        tmp.rename(path)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """`systemctl show -p A,B unit` as a dict."""
        out = self.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def prop(self, unit: str, prop: str) -> str:
        return self.show(unit, prop).get(prop, "")

    def cursor(self) -> str:
        """The journal's current end: pass to `journal(after=...)`."""
        out = self.run("journalctl", "--show-cursor", "-n", "0", "--no-pager").stdout
        found = re.search(r"-- cursor: (\S+)", out)
        return found.group(1) if found else ""

    def journal(self, unit: str = "setpoint", after: str = "", boot: str = "") -> str:
        """The messages of `unit` in the journal, one a line, after the cursor `after`.

        Not `journalctl -u UNIT --after-cursor=C`: when the entry at C is not one of UNIT's,
        that skips UNIT's first entry after it (systemd 252). Here: `--cursor=C` (inclusive)
        and the entry at C dropped by its cursor.
        """
        args = ["journalctl", "--no-pager", "-u", unit, "-o", "json"]
        if after:
            args.append(f"--cursor={after}")
        if boot:
            args.append(f"--boot={boot}")
        messages: list[str] = []
        for line in self.run(*args).stdout.splitlines():
            entry = json.loads(line)
            if entry.get("__CURSOR") == after:
                continue
            message = entry.get("MESSAGE", "")
            if isinstance(message, list):  # not UTF-8: journalctl gives the bytes
                message = bytes(message).decode(errors="replace")
            messages.append(str(message))
        return "\n".join(messages) + ("\n" if messages else "")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


@contextlib.contextmanager
def terminate_is_interrupt() -> Iterator[None]:
    """While inside: SIGTERM to pytest raises KeyboardInterrupt, so teardown still runs."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


WHEELHOUSE = "/srv/setpoint-wheelhouse"
SRC = "/root/setpoint"


@contextlib.contextmanager
def booted_debian() -> Iterator[Container]:
    """A booted Debian with the checkout at SRC and the wheelhouse at WHEELHOUSE (read-only).

    Setpoint is not installed yet: that is `make_install`, the operator's step. Skips (fails
    under CI=true) where containers cannot be booted.
    One container on the host at a time (other pytest runs wait): two booted at once share
    their units' cgroups on a cgroup-v1 host, and each sees the other's processes die.
    """
    reason = unavailable_reason()
    if reason is not None:
        unavailable(reason)
    timings: dict[str, float] = {}
    with terminate_is_interrupt(), contextlib.ExitStack() as stack:
        for stale in sweep_stale():
            log(f"removed a stale session: {stale}")
        t = time.monotonic()
        tree = rootfs()
        timings["rootfs"] = time.monotonic() - t
        t = time.monotonic()
        stack.enter_context(_locked("container"))  # one at a time: see the docstring
        timings["queued"] = time.monotonic() - t
        t = time.monotonic()
        cached = wheelhouse()
        timings["wheelhouse"] = time.monotonic() - t
        ct = Container(tree)
        try:
            t = time.monotonic()
            wheels = ct.session / "wheels"
            wheels.mkdir()
            for whl in cached.glob("*.whl"):
                os.link(whl, wheels / whl.name)
            src = ct.session / "src"
            count = copy_checkout(src)
            # a copy of the copy: `pip wheel` leaves build/ and egg-info in its source
            scratch = ct.session / "wheel-src"
            shutil.copytree(src, scratch, symlinks=True)
            project_wheel(scratch, wheels)
            shutil.rmtree(scratch, ignore_errors=True)
            timings["checkout"] = time.monotonic() - t
            log(f"checkout: {count} files; wheels: {len(list(wheels.glob('*.whl')))}")
            ct.binds_ro = {WHEELHOUSE: wheels}
            ct.boot()
            timings["boot"] = ct.boots[-1].seconds
            t = time.monotonic()
            shutil.copytree(src, ct.path(SRC), symlinks=True)
            timings["copy-in"] = time.monotonic() - t
            ct.timings = timings
            yield ct
        finally:
            ct.close()


def make_install(ct: Container, target: str = "install") -> subprocess.CompletedProcess[str]:
    """`make install` in the checkout, as the README says, offline from the wheelhouse."""
    return ct.run(
        "make", "-C", SRC, target,
        env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELHOUSE},
        timeout=600,
    )  # fmt: skip
