"""Sweep files: expansion into runs, command-line restriction, one-line errors.

Expected run counts are computed here from the paper's design (models x tasks x seeds x methods x LR
grid sizes), independently of the sweep expansion code.
"""

from __future__ import annotations

import pytest

from rmpeft.errors import RmpeftError
from rmpeft.sweeps.spec import load_sweep
from tests.helpers import REPO

SWEEPS = REPO / "sweeps"
MODELS_OPT = 3
TASKS = 11
SEEDS = 3
PAPER_RATIOS = {0.1, 0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001, 0.00005, 0.00001}
BASELINES = {"ft", "lora", "adalora", "prefix", "adapter", "bitfit"}
PAPER_GRID = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1}   # the authors' grid: one LR per decade, every method

# Independent run counts of every sweep file (see the header comment of each file).
EXPECTED_RUNS = {
    "table1": MODELS_OPT * TASKS * SEEDS * (len(BASELINES) + len(PAPER_RATIOS)) * len(PAPER_GRID),
    "table1-dense": MODELS_OPT * TASKS * SEEDS * (len(BASELINES) * 5 + len(PAPER_RATIOS) * 5),
    "structured": MODELS_OPT * TASKS * SEEDS * len(PAPER_RATIOS) * len(PAPER_GRID),
    "structured-dense": MODELS_OPT * TASKS * SEEDS * len(PAPER_RATIOS) * 5,
    "fig3": MODELS_OPT * 1 * SEEDS * (len(PAPER_RATIOS) + 2) * len(PAPER_GRID),
    "fig4a": 1 * 4 * SEEDS * (len(PAPER_RATIOS) + 1) * len(PAPER_GRID),   # SST-2, RTE, COPA, WiC; masking + FT
    "fig4b": 1 * 1 * SEEDS * 3 * 2 * 4,
    "llama2": 4 * SEEDS * (6 + 6 + 4 * 7),
    "fulltrain": 2 * 2 * SEEDS * (4 + 3) * len(PAPER_GRID),
    "smoke": 2 * 2,
    "cpu-repro": 2 * (1 + 4 + 3 + 4 + 5 + 5),  # SST-2 and RTE x {zero-shot, FT, LoRA, masking at 3 ratios}
    "table2": 5 * SEEDS * (2 * 5 + 3 * 5),  # 5 image tasks x {FT, LoRA, masking at 3 ratios} x 5 LRs
    "cpu-study-epochs3": 1 + 1 + 3,  # SST-2 for three epochs: LoRA, Masking 0.01%, Masking 0.001% at 3 LRs
    # SST-2 seed 1 on Gemma 3: zero-shot, 4 LRs x (FT, LoRA, masking x 3); downward: one LR each (5), one more
    # for FT and 0.1%, two more for 0.01% (4)
    "cpu-study-gemma3": 1 + 5 * 4 + 5 + 4,
    # SST-2/RTE x 2 seeds + BoolQ/WiC x 1 seed, each {zero-shot + 4 LRs x (FT, LoRA, masking x 3, structured x 2)}
    # each: zero-shot, 6 grids of 4 LRs, Structured 0.01% over 5; WiC FT one more LR; upward: RTE LoRA 2 LRs and
    # Masking 0.01% 2 and 0.001% 1 (2 seeds each), WiC Masking 0.1% 1, 0.01% 2, Structured 0.1% 1; downward:
    # BoolQ LoRA 2, Masking 0.001% 2, Structured 0.1% 1
    "cpu-study": (2 * 2 + 2 * 1) * (1 + 4 * 6 + 5) + 1 + 2 * 2 + 2 * 2 + 2 * 1 + 1 + 2 + 1 + 2 + 2 + 1,
}


def values_of(run: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for o in run:
        key, value = o.split("=", 1)
        assert key not in out, f"{key} set twice in {run}"
        out[key] = value
    return out


def test_every_sweep_file_has_a_count():
    assert {p.stem for p in SWEEPS.glob("*.yaml")} == set(EXPECTED_RUNS)


@pytest.mark.parametrize("name", sorted(EXPECTED_RUNS))
def test_expansion_counts(name):
    runs = load_sweep(SWEEPS / f"{name}.yaml").runs()
    assert len(runs) == EXPECTED_RUNS[name]
    assert len(set(runs)) == len(runs)
    for run in runs:
        values_of(run)


def test_table1_runs_the_paper_protocol_on_the_paper_grid_for_every_method():
    runs = [values_of(r) for r in load_sweep(SWEEPS / "table1.yaml").runs()]
    assert {r["method"] for r in runs} == BASELINES | {"masking"}
    assert {r["protocol"] for r in runs} == {"paper"}
    grids: dict[tuple, set] = {}
    for r in runs:
        grids.setdefault((r["method"], r.get("method.ratio")), set()).add(float(r["optim.lr"]))
    assert len(grids) == len(BASELINES) + len(PAPER_RATIOS)
    assert all(grid == PAPER_GRID for grid in grids.values()), grids


def test_dense_table1_covers_the_paper_and_masking_reaches_large_lrs():
    runs = [values_of(r) for r in load_sweep(SWEEPS / "table1-dense.yaml").runs()]
    assert {r["method"] for r in runs} == BASELINES | {"masking"}
    assert {float(r["method.ratio"]) for r in runs if r["method"] == "masking"} == PAPER_RATIOS
    assert {r["model"] for r in runs} == {"opt-125m", "opt-1.3b", "opt-13b"}
    assert len({r["task"] for r in runs}) == TASKS
    sparsest = [float(r["optim.lr"]) for r in runs if r.get("method.ratio") and float(r["method.ratio"]) == 1e-5]
    assert max(sparsest) >= 0.1
    # sparser masks get larger learning rates: the best-case LR grows monotonically with sparsity
    top = {}
    for r in runs:
        if r["method"] == "masking":
            top[float(r["method.ratio"])] = max(top.get(float(r["method.ratio"]), 0), float(r["optim.lr"]))
    ratios = sorted(top, reverse=True)
    assert [top[x] for x in ratios] == sorted(top[x] for x in ratios)
    assert max(float(r["optim.lr"]) for r in runs if r["method"] in {"ft", "lora", "adapter"}) < 0.1


def test_command_line_overrides_restrict_or_extend():
    sweep = load_sweep(SWEEPS / "table1.yaml")
    per_cell = EXPECTED_RUNS["table1"] // MODELS_OPT
    assert len(sweep.with_overrides(["model=opt-125m"]).runs()) == per_cell
    assert len(sweep.with_overrides(["model=opt-125m,opt-13b"]).runs()) == 2 * per_cell
    # the paper grid: 1e-2 once for every method and masking ratio
    assert len(sweep.with_overrides(["optim.lr=0.01"]).runs()) == MODELS_OPT * TASKS * SEEDS * (6 + 9)
    only_ratio = sweep.with_overrides(["method.ratio=1e-4"]).runs()
    assert len(only_ratio) == MODELS_OPT * TASKS * SEEDS * len(PAPER_GRID)
    assert all("method=masking" in r for r in only_ratio)
    extended = sweep.with_overrides(["seed=1", "trainer.epochs=10"]).runs()
    assert len(extended) == EXPECTED_RUNS["table1"] // SEEDS
    assert all("trainer.epochs=10" in r for r in extended)
    with pytest.raises(RmpeftError, match="'seed=7' matches no run.*seed: 1, 2, 3"):
        sweep.with_overrides(["seed=7"])


@pytest.mark.parametrize(
    "text, message",
    [
        ("bogus: 1\n", "unknown section 'bogus'"),
        ("fixed: {seed: 1}\nparams: {seed: '1,2'}\n", "'seed' is both fixed and swept"),
        ("params: {optim.lr: 'interval(0.1,1)'}\n", "continuous sweep"),
        ("params: {optim.lr: '1,,2'}\n", "invalid override"),
        ("grids: {method: ft}\n", "`grids` must be a list"),
        ("params:\n  seed: 1,2\n  seed: 3\n", r"line 3: not valid YAML: key 'seed' is given twice in one mapping"),
        ("grids:\n  - {method: ft, optim.lr: 1e-5, optim.lr: 1e-4}\n", r"line 2: not valid YAML: key 'optim.lr' is given twice"),
    ],
)
def test_bad_sweep_files_give_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RmpeftError, match=message) as info:
        load_sweep(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
