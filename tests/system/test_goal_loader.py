"""The agent process reads its goal files through the loader child (agent.goals.isolated), at
start and on SIGHUP: a child that crashes or answers garbage stops a start with a clear error,
and on reload is reported like invalid goals while the last good goals stay in force.

The child is broken from outside: a `sitecustomize` on PYTHONPATH acts only in the loader child
(`python -m agent.cli.goalloader`), as the file `mode` beside it says."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.agentproc import AgentProcess, journal_rows, status, wait_until

HOOK = """\
import os, pathlib, sys
if "agent.cli.goalloader" in sys.orig_argv:
    mode = pathlib.Path(__file__).with_name("mode")
    mode = mode.read_text() if mode.exists() else ""
    if mode == "crash":
        os._exit(3)
    if mode == "garbage":
        os.write(1, b"lorem ipsum")
        os._exit(0)
"""
GOALS = "apiVersion: setpoint/v1\ndomains:\n" + "".join(
    f"  {name}:\n    state: {{x: {{type: bool, default: true}}}}\n    goal: x\n"
    for name in ("Flag", "NAME")
)


def hooked(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The hook's directory (write `mode` there) and the environment that installs it."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH", "")]))
    return hook, {**os.environ, "PYTHONPATH": path}


def wait_logged(agent: AgentProcess, text: str) -> None:
    wait_until(lambda: text in agent.output(), 20, repr(text))


def domains(state: Path) -> set[str]:
    return set(status(state)["domains"])


def test_a_broken_loader_on_reload_keeps_the_last_good_goals(tmp_path: Path) -> None:
    hook, env = hooked(tmp_path)
    goals = tmp_path / "g.yaml"
    goals.write_text(GOALS.replace("NAME", "First"))
    state = tmp_path / "state"
    with AgentProcess(goals, state, env=env) as agent:
        agent.wait_started()
        wait_until(lambda: domains(state) == {"Flag", "First"}, 20, "the first goals")
        goals.write_text(GOALS.replace("NAME", "Second"))
        expected = [
            ("crash", "the goal loader exited with status 3"),
            ("garbage", "the goal loader gave no answer (stdout began b'lorem ipsum')"),
        ]
        for mode, message in expected:
            (hook / "mode").write_text(mode)
            agent.proc.send_signal(signal.SIGHUP)
            wait_logged(agent, f"reload rejected, keeping the last good goals: {message}")
            assert agent.proc.poll() is None
            assert domains(state) == {"Flag", "First"}
        goals.write_text(GOALS.replace("NAME", "Second").replace("default: true", "default: 7"))
        (hook / "mode").unlink()
        agent.proc.send_signal(signal.SIGHUP)
        wait_logged(agent, f"reload rejected, keeping the last good goals: {goals}:4:")
        assert domains(state) == {"Flag", "First"}
        goals.write_text(GOALS.replace("NAME", "Second"))
        agent.proc.send_signal(signal.SIGHUP)
        wait_logged(agent, "goals reloaded")
        wait_until(lambda: domains(state) == {"Flag", "Second"}, 20, "the second goals")
        assert agent.stop() == 0
    rows = journal_rows(state)[::-1]  # oldest first
    rejected = [r["input"]["problems"] for r in rows if r["input"]["type"] == "GoalsRejected"]
    assert rejected[0] == ["the goal loader exited with status 3"]  # as GoalsInvalid's reason


def test_a_broken_loader_at_start_is_a_clear_error(tmp_path: Path) -> None:
    hook, env = hooked(tmp_path)
    (hook / "mode").write_text("crash")
    goals = tmp_path / "g.yaml"
    goals.write_text(GOALS.replace("NAME", "First"))
    with AgentProcess(goals, tmp_path / "state", env=env) as agent:
        assert agent.proc.wait(timeout=30) == 1
        assert "setpoint: the goal loader exited with status 3" in agent.output()
