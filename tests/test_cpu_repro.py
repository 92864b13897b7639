"""experiment=cpu-repro and sweeps/cpu-repro.yaml: the data folders follow the task, and every method's
grid is one that can show a best learning rate away from its edges."""

from __future__ import annotations

from collections import defaultdict

from rmpeft import records
from rmpeft.config import CONF_DIR
from rmpeft.sweeps.spec import load_sweep
from tests.helpers import compose_train

SWEEP = CONF_DIR.parent / "sweeps" / "cpu-repro.yaml"


def test_the_data_folder_follows_the_task_and_data_root():
    sst2 = compose_train(["experiment=cpu-repro"])
    assert (sst2.model.name, sst2.task.name, sst2.name, sst2.trainer.epochs) == ("smollm2-135m", "sst2", "cpu-repro", 1)
    assert sst2.task.data_dir == "../shared/data/SST-2"
    assert compose_train(["experiment=cpu-repro", "task=rte"]).task.data_dir == "../shared/data/RTE"
    moved = compose_train(["experiment=cpu-repro", "data_root=/data/glue"])
    assert moved.task.data_dir == "/data/glue/SST-2"
    # only the resolved folder is part of the run identity, not the pieces it is built from
    tree = records.run_identity(sst2)
    assert "data_root" not in tree and "official_folders" not in tree
    assert tree["task"]["data_dir"] == "../shared/data/SST-2"
    assert records.identity_hash(moved) != records.identity_hash(sst2)


def test_the_sweep_has_zero_shot_and_at_least_three_lrs_per_trained_setting_on_both_tasks():
    sweep = load_sweep(SWEEP)
    runs = [dict(o.split("=", 1) for o in run) for run in sweep.runs()]
    assert {r["task"] for r in runs} == {"sst2", "rte"}
    grids: dict[tuple, set[float]] = defaultdict(set)
    for r in runs:
        assert r["experiment"] == "cpu-repro"
        grids[(r["task"], r["method"], float(r.get("method.ratio", 0)))].add(float(r.get("optim.lr", "nan")))
    methods = {(m, ratio) for _, m, ratio in grids}
    assert methods == {("none", 0), ("ft", 0), ("lora", 0), ("masking", 1e-3), ("masking", 1e-4), ("masking", 1e-5)}
    for (task, method, ratio), lrs in grids.items():
        assert len(lrs) == 1 if method == "none" else len(lrs) >= 3, (task, method, ratio)
    # sparser masks are swept at larger learning rates
    for low, high in ((1e-3, 1e-4), (1e-4, 1e-5)):
        assert min(grids[("sst2", "masking", low)]) < min(grids[("sst2", "masking", high)])
        assert max(grids[("sst2", "masking", low)]) < max(grids[("sst2", "masking", high)])
    assert len(runs) == 44
