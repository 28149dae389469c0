"""Core: The pure core: goals model, state, inputs, actions and `step` (see step.py)."""

LOGIC = 5
"""Version of the decision logic. Bump it whenever `step` decides differently for some state and
input: the journal records where each version's entries begin, so a replay (load, verify) knows
which entries this code can reproduce. 2: alert news goes out in the step that made it; a unit
the agent starts, or restarts out of Error, is Starting while the job is in flight; a service
keeps only the transition times the thrash rule needs. 3: a failing expression pauses its
domain; the first start of a unit that was simply stopped is not a restart; a refused job is
"not permitted", not a give-up. 4: a RunEffect's owner is an Owner, not a string; a State no
longer carries its derived index (rebuilt on decode) nor a `completed` counter. 5: the agent's
restart reads Restarting until its stop completes; every systemd state maps on purpose; the
thrash rule counts failure cycles; reasons carry systemd's Result and exit status."""
