"""`python -m agent` is the `setpoint` command."""

from agent.cli import main

raise SystemExit(main())
