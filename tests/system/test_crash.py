"""A real crash test: the agent in a subprocess is SIGKILLed at random points while effects are in
flight, restarted on the same journal, and in the end nothing is lost and nothing done twice.

The goal is a chain of stages; each transition runs an exec effect that records its action id
(idempotently, by SETPOINT_ACTION_ID) and sleeps a little, so kills land mid-effect.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess, cli, journal_rows, status

STAGES = 24
EFFECT = """
import os, sys, time, random
out = sys.argv[1]
action = os.environ["SETPOINT_ACTION_ID"]
with open(os.path.join(out, "runs.log"), "a") as f:
    f.write(action + "\\n")
time.sleep(random.uniform(0.2, 0.5))
marker = os.path.join(out, "done-" + sys.argv[2])
if not os.path.exists(marker):
    tmp = marker + ".tmp" + action
    with open(tmp, "w") as f:
        f.write(action)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, marker)
"""


def chain_goals(out: Path) -> str:
    lines = [
        "apiVersion: setpoint/v1",
        "domains:",
        "  Chain:",
        "    state:",
        "      stage: {type: int, default: 0}",
        f"    goal: stage == {STAGES}",
        "    transitions:",
    ]
    for k in range(STAGES):
        lines += [
            f"      Stage{k}:",
            f"        when: stage == {k}",
            "        retry_after: 100ms",
            "        effects:",
            f"          - exec: {{argv: [{sys.executable}, {out / 'effect.py'}, {out}, s{k}]}}",
            f"        set: {{stage: {k + 1}}}",
        ]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "effect.py").write_text(EFFECT)
    goals = tmp_path / "goals.yaml"
    goals.write_text(chain_goals(out))
    state = tmp_path / "state"
    rng = random.Random(int(os.environ.get("SETPOINT_CRASH_SEED", "1234")))
    kills = 0
    deadline = time.monotonic() + 90
    while not (out / f"done-s{STAGES - 1}").exists() or not _chain_finished(state):
        assert time.monotonic() < deadline, "the chain did not finish"
        with AgentProcess(goals, state, bus="none") as agent:
            agent.wait_started()
            started, waited = _runs(out), time.monotonic() + 5
            while _runs(out) == started and time.monotonic() < waited:
                time.sleep(0.01)  # cheap: the next effect starting (none comes once done)
            time.sleep(rng.uniform(0.0, 0.6))  # mid-effect (each sleeps 0.2-0.5 s) or just after
            if _chain_finished(state):
                agent.stop()
                break
            agent.kill(signal.SIGKILL)
            kills += 1
    assert kills >= 3, "the test must actually crash the agent mid-work"
    markers = sorted(p.name for p in out.glob("done-*"))
    assert markers == sorted(f"done-s{k}" for k in range(STAGES))
    completed = [i for row in journal_rows(state) for i in row["completed"]]
    assert len(completed) == len(set(completed)) >= STAGES, "an action completed twice"
    runs = (out / "runs.log").read_text().split()
    repeated = {a for a in runs if runs.count(a) > 1}
    assert len(repeated) <= kills, "re-runs happen only for actions in flight at a kill"
    result = cli("journal", "verify", "--state-dir", str(state))
    assert result.returncode == 0, result.stdout + result.stderr


def _runs(out: Path) -> int:
    log = out / "runs.log"
    return len(log.read_text().split()) if log.exists() else 0


def _chain_finished(state: Path) -> bool:
    if not (state / "journal.db").exists():
        return False
    chain = status(state)["domains"].get("Chain", {})
    return bool(chain.get("satisfied")) and chain.get("values", {}).get("stage") == STAGES
