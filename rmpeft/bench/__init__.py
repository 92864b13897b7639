"""``rmpeft-bench``: step time and memory of masked fine-tuning against the frozen-model floor.

:mod:`~rmpeft.bench.workload` builds the random model and batch, :mod:`~rmpeft.bench.steps` attaches
each method and measures its training steps, :mod:`~rmpeft.bench.report` renders the rows and checks
the engine's targets, :mod:`~rmpeft.bench.cli` is the command.
"""

from rmpeft.bench.cli import main

__all__ = ["main"]
