"""Runtime: the dumb loop (step, commit, dispatch) and the effect lanes."""
