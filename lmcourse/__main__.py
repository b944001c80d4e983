"""`python -m lmcourse ...` runs the course's command line (see lmcourse.cli)."""

from lmcourse.cli import main

raise SystemExit(main())
