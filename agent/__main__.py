"""`python -m agent` is the `setpoint` command."""

from agent.cli.main import main

raise SystemExit(main())
