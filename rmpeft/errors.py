"""User-facing errors: one clear line, naming the bad value and the valid choices."""

from __future__ import annotations

from collections.abc import Iterable


# Exit status of every command for a usage or config error (an RmpeftError, a bad argument): argparse's own.
USAGE_EXIT = 2


class RmpeftError(Exception):
    """An error caused by the user's input (config, data, command line). Printed as one line; the command
    exits with :data:`USAGE_EXIT`."""


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> RmpeftError:
    """Build the standard 'unknown X' error listing the valid choices."""
    valid = ", ".join(sorted(str(c) for c in choices))
    return RmpeftError(f"unknown {kind} '{value}'; valid choices: {valid}")
