"""Unit log lines for alerts: journalctl's JSON parsed and bounded (adapters.systemd.unitlog),
the queries it makes (a stand-in journalctl records its argv and answers canned entries: the
host has no journald), faults (slow, too much output, missing binary), and the alert side
(adapters.alerts.unitlogs): read once per firing alert, none for other alerts, a failure logged
once and the alert still complete. The real journal is read in tests/e2e/test_unit_logs.py."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.adapters.alerts.sinks import AM_LOGS_BYTES, alert_doc, alertmanager_body
from agent.adapters.alerts.unitlogs import AlertLogs
from agent.adapters.systemd.unitlog import (
    ENDED,
    STARTED,
    TOO_LONG,
    JournalUnreadable,
    LastProcess,
    Limits,
    UnitLogs,
    bounded,
    entries,
    text,
)
from agent.core.actions import Alert
from agent.errors import SetpointError

INV = "0123456789abcdef0123456789abcdef"


def test_entries_skip_what_is_not_a_json_object() -> None:
    out = b'{"MESSAGE": "a"}\n[1]\nnot json\n{"MESSAGE": "b"}\n{"MESSAGE": "cut'
    assert entries(out) == [{"MESSAGE": "a"}, {"MESSAGE": "b"}]


def test_message_text_strings_bytes_and_nulls() -> None:
    assert text("hello") == "hello"
    assert text(list(b"caf\xc3\xa9 \xff")) == "café \ufffd"
    assert text(None) == TOO_LONG
    assert text([300]) == TOO_LONG


def test_bounded_keeps_the_newest_lines_within_count_and_bytes() -> None:
    lines = [f"line {i}" for i in range(30)]
    assert bounded(lines, 20, 4096) == (tuple(lines[10:]), True)
    assert bounded(lines[:5], 20, 4096) == (tuple(lines[:5]), False)
    kept, cut = bounded(lines, 20, 3 * len(b"line 29\n"))
    assert kept == ("line 27", "line 28", "line 29") and cut
    assert bounded([], 20, 4096) == ((), False)


def test_bounded_cuts_a_newest_line_over_budget_on_a_character_boundary() -> None:
    kept, cut = bounded(["ok", "é" * 100], 20, 64)
    assert cut and len(kept) == 1 and kept[0].endswith("…")
    assert len(kept[0].encode()) + 1 <= 64
    kept[0].encode().decode()  # still valid UTF-8


FAKE = """\
import json, os, sys, time
args = sys.argv[1:]
INV, OTHER = os.environ["FAKE_INV"], os.environ["FAKE_OTHER"]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
mode = os.environ.get("FAKE_MODE", "")
if mode == "slow":
    time.sleep(60)
if mode == "spam":
    while True:
        sys.stdout.write(json.dumps({"MESSAGE": "x" * 1000}) + "\\n")
if mode == "fail":
    sys.stderr.write("Failed to open journal: Permission denied\\n")
    sys.exit(1)
if any(a.startswith("MESSAGE_ID=") for a in args):
    if mode != "no-manager":
        print(json.dumps({"INVOCATION_ID": INV, "__CURSOR": "c"}))
elif "-r" in args:  # the unit's newest own line
    print(json.dumps({"_SYSTEMD_INVOCATION_ID": OTHER}))
else:
    with open(os.environ["FAKE_LOG"]) as log:
        reads = sum("_SYSTEMD_INVOCATION_ID=" in line for line in log)
    if mode == "untagged":  # journald read them after the process had died
        if "_PID=4242" in args:
            for i in range(25):
                print(json.dumps({"MESSAGE": f"line {i}"}))
            print(json.dumps({"MESSAGE": "PID reused", "_SYSTEMD_INVOCATION_ID": OTHER}))
        sys.exit(0)
    shown = {"late": [0, 10, 25][min(reads, 3) - 1], "silent": 0}.get(mode, 25)
    for i in range(shown):
        print(json.dumps({"MESSAGE": f"line {i}", "_SYSTEMD_INVOCATION_ID": INV}))
"""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path]:
    script = tmp_path / "journalctl.py"
    script.write_text(FAKE)
    log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_INV", INV)
    monkeypatch.setenv("FAKE_OTHER", "f" * 32)
    return [sys.executable, str(script)], log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


async def test_ended_invocation_then_its_last_lines(fake: tuple[list[str], Path]) -> None:
    argv, log = fake
    got = await UnitLogs(journalctl=argv).last_lines("web.service", ended=True)
    assert got.invocation == INV and got.unit == "web.service"
    assert got.lines == tuple(f"line {i}" for i in range(5, 25)) and got.truncated
    find, lines, again = calls(log)  # read twice: the two reads agree
    assert again == lines
    assert find[:6] == ["--no-pager", "--quiet", "-o", "json", "-r", "-n"] and find[6] == "1"
    assert "UNIT=web.service" in find
    assert {a.removeprefix("MESSAGE_ID=") for a in find if "MESSAGE_ID=" in a} == set(ENDED)
    assert lines[-1] == f"_SYSTEMD_INVOCATION_ID={INV}" and "21" in lines


@pytest.mark.parametrize(
    ("mode", "shown", "reads"),
    [("late", tuple(f"line {i}" for i in range(5, 25)), 4), ("silent", (), 6)],
)
async def test_an_ended_invocations_lines_are_read_until_they_settle(
    fake: tuple[list[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    shown: tuple[str, ...],
    reads: int,
) -> None:
    """journald can store the manager's "exited" before the process's last lines: those that
    arrive late are waited for, and a silent invocation is believed once `quiet` has passed."""
    argv, log = fake
    monkeypatch.setenv("FAKE_MODE", mode)
    reader = UnitLogs(journalctl=argv, limits=Limits(settle=0.01, quiet=0.05))
    got = await reader.last_lines("web.service", ended=True)
    assert got.lines == shown
    assert len(calls(log)) == 1 + reads


def last_process(invocation: str, pid: int) -> LastProcess:
    async def ask(unit: str) -> tuple[str, int]:
        assert unit == "web.service"
        return invocation, pid

    return ask


@pytest.mark.parametrize("user", [False, True])
async def test_an_ended_main_process_lines_journald_could_not_tag(
    fake: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch, user: bool
) -> None:
    """A process that dies before journald reads its first line leaves lines with no
    invocation, only the unit its stream named and its PID: the manager's ExecMainPID for the
    invocation finds them; a line of that PID tagged with another invocation is not taken."""
    argv, log = fake
    monkeypatch.setenv("FAKE_MODE", "untagged")
    limits = Limits(settle=0.01, quiet=0.05)
    reader = UnitLogs(journalctl=argv, limits=limits, user=user,
                      last_process=last_process(INV, 4242))  # fmt: skip
    got = await reader.last_lines("web.service", ended=True)
    assert got.invocation == INV and got.lines == tuple(f"line {i}" for i in range(5, 25))
    query = calls(log)[1]
    units = ["_SYSTEMD_USER_UNIT", "_SYSTEMD_UNIT"] if user else ["_SYSTEMD_UNIT"]
    assert query[query.index(f"_SYSTEMD_INVOCATION_ID={INV}") + 1 :] == [
        a for u in units for a in ("+", "_PID=4242", f"{u}=web.service")
    ]


@pytest.mark.parametrize("known", [("f" * 32, 4242), (INV, 0), ("", 0)])
async def test_untagged_lines_only_of_the_invocation_the_manager_vouches_for(
    fake: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch, known: tuple[str, int]
) -> None:
    """The manager has begun another invocation (its PID is not this one's), or knows none:
    only tagged lines count, here none."""
    argv, log = fake
    monkeypatch.setenv("FAKE_MODE", "untagged")
    reader = UnitLogs(journalctl=argv, limits=Limits(settle=0.01, quiet=0.05),
                      last_process=last_process(*known))  # fmt: skip
    got = await reader.last_lines("web.service", ended=True)
    assert got.lines == () and "+" not in calls(log)[1]


async def test_running_invocation_and_user_units(fake: tuple[list[str], Path]) -> None:
    argv, log = fake
    reader = UnitLogs(journalctl=argv, user=True, last_process=last_process(INV, 4242))
    await reader.last_lines("web.service", ended=False)
    find, lines = calls(log)
    assert "+" not in lines  # a running process is alive for journald to tag its lines
    assert "USER_UNIT=web.service" in find
    assert [a for a in find if "MESSAGE_ID=" in a] == [f"MESSAGE_ID={m}" for m in STARTED]


async def test_without_a_manager_message_the_units_newest_line_names_it(
    fake: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, log = fake
    monkeypatch.setenv("FAKE_MODE", "no-manager")
    assert await UnitLogs(journalctl=argv).invocation("web.service", ended=True) == "f" * 32
    assert "_SYSTEMD_UNIT=web.service" in calls(log)[1]


@pytest.mark.parametrize(
    ("mode", "why"),
    [("slow", "no answer within"), ("fail", "Permission denied")],
)
async def test_slow_or_failing_journalctl_is_unreadable(
    fake: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch, mode: str, why: str
) -> None:
    argv, _ = fake
    monkeypatch.setenv("FAKE_MODE", mode)
    reader = UnitLogs(journalctl=argv, limits=Limits(timeout=1.0))
    with pytest.raises(JournalUnreadable, match=why):
        await reader.last_lines("web.service", ended=True)


async def test_output_is_read_up_to_its_bound_and_the_process_killed(
    fake: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, _ = fake
    monkeypatch.setenv("FAKE_MODE", "spam")
    reader = UnitLogs(journalctl=argv, limits=Limits(read_bytes=64 * 1024, timeout=30.0))
    with pytest.raises(JournalUnreadable, match="no invocation"):  # spam names none
        await reader.invocation("web.service", ended=True)


async def test_missing_journalctl_and_an_empty_real_journal() -> None:
    with pytest.raises(JournalUnreadable, match="No such file"):
        await UnitLogs(journalctl=["/nonexistent/journalctl"]).invocation("a.service", ended=True)
    if shutil.which("journalctl") is None:
        pytest.skip("no journalctl on this host")
    with pytest.raises(JournalUnreadable, match=r"no invocation of nothing-here-e2e\.service"):
        await UnitLogs().invocation("nothing-here-e2e.service", ended=True)


def alert(name: str = "RestartLimitReached", firing: bool = True) -> Alert:
    labels = (("alertname", name), ("severity", "critical"), ("subject", "web"))
    return Alert(f"{name}:web", name, labels, "web gave up", "critical", firing, 1000.0, 1240.0)


DOC = {"unit": "web.service", "invocation": INV, "lines": ["a", "b"], "truncated": False}


class Reader:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.fail = fail

    async def __call__(self, unit: str, ended: bool) -> dict[str, Any]:
        self.calls.append((unit, ended))
        await asyncio.sleep(0)
        if self.fail:
            raise JournalUnreadable("no invocation of web.service in the journal")
        return DOC


async def test_alert_logs_read_once_per_firing_alert() -> None:
    read = Reader()
    logs = AlertLogs(read, {"web": "web.service"}.get)
    both = await asyncio.gather(logs.for_alert(alert()), logs.for_alert(alert()))
    assert list(both) == [DOC, DOC] and read.calls == [("web.service", True)]
    assert logs.get("RestartLimitReached:web") == DOC
    again = replace(alert(), starts_at=2000.0)  # fired again: a new failure
    await logs.for_alert(again)
    assert read.calls == [("web.service", True)] * 2
    assert await logs.for_alert(alert("ServiceUnhealthy")) == DOC
    assert read.calls[-1] == ("web.service", False)  # the running invocation


async def test_no_logs_for_resolved_other_or_unknown_subjects() -> None:
    read = Reader()
    logs = AlertLogs(read, {"web": "web.service"}.get)
    assert await logs.for_alert(alert(firing=False)) is None
    assert await logs.for_alert(alert("GoalBroken")) is None
    assert await logs.for_alert(alert("UnitNotPermitted")) is None
    assert await AlertLogs(read, lambda _name: None).for_alert(alert()) is None
    assert read.calls == []


async def test_unreadable_journal_logs_one_line_and_gives_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    read = Reader(fail=True)
    logs = AlertLogs(read, {"web": "web.service"}.get)
    with caplog.at_level(logging.WARNING, "setpoint.alert.logs"):
        assert await logs.for_alert(alert()) is None
        assert await logs.for_alert(alert()) is None  # a reminder: not read, not logged again
    assert len(read.calls) == 1
    [line] = [r.getMessage() for r in caplog.records]
    assert "RestartLimitReached about web goes out without unit logs" in line
    assert issubclass(JournalUnreadable, SetpointError)


def test_payloads_carry_the_lines() -> None:
    doc = alert_doc(alert(), "h1", 1010.0, DOC)
    assert doc["logs"] == DOC and "logs" not in alert_doc(alert(), "h1", 1010.0)
    [am] = json.loads(alertmanager_body(alert(), "h1", 1010.0, "x:", DOC))
    assert am["annotations"] == {"summary": "web gave up", "logs": "a\nb", "invocation": INV}
    many = {**DOC, "lines": [f"line {i:04}" for i in range(400)]}
    [big] = json.loads(alertmanager_body(alert(), "h1", 1010.0, "x:", many))
    note = big["annotations"]["logs"]
    assert note.startswith("…") and note.endswith("line 0399")
    assert len(note.encode()) <= AM_LOGS_BYTES
