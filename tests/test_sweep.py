"""Sweep files, rmpeft-sweep and the cluster profiles, without a cluster.

Expected run counts are computed here from the paper's design (models x tasks x seeds x methods x LR
grid sizes), independently of the sweep expansion code. Runs that train use tiny-opt on the synthetic
task (seconds each, offline).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import initialize_config_dir

from rmpeft import records
from rmpeft.errors import RmpeftError
from rmpeft.sweep import Run, main, mark_dead
from rmpeft.sweep_configs import RunConfigs
from rmpeft.sweep_file import load_sweep
from tests.conftest import CONF_DIR, REPO, compose_train

SWEEPS = REPO / "sweeps"
MODELS_OPT = 3
TASKS = 11
SEEDS = 3
PAPER_RATIOS = {0.1, 0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001, 0.00005, 0.00001}
BASELINES = {"ft", "lora", "adalora", "prefix", "adapter", "bitfit"}

# Independent run counts of every sweep file (see the header comment of each file).
EXPECTED_RUNS = {
    "table1": MODELS_OPT * TASKS * SEEDS * (len(BASELINES) * 5 + len(PAPER_RATIOS) * 5),
    "structured": MODELS_OPT * TASKS * SEEDS * len(PAPER_RATIOS) * 5,
    "fig3": MODELS_OPT * 1 * SEEDS * (len(PAPER_RATIOS) + 2) * 9,
    "fig4b": 1 * 1 * SEEDS * 3 * 2 * 4,
    "llama2": 4 * SEEDS * (6 + 6 + 4 * 7),
    "fulltrain": 2 * 2 * SEEDS * (4 * 5 + 3 * 5),
    "smoke": 2 * 2,
}


def values_of(run: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for o in run:
        key, value = o.split("=", 1)
        assert key not in out, f"{key} set twice in {run}"
        out[key] = value
    return out


def run_json(argv: list[str], capsys) -> tuple[int, dict]:
    rc = main(argv + ["--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return rc, json.loads(out[-1])


def test_every_sweep_file_has_a_count():
    assert {p.stem for p in SWEEPS.glob("*.yaml")} == set(EXPECTED_RUNS)


@pytest.mark.parametrize("name", sorted(EXPECTED_RUNS))
def test_expansion_counts(name):
    runs = load_sweep(SWEEPS / f"{name}.yaml").runs()
    assert len(runs) == EXPECTED_RUNS[name]
    assert len(set(runs)) == len(runs)
    for run in runs:
        values_of(run)


def test_table1_covers_the_paper_and_masking_reaches_large_lrs():
    runs = [values_of(r) for r in load_sweep(SWEEPS / "table1.yaml").runs()]
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
    # 1e-2 appears in the adalora, prefix and bitfit grids and in two of the three masking bands
    assert len(sweep.with_overrides(["optim.lr=0.01"]).runs()) == MODELS_OPT * TASKS * SEEDS * (3 + 6)
    only_ratio = sweep.with_overrides(["method.ratio=1e-4"]).runs()
    assert len(only_ratio) == MODELS_OPT * TASKS * SEEDS * 5
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
    ],
)
def test_bad_sweep_files_give_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RmpeftError, match=message) as info:
        load_sweep(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_runs_that_share_a_folder_are_refused(tmp_path, capsys):
    path = tmp_path / "collide.yaml"
    path.write_text("fixed: {experiment: smoke}\nparams: {trainer.epochs: '1,2'}\n")
    assert main([str(path), f"results_root={tmp_path}/runs", "--dry-run"]) == 2
    assert "share the run folder" in capsys.readouterr().err


BIG = {"table1", "structured"}  # 10-20 s each on 2 CPUs: marked slow


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in sorted(EXPECTED_RUNS)])
def test_dry_run_of_every_sweep_file(name, tmp_path, capsys):
    rc, counts = run_json([f"sweeps/{name}.yaml", f"results_root={tmp_path}/runs", "--dry-run"], capsys)
    assert rc == 0
    assert counts["total"] == counts["missing"] == EXPECTED_RUNS[name]
    assert counts["finished"] == counts["failed"] == counts["launched"] == 0
    assert not (tmp_path / "runs").exists()


def _sample(runs: list, k: int) -> list:
    step = max(len(runs) // k, 1)
    return runs[::step][:k]


@pytest.mark.parametrize("name, extra", [("table1", []), ("fig4b", []), ("fulltrain", []), ("table1", ["cluster=slurm"])])
def test_fast_config_resolution_matches_hydra(name, extra, tmp_path):
    """The shortcut behind rmpeft-sweep gives the same resolved configs as composing each run."""
    pinned = [f"hydra.sweep.dir={tmp_path}"]  # the default holds a timestamp; rmpeft-sweep pins it too
    runs = load_sweep(SWEEPS / f"{name}.yaml").with_overrides(extra + pinned).runs()
    sample = _sample(runs, 6)

    def resolved(cfg):
        from omegaconf import OmegaConf

        task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        out = {"task": OmegaConf.to_container(task, resolve=True)}
        out["launcher"] = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
        return records.run_dir(cfg), json.dumps(out, sort_keys=True, default=str)

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        configs = RunConfigs()
        fast = configs.evaluate(sample, resolved)
        exact = configs.evaluate_exact(sample, resolved)
    assert fast == exact
    assert len({f for f, _ in fast}) == len(sample)


def test_fast_config_resolution_with_a_group_that_rewrites_others(tmp_path):
    """`experiment=smoke` (package _global_) selects model/task/method and sets optim.lr: such choices
    are composed with Hydra together, and the other choices' subtrees (here `optim`) still come out as
    Hydra composes them."""
    runs = [
        ("experiment=smoke", "optim=adamw", "method=masking", "seed=1"),
        ("experiment=smoke", "method=structured_masking", "seed=2"),
        ("optim=adamw", "method=ft", "seed=1"),
        ("method=lora", "model=tiny-opt", "seed=3"),
    ]
    runs = [r + (f"hydra.sweep.dir={tmp_path}", "cluster=slurm") for r in runs]

    def resolved(cfg):
        from omegaconf import OmegaConf

        task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
        return json.dumps({"task": OmegaConf.to_container(task, resolve=True), "launcher": launcher}, default=str)

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        configs = RunConfigs()
        assert configs.evaluate(runs, resolved) == configs.evaluate_exact(runs, resolved)


def test_cluster_profiles_scale_resources_with_the_model():
    def launcher(*overrides):
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            from hydra import compose

            return compose("train", list(overrides), return_hydra_config=True).hydra.launcher

    big_ft = launcher("cluster=slurm", "model=opt-13b", "method=ft")
    big_mask = launcher("cluster=slurm", "model=opt-13b", "method=masking")
    small = launcher("cluster=slurm", "model=opt-125m", "method=lora")
    tiny = launcher("cluster=slurm", "model=tiny-opt", "method=masking")
    assert big_ft._target_.endswith("SlurmLauncher")
    assert (big_ft.gpus_per_node, big_ft.mem_gb) == (4, 400)
    assert (big_mask.gpus_per_node, big_mask.mem_gb) == (1, 96)
    assert small.gpus_per_node == 1 and small.mem_gb < big_mask.mem_gb and small.timeout_min < big_mask.timeout_min
    assert tiny.gpus_per_node is None
    assert big_ft.max_num_timeout > 0  # time-limited jobs are requeued
    other = launcher("cluster=slurm", "model=opt-125m", "model.name=my-model")
    assert other.mem_gb == 64  # the `default` row
    forced = launcher("cluster=slurm", "model=opt-13b", "cluster.gpus=2", "cluster.partition=gpu", "cluster.account=lab")
    assert (forced.gpus_per_node, forced.partition, forced.account) == (2, "gpu", "lab")
    assert launcher("cluster=submitit_local")._target_.endswith("LocalLauncher")
    assert launcher("cluster=local")._target_.endswith("BasicLauncher")


def test_dead_jobs_are_marked_failed_with_their_logs(tmp_path):
    running, missing, finished = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    records.write_record(running, {"status": "running", "error": None, "config": {"seed": 1}, "epochs": [1]})
    records.write_record(finished, {"status": "finished", "error": None})
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        mark_dead(Run((), running), "job 7_1 ended without a result (state: CANCELLED by 0)", ("7_1.out", "7_1.err"))
        mark_dead(Run(("experiment=smoke", f"results_root={tmp_path}"), missing), None, ())
        mark_dead(Run((), finished), "boom", ())
    rec = records.read_record(running)
    assert rec["status"] == "failed" and rec["epochs"] == [1]
    assert "CANCELLED" in rec["error"] and "7_1.err" in rec["error"]
    rec = records.read_record(missing)
    assert rec["status"] == "failed" and "without writing a result" in rec["error"]
    assert rec["config"]["model"]["name"] == "tiny-opt"
    assert records.read_record(finished)["status"] == "finished"


@pytest.fixture
def fast_smoke(tmp_path, cache_dir) -> list[str]:
    """Overrides that make the smoke sweep's runs take a few seconds in this process."""
    return [f"results_root={tmp_path}/runs", f"cache_dir={cache_dir}", "trainer.progress=false", "trainer.epochs=1"]


def _folders(tmp_path: Path, lr: str, seeds=(1, 2)) -> list[Path]:
    base = tmp_path / "runs" / "smoke" / "tiny-opt" / "synthetic"
    ratio = compose_train(["experiment=smoke"]).method.ratio
    return [base / f"masking-r{records.format_number(ratio)}" / f"lr{lr}" / f"seed{s}" for s in seeds]


@pytest.mark.slow
def test_finished_runs_are_skipped_and_failed_ones_rerun(tmp_path, fast_smoke, capsys):
    done, failed = _folders(tmp_path, "0.01")
    records.write_record(done, {"status": "finished", "error": None, "marker": "kept"})
    records.write_record(failed, {"status": "failed", "error": "RuntimeError: earlier crash"})
    rc, counts = run_json(["sweeps/smoke.yaml", "optim.lr=1e-2", *fast_smoke], capsys)
    assert rc == 0
    assert counts["launched"] == 1 and counts["finished"] == 2 and counts["failed"] == 0
    assert records.read_record(done)["marker"] == "kept"
    assert records.read_record(failed)["status"] == "finished"
    rc, counts = run_json(["sweeps/smoke.yaml", "optim.lr=1e-2", *fast_smoke], capsys)
    assert rc == 0 and counts["launched"] == 0


@pytest.mark.slow
def test_a_failing_run_never_stops_the_others(tmp_path, fast_smoke, capsys):
    sweep = tmp_path / "failing.yaml"
    # ratio 0.5 exceeds the share that q_proj/v_proj allow: that run fails; it is launched first
    sweep.write_text("fixed: {experiment: smoke, seed: 1}\nparams: {method.ratio: '0.5,0.001'}\n")
    rc, counts = run_json([str(sweep), *fast_smoke], capsys)
    assert rc == 1
    assert (counts["launched"], counts["finished"], counts["failed"]) == (2, 1, 1)
    bad = counts["failed_runs"][0]
    assert "masking-r0.5" in bad["run_dir"] and bad["error"]
    assert records.read_record(bad["run_dir"])["status"] == "failed"
    rc, counts = run_json([str(sweep), *fast_smoke], capsys)
    assert rc == 1 and counts["launched"] == 1 and counts["finished"] == 1


@pytest.mark.slow
def test_submitit_local_runs_each_run_in_its_own_process(tmp_path, fast_smoke, capsys):
    rc, counts = run_json(
        ["sweeps/smoke.yaml", "seed=1", "cluster=submitit_local", "cluster.parallel=2", *fast_smoke], capsys
    )
    assert rc == 0 and counts["finished"] == counts["launched"] == 2
    for folder in _folders(tmp_path, "0.01", seeds=(1,)) + _folders(tmp_path, "0.03", seeds=(1,)):
        assert records.read_record(folder)["status"] == "finished"
    logs = list((tmp_path / "sweeps").rglob("*_log.out"))
    assert len(logs) == 2
