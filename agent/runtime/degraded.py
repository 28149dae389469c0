"""Runtime: degraded mode, for when the journal cannot write (disk full, read-only, I/O error,
locked by a stuck writer).

The agent keeps observing and deciding. What is safe without a durable record is still done:
unit jobs and alert deliveries are idempotent and re-derived from observation anyway. Domain
and route effects (exec, http, file, mqtt) are held back: write-ahead still holds for them. A
watcher tries a small write now and then; once one goes through, the runtime records the gap
(a JournalGap entry) with a snapshot of the state after it, and releases what it held.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from agent.core.actions import Alert, RunEffect, SendAlert, TrackedAction, UnitJob
from agent.core.alerts import EXPIRY, Builtin, fingerprint
from agent.core.inputs import JournalGap

UNRECORDED_KINDS = frozenset({"systemd", "alert"})
"""Effect kinds done without a record: a unit job, an alert (deduplicated by fingerprint)."""


def done_unrecorded(action: TrackedAction) -> str | None:
    """What `action` counts as when done without a record; None when it must wait."""
    if isinstance(action, UnitJob):
        return "unit jobs"
    if isinstance(action, SendAlert):
        return "alert deliveries"
    if isinstance(action, RunEffect) and action.effect.kind in UNRECORDED_KINDS:
        return f"{action.effect.kind} effects"
    return None


@dataclass
class Gap:
    """A stretch without a journal: since when, why, and what happened meanwhile."""

    began: float
    error: str
    inputs: int = 0
    done: Counter[str] = field(default_factory=Counter)
    held: dict[int, TrackedAction] = field(default_factory=dict)
    """Effects waiting for the journal, by id."""
    writable: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by the watcher once a write went through."""

    def said(self) -> tuple[str, ...]:
        """What was done meanwhile, a phrase each."""
        done = [f"{n} {what}" for what, n in sorted(self.done.items())]
        if self.held:
            done.append(f"{len(self.held)} effects held for the journal")
        return tuple(done)

    def marker(self, at: float) -> JournalGap:
        """The journal entry that records this gap."""
        return JournalGap(self.began, at, self.inputs, self.said(), self.error)

    def summary(self) -> str:
        """What was done meanwhile, in words."""
        return ", ".join(self.said()) or "nothing"


def journal_alert(began: float, now: float, error: str | None) -> Alert:
    """The JournalDegraded alert: firing while `error` says why the journal cannot write,
    resolved when None. Sent untracked (see app.py): it cannot be journaled."""
    name = Builtin.JOURNAL_DEGRADED.value
    labels = (("alertname", name), ("severity", "critical"), ("subject", "journal"))
    if error is None:
        summary, ends = "the journal can write again", now
    else:
        summary, ends = (
            f"the journal cannot write ({error}); supervising without a record",
            (now + EXPIRY),
        )
    key = fingerprint(name, "journal")
    return Alert(key, name, labels, summary, "critical", error is not None, began, ends)


def health(gap: Gap | None, now: float) -> dict[str, object]:
    """The journal's health for status views: `{"degraded": false}` while it writes."""
    if gap is None:
        return {"degraded": False}
    return {
        "degraded": True,
        "for_seconds": round(max(0.0, now - gap.began), 3),
        "error": gap.error,
        "unrecorded_inputs": gap.inputs,
        "held_effects": len(gap.held),
        "done": list(gap.said()),
    }
