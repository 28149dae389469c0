"""The agent as a whole: runtime write-ahead and group commit in-process; the real process for
single-instance locking, shutdown, reload and bad input."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import pytest

from agent.core.actions import TrackedAction
from agent.core.commands import parse
from agent.core.inputs import GoalsLoaded, OperatorCommand, Tick
from agent.core.spec import DomainSpec, Effect, GoalSet, StateVar, Transition
from agent.core.state import State
from agent.errors import TransientError
from agent.interfaces.metrics import Metrics
from agent.journal.store import Journal
from agent.runtime.lanes import RetryPolicy
from agent.runtime.loop import Runtime
from tests.agentproc import AgentProcess, cli, journal_rows, status, wait_until


def fan_out_goals(n: int) -> GoalSet:
    """One domain whose broken goal fires `n` independent exec transitions."""
    names = [f"t{i}" for i in range(n)]
    return GoalSet(
        domains=(
            DomainSpec(
                "Fan",
                tuple(StateVar(v, "bool", False) for v in names),
                " && ".join(names),
                tuple(
                    Transition(v, f"!{v}", (Effect("exec", argv=("true",)),), ((v, True),))
                    for v in names
                ),
            ),
        )
    )


async def test_no_effect_runs_before_its_action_is_durable(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "state")
    rt = Runtime(journal, State())
    durable: list[bool] = []

    async def check_journal(action: TrackedAction) -> str:
        reader = await Journal.open(tmp_path / "state", readonly=True)
        try:
            state, _ = await reader.load()
        finally:
            await reader.close()
        durable.append(action.id in state.pending)
        return "ok"

    rt.lanes.register("exec", check_journal)
    runner = asyncio.create_task(rt.run())
    rt.submit(GoalsLoaded(fan_out_goals(5), time.time()))
    await rt.wait_for(lambda s: "Fan" in s.domains and s.domains["Fan"].satisfied, 10)
    rt.stop()
    await runner
    await journal.close()
    assert durable == [True] * 5


async def test_inputs_arriving_together_share_one_commit(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "state")
    rt = Runtime(journal, State())
    rt.submit(GoalsLoaded(fan_out_goals(1), 0.0))
    for i in range(300):
        rt.submit(OperatorCommand("maintenance_off" if i % 2 else "maintenance_on", float(i)))
        rt.submit(Tick(float(i)))  # only the newest tick of a batch is stepped
    rt.stop()
    await rt.run()
    await journal.close()
    assert (rt.stats.inputs, rt.stats.batches, rt.stats.journaled) == (302, 1, 301)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


CHAIN = """\
apiVersion: setpoint/v1
domains:
  Flag:
    state:
      done: {type: bool, default: false}
    goal: done
    transitions:
      Set:
        when: "!done"
        effects:
          - exec: {argv: [sleep, "SECONDS"]}
        set: {done: true}
"""


def test_second_agent_on_the_same_state_dir_exits_at_once(tmp_path: Path) -> None:
    goals = write(tmp_path / "g.yaml", CHAIN.replace("SECONDS", "0"))
    state = tmp_path / "state"
    with AgentProcess(goals, state) as first:
        first.wait_started()
        started = time.monotonic()
        with AgentProcess(goals, state) as second:
            code = second.proc.wait(timeout=20)
            assert code == 1
            assert time.monotonic() - started < 10
            assert "is locked by another setpoint" in second.output() or "pid" in second.output()
            assert str(first.proc.pid) in second.output()
        assert first.stop() == 0


def test_sigterm_lets_in_flight_effects_finish_and_exits_0(tmp_path: Path) -> None:
    goals = write(tmp_path / "g.yaml", CHAIN.replace("SECONDS", "1"))
    state = tmp_path / "state"
    with AgentProcess(goals, state) as agent:
        agent.wait_started()
        wait_until(lambda: "fired" in agent.output(), 10, "the transition to fire")
        assert agent.stop() == 0
        assert "stopped cleanly; 0 actions pending" in agent.output()
    assert status(state)["domains"]["Flag"]["values"]["done"] is True


def test_sigterm_timeout_keeps_pending_actions_for_the_next_start(tmp_path: Path) -> None:
    goals = write(tmp_path / "g.yaml", CHAIN.replace("SECONDS", "2"))
    state = tmp_path / "state"
    with AgentProcess(goals, state, extra=("--shutdown-timeout", "200ms")) as agent:
        agent.wait_started()
        wait_until(lambda: "fired" in agent.output(), 10, "the transition to fire")
        assert agent.stop() == 0
        assert "1 effects still running; they stay pending" in agent.output()
    assert len(status(state)["pending"]) == 1
    with AgentProcess(goals, state) as again:
        again.wait_started()
        assert "started: 1 pending actions restored" in again.output()
        wait_until(lambda: status(state)["domains"]["Flag"]["satisfied"], 20, "the restored effect")
        assert again.stop() == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("services:\n  web: {unitt: x}\n", ":3:9: unknown key 'unitt'"),
        ("sinks:\n  bus: {mqtt: {topic: a}}\n", ":3:9: sink 'bus' publishes to MQTT, but the "
         "agent runs without an MQTT broker (--mqtt-url)"),
    ],
)  # fmt: skip
def test_invalid_goals_at_start_exit_2_with_locations(
    tmp_path: Path, body: str, message: str
) -> None:
    goals = write(tmp_path / "g.yaml", "apiVersion: setpoint/v1\n" + body)
    with AgentProcess(goals, tmp_path / "state") as agent:
        assert agent.proc.wait(timeout=20) == 2
        assert f"{goals}{message}" in agent.output()


def wait_for_flag(agent: AgentProcess, state: Path) -> None:
    """Until the agent is up and the Flag domain's goal holds."""
    agent.wait_started()
    wait_until(lambda: status(state)["domains"].get("Flag", {}).get("satisfied", False), 20,
               "the goal to hold")  # fmt: skip


def test_reload_with_bad_goals_keeps_the_last_good_ones(tmp_path: Path) -> None:
    goals = write(tmp_path / "g.yaml", CHAIN.replace("SECONDS", "0"))
    state = tmp_path / "state"
    with AgentProcess(goals, state) as agent:
        wait_for_flag(agent, state)
        write(goals, "apiVersion: setpoint/v1\ndomains:\n  Flag:\n    goal: 1 +\n")
        agent.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload rejected" in agent.output(), 10, "the reload to be rejected")
        assert f"{goals}:" in agent.output()
        assert agent.proc.poll() is None
        assert status(state)["domains"]["Flag"]["satisfied"] is True
        assert agent.stop() == 0


def test_cli_rejects_bad_arguments_clearly(tmp_path: Path) -> None:
    result = cli("run", "--tick", "soon")
    assert result.returncode == 2 and "soon" in result.stderr
    result = cli("history", "--since", "yesterday-ish", "--state-dir", str(tmp_path))
    assert result.returncode == 2 and "is not a time" in result.stderr
    result = cli("run", "--listen", "localhost")
    assert result.returncode == 2 and "is not HOST:PORT" in result.stderr
    result = cli("status", "--state-dir", str(tmp_path / "missing"))
    assert result.returncode == 0 and "pending actions: 0" in result.stdout


def test_history_filters_by_service_and_time(tmp_path: Path) -> None:
    goals = write(tmp_path / "g.yaml", CHAIN.replace("SECONDS", "0"))
    state = tmp_path / "state"
    with AgentProcess(goals, state) as agent:
        wait_for_flag(agent, state)
        assert agent.stop() == 0
    rows = journal_rows(state)
    assert rows and all("input" in r for r in rows)
    assert cli("history", "--service", "Flag", "--state-dir", str(state)).stdout.strip()
    assert not cli("history", "--service", "nothing", "--state-dir", str(state)).stdout.strip()
    future = str(time.time() + 3600)
    assert not cli("history", "--since", future, "--state-dir", str(state)).stdout.strip()


def test_operator_commands_reach_the_agent_and_bad_ones_change_nothing(tmp_path: Path) -> None:
    goals = write(tmp_path / "g.yaml", CHAIN.replace("SECONDS", "0"))
    state = tmp_path / "state"
    assert "no agent is running" in cli("resync", "--state-dir", str(state)).stderr
    with AgentProcess(goals, state) as agent:
        agent.wait_started()
        result = cli("maintenance", "on", "--state-dir", str(state))
        assert result.returncode == 0 and "accepted: maintenance_on" in result.stdout
        wait_until(lambda: status(state)["maintenance"] is True, 10, "maintenance mode")
        bad = cli("reset", "ghost", "--state-dir", str(state))
        assert bad.returncode == 1 and "command refused: no service named 'ghost'" in bad.stderr
        assert cli("maintenance", "off", "--state-dir", str(state)).returncode == 0
        wait_until(lambda: status(state)["maintenance"] is False, 10, "maintenance off")
        assert oct((state / "control.sock").stat().st_mode & 0o777) == "0o600"
        assert agent.stop() == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "body is not JSON"),
        (b"[]", "body must be a JSON object"),
        (b'{"command": "reboot"}', "command must be one of maintenance_on, maintenance_off"),
        (b'{"command": "reset", "service": "ghost"}', "no service named 'ghost'"),
        (b'{"command": "reset", "force": true}', "unknown field(s): force"),
        (b'{"command": "reset", "service": 3}', "no service named 3"),
    ],
)
def test_command_parsing_rejects_bad_requests(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse(body, {"web"})


async def test_effect_retries_are_counted_per_lane(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "state")
    metrics = Metrics(State)
    rt = Runtime(journal, State(), metrics=metrics)
    calls: list[int] = []

    async def flaky(action: TrackedAction) -> str:
        calls.append(action.id)
        if len(calls) < 2:
            raise TransientError("refused")
        return "ok"

    rt.lanes.register("exec", flaky, RetryPolicy(attempts=3, initial=0.01, maximum=0.02))
    rt.submit(GoalsLoaded(fan_out_goals(1), 0.0))
    rt.stop()
    await rt.run()
    assert await rt.lanes.drain(5)
    await journal.close()
    assert 'setpoint_action_retries_total{lane="exec"} 1.0' in metrics.render().decode()


async def test_a_failing_projection_never_stands_between_commit_and_dispatch(
    tmp_path: Path,
) -> None:
    journal = await Journal.open(tmp_path / "state")
    metrics = Metrics(State)
    rt = Runtime(journal, State(), metrics=metrics)
    ran: list[int] = []

    async def record(action: TrackedAction) -> str:
        ran.append(action.id)
        return "ok"

    def broken_projection(state: State) -> None:
        raise RuntimeError("broker client exploded")

    rt.on_commit.append(broken_projection)
    rt.lanes.register("exec", record)
    rt.submit(GoalsLoaded(fan_out_goals(2), 0.0))
    rt.stop()
    await rt.run()
    assert await rt.lanes.drain(5)
    await journal.close()
    assert ran == [1, 2]
    text = metrics.render().decode()
    assert 'setpoint_projection_errors_total{projection="' in text
