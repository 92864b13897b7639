"""``python -m rmpeft.sweeps``: the same as ``rmpeft-sweep``."""

import sys

from rmpeft.sweeps.cli import main

sys.exit(main())
