"""`python -m dynamics.cli.main`: the `dynamics` command."""

import sys

from dynamics.cli.main import main

sys.exit(main())
