"""The committed CPU study (results/cpu-study, docs/cpu-repro.md): its figures regenerate from the records
with the doc's own commands, and its grid gives Figure 1 a point for every method on every task."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from rmpeft.reporting import cli as reporting_cli
from rmpeft.reporting.aggregate import aggregate
from rmpeft.reporting.runs import runs_from_records
from rmpeft.reporting.share_figures import share_curve_points
from rmpeft.reporting.sources import load_records
from tests.helpers import REPO

DOC = REPO / "docs" / "cpu-repro.md"
FIGURES = "docs/figures/cpu-study"
STUDY_KEYS = {("none", None), ("ft", None), ("lora", None), ("masking", 1e-3), ("masking", 1e-4),
              ("masking", 1e-5), ("structured_masking", 1e-3), ("structured_masking", 1e-4)}


def _plot_commands() -> list[list[str]]:
    """The doc's `rmpeft-plot ... --out docs/figures/cpu-study[/sub]` lines, as argument lists."""
    lines = [line.split("#")[0] for line in DOC.read_text().splitlines() if line.startswith("rmpeft-plot ")]
    return [shlex.split(line)[1:] for line in lines if f"--out {FIGURES}" in line]


def test_the_docs_figures_regenerate_from_the_committed_records(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    commands = _plot_commands()
    assert {c[0] for c in commands} == {"lr-curves", "share-curve", "structured-vs-random"}
    for args in commands:
        i = args.index("--out")
        args[i + 1] = str(tmp_path / Path(args[i + 1]).relative_to(FIGURES))
        assert reporting_cli.plot_main(args) == 0, args
    shown = re.findall(r"\(figures/cpu-study/([^)\s]+\.png)\)", DOC.read_text())
    assert shown and [name for name in shown if not (tmp_path / name).is_file()] == []


def test_every_study_method_is_measured_on_every_smollm2_task():
    runs = runs_from_records(load_records([REPO / "results" / "cpu-study"]))
    points = share_curve_points(aggregate(runs))["smollm2-135m"]
    assert {(method, ratio) for method, ratio, _ in points} == STUDY_KEYS
