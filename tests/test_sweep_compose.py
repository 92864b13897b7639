"""The fast composer behind rmpeft-sweep gives exactly the configs, run folders and identities that
Hydra composes for a real launch of the same overrides."""

from __future__ import annotations

import json

import pytest
from omegaconf import DictConfig, OmegaConf

from rmpeft import records
from rmpeft.config import compose_run, hydra_initialized
from rmpeft.resolve import resolve_run_config
from rmpeft.sweeps.compose import RunConfigs
from rmpeft.sweeps.spec import load_sweep
from rmpeft.sweeps.status import expand
from tests.helpers import SHARED_DATA
from tests.test_sweep_spec import EXPECTED_RUNS, SWEEPS


def task_config(cfg: DictConfig) -> DictConfig:
    """What a launched job's task function receives: the composed config without its ``hydra`` node."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


def _sample(runs: list, k: int) -> list:
    step = max(len(runs) // k, 1)
    return runs[::step][:k]


@pytest.mark.parametrize("name, extra", [("table1", []), ("fig4b", []), ("fulltrain", []), ("table1", ["cluster=slurm"]),
                                         ("fig4a", []), ("llama2", []), ("table2", [])])
def test_fast_config_resolution_matches_hydra(name, extra, tmp_path):
    """The shortcut behind rmpeft-sweep gives the same resolved configs as composing each run."""
    pinned = [f"hydra.sweep.dir={tmp_path}"]  # the default holds a timestamp; rmpeft-sweep pins it too
    runs = load_sweep(SWEEPS / f"{name}.yaml").with_overrides(extra + pinned).runs()
    sample = _sample(runs, 6)

    def resolved(cfg):
        task = task_config(cfg)
        out = {"task": OmegaConf.to_container(task, resolve=True)}
        out["launcher"] = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
        return records.run_dir(task), json.dumps(out, sort_keys=True, default=str)

    with hydra_initialized():
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
        task = task_config(cfg)
        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
        return json.dumps({"task": OmegaConf.to_container(task, resolve=True), "launcher": launcher}, default=str)

    with hydra_initialized():
        configs = RunConfigs()
        assert configs.evaluate(runs, resolved) == configs.evaluate_exact(runs, resolved)


LOCAL_DATA = {"cpu-repro", "cpu-study"}   # sweeps over the official files under ../shared/data
SLOW = {"table1", "table1-dense", "structured", "structured-dense", "fig3"}  # 20-90 s each on 2 CPUs


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(EXPECTED_RUNS)])
def test_dry_run_identities_equal_those_of_a_real_launch(name, tmp_path):
    """For a sample of every sweep file's runs, the folder and identity hash that the dry run computes
    (the fast path of `expand`) equal those of the config Hydra composes for the launched job, as the
    job resolves it (`auto` fields, local data)."""
    if name in LOCAL_DATA and not SHARED_DATA.is_dir():
        pytest.skip(f"sweep {name} reads the official files under {SHARED_DATA}")
    sweep = load_sweep(SWEEPS / f"{name}.yaml").with_overrides([f"results_root={tmp_path}"])
    with hydra_initialized():
        runs = expand(sweep)
        assert len(runs) == EXPECTED_RUNS[name]
        for run in _sample(runs, 5):
            job = task_config(compose_run(run.overrides + ("hydra.mode=MULTIRUN",), with_hydra=True))
            resolve_run_config(job)
            assert (run.folder, run.identity) == (records.run_dir(job), records.identity_hash(job)), run.overrides
            assert run.folder.name.endswith(run.identity)
    assert len({r.identity for r in runs}) == len(runs)  # no two runs of a sweep share an identity


def test_protocol_specific_settings_reach_the_fast_path(tmp_path):
    """Under protocol=paper, per-task and per-method settings (CB/WSC validation size, ReCoRD's LM
    objective, the Structured Masking layout, BitFit, AdaLoRA) give the same identities on the fast
    path as in a launched job, for every method of Table 1."""
    sweep = load_sweep(SWEEPS / "table1.yaml").with_overrides(
        [f"results_root={tmp_path}", "model=opt-125m", "task=cb,record", "seed=1", "optim.lr=0.01"])
    extra = load_sweep(SWEEPS / "structured.yaml").with_overrides(
        [f"results_root={tmp_path}", "model=opt-125m", "task=wsc", "seed=1", "optim.lr=0.01", "method.ratio=0.001"])
    with hydra_initialized():
        runs = expand(sweep) + expand(extra)
        assert len(runs) == 2 * 15 + 1
        for run in runs:
            job = resolve_run_config(task_config(compose_run(run.overrides + ("hydra.mode=MULTIRUN",), with_hydra=True)))
            assert (run.folder, run.identity) == (records.run_dir(job), records.identity_hash(job)), run.overrides
            task, method = job.task.name, job.method.name
            assert job.protocol.name == "paper"
            assert (job.task.objective == "lm") == (task == "record")
            if task in ("cb", "wsc"):
                assert job.task.num_val == 50
            if method == "structured_masking":
                assert job.method.layout == "per_matrix"


def test_identity_changes_with_a_result_changing_override(tmp_path):
    """Overrides outside the swept keys (method.r, trainer.epochs) reach the identity on the fast path
    exactly as with Hydra, and runs that differ only in them get different folders."""
    base = ("experiment=smoke", f"results_root={tmp_path}")
    runs = [base + ("method=lora",), base + ("method=lora", "method.r=16"), base + ("trainer.epochs=1",),
            base + ("trainer.max_steps=2",), base + ("trainer.progress=false",), base]
    with hydra_initialized():
        configs = RunConfigs(with_hydra=False)
        fast = configs.evaluate(runs, lambda c: (records.run_dir(c), records.identity_hash(c)))
        exact = configs.evaluate_exact(runs, lambda c: (records.run_dir(c), records.identity_hash(c)))
    assert fast == exact
    assert len({f for f, _ in fast[:4]} | {fast[5][0]}) == 5  # every result-changing override: a new run
    assert fast[4] == fast[5]  # progress bars change nothing

