"""Log formats: journald priority prefixes (no timestamp of our own) under systemd, plain text
with timestamps otherwise, and one JSON object per line for log shippers."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.interfaces import logs

SWITCHES = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    switches = {name: getattr(logging, name) for name in SWITCHES}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in switches.items():
        setattr(logging, name, value)


def emit(capsys: pytest.CaptureFixture[str]) -> list[str]:
    log = logging.getLogger("setpoint.test")
    log.debug("hidden at info")
    log.info("hello %s", "world")
    log.warning("careful")
    log.error("broken")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    return capsys.readouterr().err.splitlines()


def test_journald_prefixes_when_journal_stream_is_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    logs.setup("info", "auto")
    lines = emit(capsys)
    assert lines[:4] == [
        "<6>setpoint.test: hello world",
        "<4>setpoint.test: careful",
        "<3>setpoint.test: broken",
        "<3>setpoint.test: failed",
    ]
    assert lines[4] == "<3>Traceback (most recent call last):"  # every line keeps its priority
    assert lines[-1] == "<3>ValueError: boom"
    assert all(line.startswith("<") for line in lines)
    assert not any(re.search(r"\d{4}-\d\d-\d\d", line) for line in lines)


def test_text_with_timestamps_otherwise(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logs.setup("info", "auto")
    lines = emit(capsys)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO +setpoint.test: hello world", lines[0]
    )
    assert not lines[0].startswith("<")


def test_json_one_object_per_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")  # json wins over auto-detection
    logs.setup("debug", "json")
    entries = [json.loads(line) for line in emit(capsys)]
    assert [e["level"] for e in entries] == ["debug", "info", "warning", "error", "error"]
    assert entries[1]["message"] == "hello world" and entries[1]["logger"] == "setpoint.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entries[1]["ts"])
    assert "ValueError: boom" in entries[4]["exception"]


def test_no_caller_thread_or_process_lookups(tmp_path: Path) -> None:
    """No format shows them, so no line pays for collecting them (the caller lookup walks
    the stack)."""
    with (tmp_path / "log").open("w") as out:
        logs.setup("info", "text", stream=out)
        records: list[logging.LogRecord] = []

        def keep(record: logging.LogRecord) -> bool:
            records.append(record)
            return True

        logging.getLogger().handlers[0].addFilter(keep)
        logging.getLogger("setpoint.test").info("hello")
    assert records[0].funcName == "(unknown function)" and records[0].lineno == 0
    assert records[0].thread is None and records[0].process is None
    assert (tmp_path / "log").read_text().endswith("setpoint.test: hello\n")
