"""``python -m rmpeft.bench``: the same as ``rmpeft-bench``."""

import sys

from rmpeft.bench.cli import main

sys.exit(main())
