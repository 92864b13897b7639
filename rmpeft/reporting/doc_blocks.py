"""Documentation whose tables are generated from committed run records, so that it cannot go stale.

A Markdown file marks each generated block with the command that produces it:

    <!-- generated: rmpeft-tables results/cpu-study --table main -->
    ...the command's standard output...
    <!-- end generated -->

``rmpeft-docs FILE`` checks that every block equals what its command prints now (exit 1 and the first
differing block otherwise); ``rmpeft-docs FILE --write`` rewrites the blocks. Only ``rmpeft-tables``
commands are run (in this process, with their standard output captured), never with ``--out`` (checking
a doc writes nothing); paths in them are relative to the repository root.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shlex
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

from rmpeft.errors import RmpeftError

REPO = Path(__file__).resolve().parents[2]
# A block's markers start their lines (an indented example of one, as in docs/tables.md, is not a block).
BLOCK = re.compile(r"^(<!-- generated: (?P<command>.+?) -->\n)(?P<body>.*?)^(<!-- end generated -->)",
                   re.DOTALL | re.MULTILINE)
COMMANDS = ("rmpeft-tables",)


@contextmanager
def _in_repo() -> Iterator[None]:   # contextlib.chdir needs Python 3.11
    before = os.getcwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(before)


def run_command(command: str) -> str:
    """The standard output of one generating command, run from the repository root."""
    from rmpeft.reporting.cli import run_tables, tables_parser

    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise RmpeftError(f"generated block command '{command}' cannot be split into arguments: {e}") from None
    if not argv or argv[0] not in COMMANDS:
        raise RmpeftError(f"generated block command '{command}': expected one of {', '.join(COMMANDS)}")
    out, err = io.StringIO(), io.StringIO()
    with _in_repo(), redirect_stderr(err):
        try:
            if tables_parser().parse_args(argv[1:]).out is not None:   # checking a doc never writes elsewhere
                raise RmpeftError(f"generated block command '{command}' may not write files (--out): a block "
                                  "is the command's standard output")
            code = run_tables(argv[1:], stdout=out, stderr=err)
        except SystemExit as e:   # argparse: usage, then the error on its last line
            code = e.code if isinstance(e.code, int) else 2
    if code != 0:
        last = (err.getvalue().strip().splitlines() or [""])[-1]
        raise RmpeftError(f"'{command}' exited {code}: {last}")
    return out.getvalue()


def regenerate(text: str) -> tuple[str, list[str]]:
    """``text`` with every generated block rewritten, and the commands whose blocks changed."""
    changed: list[str] = []

    def fill(match: re.Match[str]) -> str:
        body = run_command(match["command"])
        body = body if body.endswith("\n") else body + "\n"
        if body != match["body"]:
            changed.append(match["command"])
        return f"{match.group(1)}{body}{match.group(4)}"

    return BLOCK.sub(fill, text), changed


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rmpeft-docs", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="Markdown files with generated blocks")
    p.add_argument("--write", action="store_true", help="rewrite the blocks (default: only check them)")
    args = p.parse_args(argv)
    stale = 0
    for path in args.files:
        try:
            text = path.read_text()
            new, changed = regenerate(text)
        except (OSError, RmpeftError) as e:
            print(f"rmpeft-docs: error: {path}: {e}", file=sys.stderr)
            return 2
        if not BLOCK.search(text):
            print(f"rmpeft-docs: {path}: no generated blocks", file=sys.stderr)
        for command in changed:
            print(f"{path}: {'rewrote' if args.write else 'stale'}: {command}")
        if changed and args.write:
            path.write_text(new)
        stale += bool(changed) and not args.write
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
