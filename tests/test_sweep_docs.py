"""Run counts written in the docs and in the sweep files' own headers equal what the sweep files expand
to (the runs `rmpeft-sweep FILE --dry-run` counts), so that a changed grid cannot leave a stale number."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

from rmpeft.sweeps.spec import load_sweep
from tests.helpers import REPO

SWEEPS = REPO / "sweeps"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TABLE_ROW = re.compile(r"^\|\s*`sweeps/([\w.-]+)\.yaml`\s*\|.*\|\s*([\d,]+)\s*\|\s*$")
COMMAND = re.compile(r"rmpeft-sweep\s+sweeps/([\w.-]+)\.yaml((?:\s+[^\s#`]+)*)")
PATH = re.compile(r"sweeps/([\w.-]+)\.yaml")
RUNS = re.compile(r"\b(\d[\d,]*)(?:-run\b| runs?\b)")
HEADER_TOTAL = re.compile(r"^#.*= (\d[\d,]*) runs\b")


@cache
def count(name: str, overrides: tuple[str, ...] = ()) -> int:
    """Runs of ``sweeps/<name>.yaml`` (with command-line ``overrides``), as the dry run counts them."""
    return len(load_sweep(SWEEPS / f"{name}.yaml").with_overrides(list(overrides)).runs())


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def test_the_sweeps_table_lists_every_sweep_file_with_its_run_count():
    rows = {}
    for line in (REPO / "docs" / "sweeps.md").read_text().splitlines():
        if m := TABLE_ROW.match(line):
            rows[m.group(1)] = _number(m.group(2))
    assert set(rows) == {p.stem for p in SWEEPS.glob("*.yaml")}
    assert {name: count(name) for name in rows} == rows


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.stem)
def test_a_sweep_files_stated_total_is_its_run_count(path: Path):
    stated = [_number(m.group(1)) for line in path.read_text().splitlines() if (m := HEADER_TOTAL.match(line))]
    assert all(n == count(path.stem) for n in stated), (stated, count(path.stem))


def _doc_claims(path: Path) -> list[tuple[int, str, int, tuple[int, ...]]]:
    """(line number, sweep, stated, counts it may be) for every run count the file states about a sweep
    file: in a console block after `rmpeft-sweep sweeps/X.yaml [overrides]` (its output lines: the
    narrowed count), on the command's own line (the narrowed or the whole sweep's count, e.g. "one
    part; without overrides: all N runs"), and on any other line naming `sweeps/X.yaml` (the whole)."""
    claims = []
    fenced, current = False, None
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced, current = not fenced, None
            continue
        if m := COMMAND.search(line):
            overrides = tuple(t for t in m.group(2).split() if "=" in t and not t.startswith("-"))
            target = (m.group(1), (count(m.group(1), overrides), count(m.group(1))))
            current = (m.group(1), (count(m.group(1), overrides),)) if fenced else None
        elif fenced and current and line.startswith(("sweeps/", "would launch", "launching", "  ", "[")):
            target = current                                  # the command's output
        else:
            current = None
            named = PATH.search(line)
            target = (named.group(1), (count(named.group(1)),)) if named else None
        if target is not None:
            claims += [(i, target[0], _number(n.group(1)), target[1]) for n in RUNS.finditer(line)]
    return claims


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_run_counts_stated_in_the_docs_equal_the_sweep_files(path: Path):
    wrong = [c for c in _doc_claims(path) if c[2] not in c[3]]
    assert not wrong, "\n".join(f"{path.name}:{i}: {name}: says {stated} runs, expands to {counted[0]}"
                                for i, name, stated, counted in wrong)


def test_stale_numbers_are_caught(tmp_path):
    """The checks see a wrong count in a table row, a console block and prose."""
    text = "\n".join(["| `sweeps/fig3.yaml` | Figure 3 | 891 |", "```", "$ rmpeft-sweep sweeps/fig3.yaml --dry-run",
                      "sweeps/fig3.yaml: 891 runs: 0 finished, 0 failed, 891 missing", "would launch 891 runs:",
                      "```", "A dry run of `sweeps/table1.yaml` (7425 runs) takes a while.",
                      "`rmpeft-sweep sweeps/fig3.yaml model=opt-125m` (198 runs) is one model's part."])
    m = TABLE_ROW.match(text.splitlines()[0])
    assert m and _number(m.group(2)) != count("fig3")
    doc = tmp_path / "stale.md"
    doc.write_text(text)
    assert [(i, name, stated) for i, name, stated, counted in _doc_claims(doc) if stated not in counted] == [
        (4, "fig3", 891), (5, "fig3", 891), (7, "table1", 7425)]     # not line 8: 198 is fig3 narrowed
