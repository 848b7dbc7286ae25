"""`python -m agent`: the same as the `distlm-node` console script."""

from agent.cli import main

raise SystemExit(main())
