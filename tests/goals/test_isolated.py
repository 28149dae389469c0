"""Goal files loaded in a child process (agent.goals.isolated), as the daemon loads them: the
same goal set and the same located problems as `load_goals` in-process; a child that dies, hangs
or writes garbage is a clear LoaderFailed; and the daemon's own imports hold no pydantic."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.core.inputs import Tick
from agent.core.spec import GoalSet
from agent.errors import ConfigError
from agent.goals import isolated as isolated_module
from agent.goals import load_goals
from agent.goals.isolated import INVALID, OK, LoaderFailed, child_main, load_isolated
from agent.journal import codec
from tests.agentproc import ROOT, wait_until

CONFIG = ROOT / "config"
PY = sys.executable


def child(code: str) -> tuple[str, ...]:
    """A stand-in for the loader child: `python -c CODE` (the loader's arguments follow)."""
    return (PY, "-c", code)


async def isolated(paths: list[Path], *, broker: bool = True, **kw: Any) -> GoalSet:
    return await load_isolated(paths, broker=broker, decode=codec.decode, **kw)


def in_process_problems(paths: list[Path], *, broker: bool = True) -> str:
    with pytest.raises(ConfigError) as err:
        load_goals(paths, broker=broker)
    return str(err.value)


@pytest.mark.parametrize(
    "paths",
    [[CONFIG / "demo.yaml"], [CONFIG], *([p] for p in sorted((CONFIG / "examples").iterdir()))],
    ids=lambda paths: paths[0].name,
)
async def test_the_child_builds_the_same_goal_set(paths: list[Path]) -> None:
    goals = await isolated(paths)
    expected = await asyncio.to_thread(load_goals, paths)
    assert goals == expected
    assert goals.digest == expected.digest


async def test_invalid_goals_are_the_same_located_problems(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "apiVersion: setpoint/v1\nservices:\n  web: {unit: 3, probes: [nope]}\n"
        "  db: {unit: db.service, depends_on: [web], bogus: 1}\n"
    )
    (tmp_path / "b.yaml").write_text(
        "apiVersion: setpoint/v1\ndomains:\n  D:\n    state: {x: {type: int, default: 0}}\n"
        "    goal: |\n      x == 0 &&\n      x == 'a'\n"
    )
    (tmp_path / "\udcff-odd name.yaml").write_text("apiVersion: setpoint/v2\n")
    for paths in ([tmp_path], [tmp_path / "b.yaml"]):
        with pytest.raises(ConfigError) as err:
            await isolated(paths)
        assert str(err.value) == await asyncio.to_thread(in_process_problems, paths)
    assert f"{tmp_path / 'b.yaml'}:7:" in str(err.value)  # CEL checked at load, located


async def test_without_a_broker_mqtt_is_a_problem_as_in_process(tmp_path: Path) -> None:
    goals = tmp_path / "g.yaml"
    goals.write_text("apiVersion: setpoint/v1\nsinks:\n  bus: {mqtt: {topic: alerts}}\n")
    assert await isolated([goals]) == await asyncio.to_thread(load_goals, [goals])
    with pytest.raises(ConfigError) as err:
        await isolated([goals], broker=False)
    text = await asyncio.to_thread(in_process_problems, [goals], broker=False)
    assert str(err.value) == text and "MQTT broker" in text


async def test_a_missing_file_is_a_problem_not_a_failure(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file or directory"):
        await isolated([tmp_path / "missing.yaml"])


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("import os; os.kill(os.getpid(), 9)", "the goal loader was killed by SIGKILL"),
        ("raise RuntimeError('boom')", "the goal loader exited with status 1:\n"),
        ("import sys; sys.exit(3)", "the goal loader exited with status 3"),
        ("print('Hello')", "the goal loader gave no answer (stdout began b'Hello\\n')"),
        ("pass", "the goal loader gave no answer (stdout began b'')"),
        (f"import sys; sys.stdout.write({OK.decode()!r} + '\\n{{nope')", "does not decode"),
        (f"import sys; sys.stdout.write({OK.decode()!r} + '\\n[1, 2]')", "a tuple, not goals"),
        (f"import sys; sys.stdout.write({INVALID.decode()!r} + '\\n{{')", "do not decode"),
        (f"import sys; sys.stdout.write({INVALID.decode()!r} + '\\n[]')", "are not [file"),
        (f"import sys; sys.stdout.write({INVALID.decode()!r} + '\\n[[1,2,3,4]]')", "are not"),
    ],
    ids=["killed", "traceback", "status", "garbage", "silent", "bad-goals", "not-goals",
         "bad-problems", "no-problems", "untyped-problems"],
)  # fmt: skip
async def test_a_child_without_a_usable_answer_is_a_clear_failure(code: str, message: str) -> None:
    with pytest.raises(LoaderFailed) as err:
        await isolated([CONFIG], program=child(code))
    assert message in str(err.value)


async def test_a_traceback_ends_the_failure_message() -> None:
    with pytest.raises(LoaderFailed) as err:
        await isolated([CONFIG], program=child("raise RuntimeError('boom')"))
    assert str(err.value).endswith("RuntimeError: boom")


async def test_an_encoded_value_that_is_not_a_goal_set_is_refused() -> None:
    body = (OK + b"\n" + codec.encode(Tick(1.0))).decode()
    code = f"import sys; sys.stdout.write({body!r})"
    with pytest.raises(LoaderFailed, match="answered a Tick, not goals"):
        await isolated([CONFIG], program=child(code))


async def test_a_child_that_cannot_start_is_a_clear_failure(tmp_path: Path) -> None:
    with pytest.raises(LoaderFailed, match="cannot start the goal loader"):
        await isolated([CONFIG], program=(str(tmp_path / "no-python"),))


async def test_a_runaway_answer_is_cut_off_and_its_child_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(isolated_module, "MAX_ANSWER", 100_000)
    code = "import sys, time; print('x' * 1_000_000, flush=True); time.sleep(60)"
    with pytest.raises(LoaderFailed, match=r"wrote more than 100000 bytes \(killed it\)"):
        await isolated([CONFIG], program=child(code), timeout=30)


async def test_a_chatty_child_still_answers() -> None:
    code = (
        "import runpy, sys; sys.stderr.write('chatter ' * 1_000_000); "
        "runpy.run_module('agent.cli.goalloader', run_name='__main__')"
    )
    goals = await isolated([CONFIG / "demo.yaml"], program=child(code))
    assert goals == await asyncio.to_thread(load_goals, [CONFIG / "demo.yaml"])


def pid_file_child(pid: Path) -> tuple[str, ...]:
    """A child that writes its pid, then hangs."""
    return child(f"import os, time; open({str(pid)!r}, 'w').write(str(os.getpid())); "
                 "time.sleep(600)")  # fmt: skip


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_hanging_child_times_out_and_is_killed(tmp_path: Path) -> None:
    pid = tmp_path / "pid"
    with pytest.raises(LoaderFailed, match=r"no answer within 0\.5s \(killed it\)"):
        await isolated([CONFIG], program=pid_file_child(pid), timeout=0.5)
    assert gone(int(pid.read_text()))  # killed and reaped


async def test_a_cancelled_load_kills_its_child(tmp_path: Path) -> None:
    pid = tmp_path / "pid"
    task = asyncio.create_task(isolated([CONFIG], program=pid_file_child(pid)))
    await asyncio.to_thread(wait_until, lambda: pid.exists() and pid.read_text() != "", 10, "pid")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gone(int(pid.read_text()))


def test_the_child_answers_on_stdout_and_keeps_stray_prints_out(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    goals = tmp_path / "g.yaml"
    goals.write_text("apiVersion: setpoint/v1\nservices:\n  web: {unit: 7}\n")

    def noisy(obj: object) -> bytes:
        print("noise")  # lands on stderr
        return codec.encode(obj)

    def run(*argv: str) -> int:
        stdout = sys.stdout
        try:
            return child_main(argv, noisy)
        finally:
            sys.stdout = stdout  # the child sends it to stderr

    assert run("--no-broker", "--", str(goals)) == 0
    out = capsysbinary.readouterr().out
    assert out.split(b"\n", 1) == [INVALID, json.dumps([[str(goals), 3, 15,
        "unit: expected a string, got an integer"]]).encode()]  # fmt: skip
    goals.write_text("apiVersion: setpoint/v1\n")
    assert run("--broker", "--", str(goals)) == 0
    captured = capsysbinary.readouterr()
    assert captured.out.split(b"\n", 1)[0] == OK and b"noise" in captured.err


def test_the_child_refuses_a_bad_command_line() -> None:
    result = subprocess.run(
        [PY, "-m", "agent.cli.goalloader", str(CONFIG)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2 and "usage:" in result.stderr and not result.stdout


def test_the_daemon_imports_neither_pydantic_nor_yaml_nor_the_goal_models() -> None:
    code = (
        "import sys, agent.cli.main, agent.app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_core',"
        " 'yaml') or m in ('agent.goals.loader', 'agent.goals.model', 'agent.goals.yamlsafe')))"
    )
    result = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
