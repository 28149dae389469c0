"""Effects and upgrades under a real PID 1 (issue 16 §2): a Debian 12 booted under systemd-nspawn,
Setpoint installed with `make install` as the README says, running as user `setpoint` inside the
shipped sandbox. Each test boots a container of its own (the upgrade test must start from a
box that never saw this tree), one after the other: the fixtures are function-scoped on purpose.
Two containers up at once share their units' cgroups (nspawn --keep-unit puts every container's
units under the same /payload/system.slice/UNIT of the name=systemd hierarchy on this cgroup v1
host), and stopping setpoint.service in one then left its exec effect's process alive in the
other; module-scoped fixtures would keep the first container up during the second test.

- test_every_effect_kind_and_an_exec_probe_under_the_shipped_sandbox: a domain bound to an exec
  probe whose script checks a flag file; flipping the flag fires one transition with every
  effect kind (exec, http, file, systemd, mqtt, alert); each one's outcome is observed inside the
  container: files under /run/setpoint (the unit's RuntimeDirectory), an HTTP receiver and a
  webhook sink served by a small recording server on 127.0.0.1, a unit restarted through the
  polkit rule (new MainPID), a message seen by mosquitto_sub on Debian's real mosquitto (its
  .debs come from the host's apt cache or `apt-get download` on the host, installed with
  `dpkg -i` inside: the container has no network), and the alert's webhook body.
- test_upgrade_from_the_previous_decision_logic_keeps_pending_actions: the newest commit whose
  decision logic (agent.core.LOGIC) is older than this tree's, from `git archive`, installed by
  its own `make install`; it leaves a unit job and an exec effect pending and is SIGKILLed; this
  tree's `make install` goes over it on the same /var/lib/setpoint; the new agent loads the old
  journal, restores both actions and completes each once; `journal verify` is clean.

Every wait polls for its event with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import nspawn
from tests.e2e.nspawn import Container, wait_for
from tests.e2e.test_production import (
    GOALS,
    RESTART,
    RULE,
    SETPOINT,
    agent_log,
    is_active,
    kill,
    main_pid,
    polkit_rule,
    status,
    wait_log,
)
from tests.needs import unavailable

pytestmark = pytest.mark.slow

UNIT = "/etc/systemd/system/setpoint.service"
STATE = "/var/lib/setpoint"
HOST_ARCHIVES = Path("/var/cache/apt/archives")
MQTT_DEBS = ("mosquitto", "libmosquitto1", "mosquitto-clients", "libcjson1", "libdlt2", "libwrap0")
"""Debian's mosquitto and what it needs beyond the container's minimal Debian."""
MQTT_URL = "mqtt://127.0.0.1:1883"  # Debian's mosquitto.conf: no listener = localhost:1883 only

RECEIVER_PORT = 18090
RECEIVED = "/run/e2e-receiver.jsonl"
RECEIVER_READY = "/run/e2e-receiver.ready"
RECEIVER = f"""\
#!/usr/bin/python3
# Records every request (method, path, headers, body) as a JSON line in {RECEIVED}; answers 200.
import http.server, json

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        record = {{"method": self.command, "path": self.path, "body": body.decode(),
                  "headers": {{k.lower(): v for k, v in self.headers.items()}}}}
        with open("{RECEIVED}", "a") as out:
            out.write(json.dumps(record) + "\\n")
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_PUT = do_POST

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", {RECEIVER_PORT}), Handler)
open("{RECEIVER_READY}", "w").close()
server.serve_forever()
"""
CHECK = """\
#!/bin/sh
# exec probe: healthy while the flag file $1 does not exist
test ! -e "$1"
"""
EFFECT = """\
#!/bin/sh
# exec effect: writes what it was given, atomically, to $1 (under the unit's /run/setpoint)
printf 'id=%s word=%s greeting=%s uid=%s\\n' \\
  "$SETPOINT_ACTION_ID" "$2" "$E2E_GREETING" "$(id -u)" > "$1.tmp"
mv "$1.tmp" "$1"
"""
HOLD = """\
#!/bin/sh
# exec effect that runs until the file $2 exists; says when it starts and when it is done, in $1
echo "start $SETPOINT_ACTION_ID" >> "$1"
while [ ! -e "$2" ]; do sleep 0.1; done
echo "done $SETPOINT_ACTION_ID" >> "$1"
"""

BROKEN = "/run/e2e-broken"  # the flag the exec probe checks
EXEC_OUT = "/run/setpoint/e2e-exec.out"
ROUTE_FILE = "/run/setpoint/e2e-route"
TARGET = "e2e-target.service"
MQTT_TOPIC = "e2e/effects"
MQTT_LOG = "/run/e2e-mqtt.log"
ALERT_SUMMARY = "E2E effects fired"
KINDS = ("exec", "http", "file", "systemd", "mqtt", "alert")
"""The React transition's effects, in the order of the goal file (and of their action ids)."""


def effects_goals(mqtt: bool) -> str:
    mqtt_effect = f"          - mqtt: {{topic: {MQTT_TOPIC}, payload: react}}\n" if mqtt else ""
    return f"""\
apiVersion: setpoint/v1
probes:
  flag-check:
    exec: {{argv: [/usr/local/bin/e2e-check, {BROKEN}]}}
    interval: 500ms
    timeout: 5s
    failures: 1
sinks:
  hook: {{webhook: {{url: "http://127.0.0.1:{RECEIVER_PORT}/alert"}}}}
domains:
  Effects:
    state:
      ok: {{type: bool, default: true, bind: 'probes["flag-check"].healthy'}}
      handled: {{type: bool, default: false}}
    goal: '(ok && !handled) || (!ok && handled)'
    transitions:
      React:
        when: '!ok && !handled'
        effects:
          - exec:
              argv: [/usr/local/bin/e2e-effect, {EXEC_OUT}, react]
              env: {{E2E_GREETING: hello}}
              timeout: 10s
          - http:
              url: "http://127.0.0.1:{RECEIVER_PORT}/effect"
              body: '{{"transition": "React"}}'
          - file: {{path: {ROUTE_FILE}}}
          - systemd: {{unit: {TARGET}, operation: restart}}
{mqtt_effect}\
          - alert: {{summary: {ALERT_SUMMARY}, severity: warning, sink: hook}}
        set: {{handled: true}}
      Recover:
        when: 'ok && handled'
        set: {{handled: false}}
"""


# --- helpers -----------------------------------------------------------------------------------


def mosquitto_debs() -> Path | str:
    """A host directory with Debian's mosquitto (and mosquitto-clients) and the libraries a
    minimal Debian lacks, cached like the root file system; or why there is none.

    The versions are the host's apt candidates; each .deb is taken from the host's apt cache
    when it is there, else fetched with `apt-get download` (on the host: the container has no
    network)."""
    if shutil.which("apt-get") is None or shutil.which("apt-cache") is None:
        return "no apt-get on the host to get Debian's mosquitto from"
    versions: dict[str, str] = {}
    for package in MQTT_DEBS:
        shown = subprocess.run(
            ["apt-cache", "show", "--no-all-versions", package],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        found = re.search(r"^Version: (\S+)$", shown.stdout, re.M)
        if found is None:
            return f"the host's apt knows no {package} (apt-get update?)"
        versions[package] = found.group(1)

    def build(tmp: Path) -> None:
        for package, version in versions.items():
            stem = f"{package}_{version.replace(':', '%3a')}_"
            cached = sorted(HOST_ARCHIVES.glob(f"{stem}*.deb"))
            if cached:
                shutil.copy2(cached[0], tmp)
                continue
            got = subprocess.run(
                ["apt-get", "download", "-q", f"{package}={version}"],
                cwd=tmp, capture_output=True, text=True, check=False, timeout=300,
            )  # fmt: skip
            if got.returncode != 0:
                raise RuntimeError(f"apt-get download {package}={version}: {got.stderr.strip()}")

    key = nspawn._digest(*(f"{p}={v}" for p, v in sorted(versions.items())))
    try:
        return nspawn._build_atomically(nspawn.CACHE / f"debs-mosquitto-{key}", build)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        return f"cannot get Debian's mosquitto on the host: {err}"


def install_mosquitto(ct: Container, debs: Path) -> None:
    """`dpkg -i` inside; Debian's postinst enables and starts mosquitto.service."""
    inside = ct.path("/root/mosquitto-debs")
    shutil.copytree(debs, inside)
    ct.sh("dpkg -i /root/mosquitto-debs/*.deb >/dev/null")
    ct.run("systemctl", "start", "mosquitto.service")  # Type=notify: listening once active
    assert is_active(ct, "mosquitto.service"), ct.journal("mosquitto")


def exec_start_with(ct: Container, *args: str) -> None:
    """A drop-in adding `args` to the installed unit's ExecStart= (the README's way)."""
    unit = ct.path(UNIT).read_text()
    found = re.search(r"^ExecStart=(.+)$", unit, re.M)
    assert found is not None, unit
    ct.write(
        "/etc/systemd/system/setpoint.service.d/e2e.conf",
        f"[Service]\nExecStart=\nExecStart={found.group(1)} {' '.join(args)}\n",
    )
    ct.run("systemctl", "daemon-reload")


def lines(ct: Container, inside: str) -> list[str]:
    """The complete lines of a file inside (a line being written is not one yet)."""
    path = ct.path(inside)
    return path.read_text().split("\n")[:-1] if path.exists() else []


def received(ct: Container, path: str) -> list[dict[str, Any]]:
    """The requests the receiver recorded for `path`, oldest first."""
    return [r for r in map(json.loads, lines(ct, RECEIVED)) if r["path"] == path]


def alerts_received(ct: Container, status: str) -> list[dict[str, Any]]:
    """Webhook deliveries of the React transition's alert with `status`."""
    found: list[dict[str, Any]] = []
    for request in received(ct, "/alert"):
        body = json.loads(request["body"])
        if body["summary"] == ALERT_SUMMARY and body["status"] == status:
            found.append({**request, "doc": body})
    return found


def mqtt_lines(ct: Container) -> list[str]:
    return lines(ct, MQTT_LOG)


def settled(ct: Container, name: str, **values: object) -> bool:
    """`name`'s goal holds with these values and nothing is pending or in flight."""
    doc = status(ct)
    dom = doc["domains"][name]
    return (
        dom["satisfied"]
        and not dom["in_flight"]
        and not doc["pending"]
        and all(dom["values"].get(k) == v for k, v in values.items())
    )


def fired_ids(ct: Container, cursor: str, domain: str, transition: str) -> list[int]:
    """The action ids of a transition's effects, from the agent's log line saying it fired."""
    line = wait_log(ct, cursor, rf"\[{domain}\] transition {transition} fired: actions \[")
    found = re.search(r"actions \[([\d, ]*)\]", line)
    assert found is not None, line
    return [int(i) for i in found.group(1).split(",")]


def no_denials(ct: Container, log: str) -> None:
    bad = [ln for ln in log.splitlines() if re.search(r"Permission denied|not permitted", ln)]
    assert bad == [], "\n".join(bad)


def verify_journal(ct: Container) -> None:
    out = ct.run(SETPOINT, "journal", "verify", check=False)
    assert out.returncode == 0 and "journal verified" in out.stdout, out.stdout + out.stderr


def logged(ct: Container, cursor: str, priority: str) -> list[str]:
    """The messages of unit setpoint after `cursor` at `priority` or more urgent."""
    args = ["journalctl", "--no-pager", "-u", "setpoint", "-p", priority, "-o", "json"]
    found: list[str] = []
    for line in ct.run(*args, f"--cursor={cursor}").stdout.splitlines():
        entry = json.loads(line)
        if entry.get("__CURSOR") != cursor:
            message = entry.get("MESSAGE", "")
            found.append(message if isinstance(message, str) else repr(message))
    return found


def completions(ct: Container) -> Counter[int]:
    """How many times the journal recorded each action id as completed (`history --json`)."""
    out = ct.run(SETPOINT, "history", "--json", "--limit", "100000").stdout
    return Counter(i for line in out.splitlines() for i in json.loads(line)["completed"])


def pending_ids(doc: dict[str, Any]) -> dict[int, str]:
    """`status --json`'s pending actions by id ("#12 exec [...] ...")."""
    found: dict[int, str] = {}
    for line in doc["pending"]:
        head = re.match(r"#(\d+) ", line)
        assert head is not None, line
        found[int(head.group(1))] = line
    return found


# --- test 1: every effect kind ------------------------------------------------------------------


@dataclass
class EffectsHost:
    ct: Container
    mqtt: Path | str
    """The mosquitto .debs installed inside, or why MQTT could not be had."""


@pytest.fixture
def effects_host() -> Iterator[EffectsHost]:
    """Setpoint installed and enabled with the effects goals; the receiver, the target unit
    and (when its .debs could be had) mosquitto with a subscriber running inside."""
    debs = mosquitto_debs()
    if isinstance(debs, str):
        nspawn.log(f"MQTT part will skip: {debs}")
    with nspawn.booted_debian() as ct:
        ct.write("/usr/local/bin/e2e-receiver", RECEIVER, 0o755)
        ct.write("/usr/local/bin/e2e-check", CHECK, 0o755)
        ct.write("/usr/local/bin/e2e-effect", EFFECT, 0o755)
        ct.write(
            "/etc/systemd/system/e2e-receiver.service",
            "[Service]\nExecStart=/usr/local/bin/e2e-receiver\n",
        )
        ct.write(f"/etc/systemd/system/{TARGET}", "[Service]\nExecStart=/bin/sleep infinity\n")
        ct.run("systemctl", "daemon-reload")
        ct.run("systemctl", "start", "e2e-receiver.service", TARGET)
        t = time.monotonic()
        if isinstance(debs, Path):
            install_mosquitto(ct, debs)
            ct.timings["mosquitto"] = time.monotonic() - t
        t = time.monotonic()
        nspawn.make_install(ct)
        ct.timings["make install"] = time.monotonic() - t
        ct.write(f"{GOALS}/effects.yaml", effects_goals(mqtt=isinstance(debs, Path)))
        if isinstance(debs, Path):
            exec_start_with(ct, "--mqtt-url", MQTT_URL)
        wait_for(lambda: ct.path(RECEIVER_READY).exists(), 20, "the receiver to listen")
        yield EffectsHost(ct, debs)
        nspawn.log(f"timings: {', '.join(f'{k} {v:.1f}s' for k, v in ct.timings.items())}")


def test_every_effect_kind_and_an_exec_probe_under_the_shipped_sandbox(
    effects_host: EffectsHost,
) -> None:
    ct, mqtt = effects_host.ct, isinstance(effects_host.mqtt, Path)
    kinds = [k for k in KINDS if mqtt or k != "mqtt"]
    # The README's steps: validate (which warns of file effects the sandbox cannot write; these
    # are under /run/setpoint, so no warning), regenerate the polkit rule, enable --now.
    out = ct.run(SETPOINT, "validate", GOALS, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warning" not in out.stdout + out.stderr, out.stdout + out.stderr
    polkit_rule(ct)
    assert f'"{TARGET}"' in ct.path(RULE).read_text()  # the systemd effect's unit is covered
    cursor = ct.cursor()
    ct.run("systemctl", "enable", "--now", "setpoint")
    wait_for(lambda: "Effects" in status(ct)["domains"], 15, "the Effects domain in status")
    wait_for(lambda: settled(ct, "Effects", ok=True, handled=False), 20, "the probe's verdict")
    if mqtt:  # a subscriber to everything: the agent's retained status proves it is live
        ct.run(
            "systemd-run", "--unit=e2e-mqtt-sub", f"--property=StandardOutput=file:{MQTT_LOG}",
            "mosquitto_sub", "-h", "127.0.0.1", "-t", "#", "-v",
        )  # fmt: skip
        wait_for(
            lambda: any(re.match(r"setpoint/\S+/status online$", ln) for ln in mqtt_lines(ct)),
            15, "mosquitto_sub to see the agent's retained status (subscribed)",
        )  # fmt: skip
    target_pid = main_pid(ct, TARGET)
    assert target_pid > 0

    ct.write(BROKEN, "")  # the exec probe fails; the goal breaks; React fires every effect
    ids = dict(zip(kinds, fired_ids(ct, cursor, "Effects", "React"), strict=True))
    try:
        wait_for(lambda: settled(ct, "Effects", ok=False, handled=True), 30, "React to complete")
    except AssertionError as err:
        raise AssertionError(f"{err}; status {status(ct)}; log:\n{agent_log(ct, cursor)}") from None

    # exec: ran as `setpoint` with SETPOINT_ACTION_ID and its env, wrote under /run/setpoint
    uid = ct.run("id", "-u", "setpoint").stdout.strip()
    want = f"id={ids['exec']} word=react greeting=hello uid={uid}"
    assert ct.path(EXEC_OUT).read_text().strip() == want
    # http: one request with the action id and the body
    (request,) = received(ct, "/effect")
    assert request["method"] == "POST", request
    assert request["headers"]["x-setpoint-action-id"] == str(ids["http"]), request
    assert json.loads(request["body"]) == {"transition": "React"}, request
    # file: a domain's file effect states its transition
    assert ct.path(ROUTE_FILE).read_text() == "React\n"
    # systemd: restarted through the polkit rule (the agent is not root)
    assert is_active(ct, TARGET) and main_pid(ct, TARGET) not in (0, target_pid)
    # mqtt: the message reached a real broker's subscriber
    if mqtt:
        wait_for(lambda: f"{MQTT_TOPIC} react" in mqtt_lines(ct), 10, "the MQTT message")
        assert mqtt_lines(ct).count(f"{MQTT_TOPIC} react") == 1, mqtt_lines(ct)
    # alert: the webhook sink got the firing alert, first from the effect (its action id)
    alert = alerts_received(ct, "firing")[0]
    assert alert["headers"]["x-setpoint-action-id"] == str(ids["alert"]), alert
    doc = alert["doc"]
    assert doc["labels"]["alertname"] == "React" and doc["labels"]["subject"] == "Effects", doc
    assert doc["severity"] == "warning" and doc["labels"]["severity"] == "warning", doc

    # the flag goes: Recover resets `handled`, which resolves React's alert at the sink
    ct.path(BROKEN).unlink()
    wait_for(lambda: settled(ct, "Effects", ok=True, handled=False), 30, "Recover to apply")
    wait_for(lambda: alerts_received(ct, "resolved") != [], 30, "React's alert resolved")
    assert alerts_received(ct, "resolved")[0]["doc"]["fingerprint"] == doc["fingerprint"]

    done = completions(ct)
    assert all(done[i] == 1 for i in ids.values()), (ids, done)  # each completed once
    log = agent_log(ct, cursor)
    no_denials(ct, log)
    assert logged(ct, cursor, "err") == [], log
    verify_journal(ct)
    nspawn.log(f"effects: ids {ids}")
    if not mqtt:
        unavailable(f"every effect kind but mqtt works; mqtt not tried: {effects_host.mqtt}")


# --- test 2: upgrade ----------------------------------------------------------------------------


def git(*args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(nspawn.ROOT), *args], capture_output=True, check=False, timeout=120
    )
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {out.stderr.decode().strip()}")
    return out.stdout.decode()


def logic_of(source: str) -> int:
    found = re.search(r"^LOGIC = (\d+)", source, re.M)
    assert found is not None, "agent/core/__init__.py has no LOGIC"
    return int(found.group(1))


def previous_logic() -> tuple[str, int, int]:
    """(commit, its LOGIC, this tree's LOGIC): the newest commit whose decision logic is older
    than the working tree's: HEAD when the tree bumped LOGIC without committing, else the parent
    of the oldest commit of the current LOGIC."""
    path = "agent/core/__init__.py"
    tree = Path(os.environ.get("SETPOINT_E2E_SRC") or nspawn.ROOT)  # what copy_checkout copies
    current = logic_of((tree / path).read_text())
    newest_current = ""
    for commit in git("log", "--format=%H", "--", path).split():
        logic = logic_of(git("show", f"{commit}:{path}"))
        if logic < current:
            older = git("rev-parse", f"{newest_current}^" if newest_current else "HEAD").strip()
            return older, logic_of(git("show", f"{older}:{path}")), current
        newest_current = commit
    shallow = git("rev-parse", "--is-shallow-repository").strip() == "true"
    hint = " (a shallow clone: `git fetch --unshallow`)" if shallow else ""
    raise RuntimeError(f"no commit with a decision logic older than {current}{hint}")


OLD_SRC = "/root/setpoint-old"
OLD_WHEELS = "/root/setpoint-old-wheels"
HOLD_LOG = f"{STATE}/e2e-hold.log"  # writable under the old unit too (no RuntimeDirectory yet)
RELEASE = "/run/e2e-release"
TRIGGER = "/run/e2e-trigger"
SLOW_RUNS = "/var/tmp/e2e-slow.runs"
UPGRADE_GOALS = f"""\
apiVersion: setpoint/v1
services:
  slow: {{unit: e2e-slow.service, {RESTART}}}
probes:
  trigger: {{exec: {{argv: [/usr/local/bin/e2e-check, {TRIGGER}]}}, interval: 500ms, failures: 1}}
domains:
  Upgrade:
    state:
      ok: {{type: bool, default: true, bind: 'probes["trigger"].healthy'}}
      moved: {{type: bool, default: false}}
    goal: 'ok || moved'
    transitions:
      Move:
        when: '!ok && !moved'
        effects:
          - exec: {{argv: [/usr/local/bin/e2e-hold, {HOLD_LOG}, {RELEASE}], timeout: 10m}}
        set: {{moved: true}}
"""
SLOW_UNIT = (
    "[Service]\n"
    f"ExecStartPre=/bin/sh -c 'echo start >> {SLOW_RUNS}'\n"
    "ExecStartPre=/bin/sleep 5\n"
    "ExecStart=/bin/sleep infinity\n"
)


@dataclass
class UpgradeHost:
    ct: Container
    old: str
    old_logic: int
    logic: int


@pytest.fixture
def upgrade_host() -> Iterator[UpgradeHost]:
    """A booted Debian with this tree at nspawn.SRC and the previous logic's at OLD_SRC;
    nothing installed yet."""
    try:
        old, old_logic, logic = previous_logic()
    except (RuntimeError, OSError) as err:
        unavailable(f"no previous version to upgrade from: {err}")
    nspawn.log(f"upgrade from {old[:12]} (LOGIC {old_logic}) to this tree (LOGIC {logic})")
    with nspawn.booted_debian() as ct:
        t = time.monotonic()
        tree = ct.session / "old-src"
        tree.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(nspawn.ROOT), "archive", "--format=tar", old],
            capture_output=True, check=True, timeout=120,
        ).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=120)
        shutil.copytree(tree, ct.path(OLD_SRC), symlinks=True)
        old_wheels(ct, tree)
        ct.timings["old source"] = time.monotonic() - t
        yield UpgradeHost(ct, old, old_logic, logic)
        nspawn.log(f"timings: {', '.join(f'{k} {v:.1f}s' for k, v in ct.timings.items())}")


def old_wheels(ct: Container, tree: Path) -> None:
    """The wheelhouse of the old lock at OLD_WHEELS when it differs from this tree's (cached
    by the same key nspawn.wheelhouse uses); the same lock installs from nspawn.WHEELHOUSE."""
    files = [tree / "requirements" / n for n in ("build.txt", "runtime.txt")]
    if [p.read_bytes() for p in files] == [p.read_bytes() for p in nspawn.requirement_files()]:
        return
    key = nspawn._digest("locked", *(p.read_bytes() for p in files))
    args = ["--require-hashes", *(a for p in files for a in ("-r", str(p)))]
    cached = nspawn._build_atomically(
        nspawn.CACHE / f"wheels-{key}", lambda tmp: nspawn._download(tmp, args)
    )
    shutil.copytree(cached, ct.path(OLD_WHEELS))


def install_old(ct: Container) -> None:
    """The old tree's `make install`, offline, exactly as the harness installs this one."""
    wheels = OLD_WHEELS if ct.path(OLD_WHEELS).exists() else nspawn.WHEELHOUSE
    ct.run(
        "make", "-C", OLD_SRC, "install",
        env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": wheels}, timeout=600,
    )  # fmt: skip


def installed_logic(ct: Container) -> int:
    out = ct.run("/opt/setpoint/venv/bin/python", "-c", "import agent.core as c; print(c.LOGIC)")
    return int(out.stdout)


def hold_log(ct: Container) -> list[str]:
    return lines(ct, HOLD_LOG)


def slow_runs(ct: Container) -> int:
    return len(lines(ct, SLOW_RUNS))


def holders(ct: Container) -> list[str]:
    """Command lines of the hold script's processes (the bracket keeps grep from matching
    itself)."""
    found = ct.sh("grep -ls 'e2e-hol[d]' /proc/[0-9]*/cmdline || true").stdout.split()
    cmdlines = [ct.sh(f"tr '\\0' ' ' < {p} || true").stdout.strip() for p in found]
    return [f"{p}: {c}" for p, c in zip(found, cmdlines, strict=True) if c]


def test_upgrade_from_the_previous_decision_logic_keeps_pending_actions(
    upgrade_host: UpgradeHost,
) -> None:
    ct = upgrade_host.ct
    ct.write("/usr/local/bin/e2e-check", CHECK, 0o755)
    ct.write("/usr/local/bin/e2e-hold", HOLD, 0o755)
    ct.write("/etc/systemd/system/e2e-slow.service", SLOW_UNIT)
    ct.run("systemctl", "daemon-reload")
    ct.write(f"{GOALS}/upgrade.yaml", UPGRADE_GOALS)

    # the previous version, installed and run as the README says
    t = time.monotonic()
    install_old(ct)
    ct.timings["make install (old)"] = time.monotonic() - t
    assert installed_logic(ct) == upgrade_host.old_logic
    polkit_rule(ct)
    cursor = ct.cursor()
    ct.run("systemctl", "enable", "--now", "setpoint")
    wait_for(lambda: is_active(ct, "e2e-slow.service"), 30, "the old agent to start e2e-slow")
    wait_for(lambda: settled(ct, "Upgrade", ok=True, moved=False), 30, "the old agent settled")

    # leave two actions pending: an exec effect that runs until RELEASE exists, and the start
    # job of e2e-slow (5 s in ExecStartPre); then SIGKILL the agent, with systemd's restart
    # held off by a runtime drop-in so that the old version cannot finish them
    ct.write("/run/systemd/system/setpoint.service.d/e2e-no-restart.conf",
             "[Service]\nRestart=no\n")  # fmt: skip
    ct.run("systemctl", "daemon-reload")
    ct.write(TRIGGER, "")
    wait_for(lambda: len(hold_log(ct)) == 1, 15, "the old agent's exec effect to start")
    (first,) = hold_log(ct)
    effect_id = int(first.split()[1])
    starts = slow_runs(ct)
    kill(ct, main_pid(ct, "e2e-slow.service"), "KILL")
    wait_for(lambda: slow_runs(ct) == starts + 1, 15, "the old agent's start job of e2e-slow")
    agent = main_pid(ct, "setpoint.service")
    kill(ct, agent, "KILL")
    wait_for(
        lambda: ct.prop("setpoint.service", "ActiveState") in ("failed", "inactive"),
        15, "the old agent to be gone",
    )  # fmt: skip
    try:
        wait_for(lambda: holders(ct) == [], 15, "the old agent's effect process to be killed")
    except AssertionError as err:
        raise AssertionError(f"{err}: {holders(ct)}") from None
    ct.path("/run/systemd/system/setpoint.service.d/e2e-no-restart.conf").unlink()
    ct.run("systemctl", "daemon-reload")
    ct.run("systemctl", "reset-failed", "setpoint")
    before = pending_ids(status(ct))  # the old version's view of its journal
    jobs = [i for i, p in before.items() if "systemd start e2e-slow.service" in p]
    assert len(jobs) == 1 and effect_id in before, before
    assert "exec [domain:Upgrade Move]" in before[effect_id], before
    old_log = agent_log(ct, cursor)

    # this tree over it: same venv, same unit, same journal
    cursor = ct.cursor()
    t = time.monotonic()
    nspawn.make_install(ct)
    ct.timings["make install (new)"] = time.monotonic() - t
    assert installed_logic(ct) == upgrade_host.logic
    assert pending_ids(status(ct)).keys() == before.keys()  # the new code reads the old journal
    ct.run("systemctl", "start", "setpoint")
    if upgrade_host.old_logic != upgrade_host.logic:  # the journal notes where the logic changed
        wait_log(ct, cursor, rf"decision logic {upgrade_host.logic} from entry \d+ on")
    line = wait_log(ct, cursor, r"started: \d+ pending actions restored")
    assert f"started: {len(before)} pending actions restored" in line, line
    # the effect runs again with the same id (it can dedupe on SETPOINT_ACTION_ID) ...
    wait_for(lambda: len(hold_log(ct)) == 2, 15, "the restored exec effect to run")
    assert hold_log(ct) == [f"start {effect_id}", f"start {effect_id}"]
    ct.write(RELEASE, "")
    try:
        wait_for(lambda: settled(ct, "Upgrade", ok=False, moved=True), 30, "Move to complete")
    except AssertionError as err:
        raise AssertionError(f"{err}; status {status(ct)}; log:\n{agent_log(ct, cursor)}") from None
    # ... and completes once; the start job completed without starting e2e-slow again
    assert hold_log(ct) == [f"start {effect_id}", f"start {effect_id}", f"done {effect_id}"]
    assert is_active(ct, "e2e-slow.service")
    assert slow_runs(ct) == starts + 1
    done = completions(ct)
    assert done[effect_id] == 1 and done[jobs[0]] == 1, (before, done)

    log = agent_log(ct, cursor)
    assert logged(ct, cursor, "err") == [], log
    # Replaying the old logic's entries (after its last snapshot: it was SIGKILLed) cannot
    # reproduce digests of the old state encoding: expected after an upgrade, so the journal
    # notes it at info; no warning at all.
    assert f"written by decision logic before {upgrade_host.logic})" in log, log
    assert logged(ct, cursor, "warning") == [], log
    verify_journal(ct)
    out = ct.run(SETPOINT, "status")
    assert "domain Upgrade: goal holds" in out.stdout, out.stdout
    assert "pending actions: 0" in out.stdout, out.stdout
    nspawn.log(f"upgrade: old agent's log:\n{old_log}\nnew agent's log:\n{log}")
