"""rmpeft-sweep and the cluster profiles, without a cluster. Runs that train use tiny-opt on the
synthetic task (seconds each, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmpeft import records
from rmpeft.config import compose_config, hydra_initialized
from rmpeft.resolve import resolve_run_config
from rmpeft.sweeps.cli import main
from rmpeft.sweeps.spec import load_sweep
from rmpeft.sweeps.status import SweepRun, mark_dead
from tests.test_sweep_spec import EXPECTED_RUNS, SWEEPS

def run_json(argv: list[str], capsys) -> tuple[int, dict]:
    rc = main(argv + ["--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return rc, json.loads(out[-1])


def test_runs_that_share_a_folder_are_refused(tmp_path, capsys):
    path = tmp_path / "collide.yaml"  # progress bars are not part of a run's identity
    path.write_text("fixed: {experiment: smoke}\nparams: {trainer.progress: 'true,false'}\n")
    assert main([str(path), f"results_root={tmp_path}/runs", "--dry-run"]) == 2
    assert "share the run folder" in capsys.readouterr().err


BIG = {"table1", "table1-dense", "structured", "structured-dense"}  # 20-60 s each on 2 CPUs: marked slow


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in sorted(EXPECTED_RUNS)])
def test_dry_run_of_every_sweep_file(name, tmp_path, capsys):
    rc, counts = run_json([f"sweeps/{name}.yaml", f"results_root={tmp_path}/runs", "--dry-run"], capsys)
    assert rc == 0
    assert counts["total"] == counts["missing"] == EXPECTED_RUNS[name]
    assert counts["finished"] == counts["failed"] == counts["launched"] == 0
    assert not (tmp_path / "runs").exists()


def test_cluster_profiles_scale_resources_with_the_model():
    def launcher(*overrides):
        return compose_config(list(overrides), with_hydra=True).hydra.launcher

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
    records.write_record(finished, {"status": "finished", "error": None, "test_metric": 0.5})
    with hydra_initialized():
        mark_dead(SweepRun((), running), "job 7_1 ended without a result (state: CANCELLED by 0)", ("7_1.out", "7_1.err"))
        mark_dead(SweepRun(("experiment=smoke", f"results_root={tmp_path}"), missing), None, ())
        mark_dead(SweepRun((), finished), "boom", ())
    rec = records.read_record(running)
    assert rec["status"] == "failed" and rec["epochs"] == [1]
    assert "CANCELLED" in rec["error"] and "7_1.err" in rec["error"]
    rec = records.read_record(missing)
    assert rec["status"] == "failed" and "without writing a result" in rec["error"]
    assert rec["config"]["model"]["name"] == "tiny-opt"
    assert records.read_record(finished)["status"] == "finished"


def test_a_run_still_held_by_a_live_process_is_not_marked(tmp_path):
    """A launch refused because another process runs the same folder must leave that run's record alone."""
    from rmpeft.run_folder import RunLock

    live = tmp_path / "live"
    records.write_record(live, {"status": "running", "error": None, "config": {"seed": 1}})
    with RunLock(live, records.STALE_AFTER_S), hydra_initialized():   # the run in flight elsewhere
        mark_dead(SweepRun((), live), "run folder is in use by pid 1", ())
        assert records.read_record(live)["status"] == "running"
    assert not (live / ".lock").exists()


def test_a_claim_left_by_the_runs_ended_slurm_job_on_another_host_is_taken_over(tmp_path):
    """A SLURM job killed on a compute node leaves its claim there; the sweep on the login node cannot
    check that process, but it knows the job ended: the run is marked failed at once, not half an hour
    later when the heartbeat goes stale. Another job's fresh claim stays respected."""
    folder = tmp_path / "run"
    records.write_record(folder, {"status": "running", "error": None, "config": {"seed": 1}})
    (folder / ".lock").write_text(json.dumps({"token": "t", "pid": 1, "host": "node-elsewhere", "job": "7_1",
                                              "started_at": "2026-01-01T00:00:00+00:00"}))
    with hydra_initialized():
        mark_dead(SweepRun((), folder), "job 7_2 ended without a result (state: CANCELLED by 0)", (), "7_2")
        assert records.read_record(folder)["status"] == "running" and (folder / ".lock").exists()
        mark_dead(SweepRun((), folder), "job 7_1 ended without a result (state: CANCELLED by 0)", (), "7_1")
    rec = records.read_record(folder)
    assert rec["status"] == "failed" and "CANCELLED" in rec["error"]
    assert not (folder / ".lock").exists()


def test_a_slurm_jobs_outcome_names_it_as_its_runs_claim_does(tmp_path, monkeypatch):
    from rmpeft.run_folder import RunLock
    from rmpeft.sweeps.launch import _job_outcome

    class DoneJob:
        paths = type("Paths", (), {"stdout": "o", "stderr": "e"})()
        state = "CANCELLED"

        def __init__(self, job_id: str) -> None:
            self.job_id = job_id

        def results(self) -> list:
            raise RuntimeError("no result")

    for job_id, env in (("42", {"SLURM_JOB_ID": "42"}),
                        ("40_3", {"SLURM_JOB_ID": "43", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "3"})):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        folder = tmp_path / job_id
        with RunLock(folder, records.STALE_AFTER_S):
            claimed_by = json.loads((folder / ".lock").read_text())["job"]
        assert _job_outcome(DoneJob(job_id), slurm=True).slurm_job == claimed_by
        assert _job_outcome(DoneJob(job_id), slurm=False).slurm_job is None   # a local process id is no SLURM job


@pytest.fixture
def fast_smoke(tmp_path, cache_dir) -> list[str]:
    """Overrides that make the smoke sweep's runs take a few seconds in this process."""
    return [f"results_root={tmp_path}/runs", f"cache_dir={cache_dir}", "trainer.progress=false", "trainer.epochs=1"]


def _folders(overrides: list[str], lr: str, seeds=(1, 2)) -> list[Path]:
    """The run folders of the smoke sweep's runs with this learning rate."""
    sweep = load_sweep(SWEEPS / "smoke.yaml").with_overrides([f"optim.lr={lr}", f"seed={','.join(map(str, seeds))}"])
    return [records.run_dir(resolve_run_config(compose_config([*run, *overrides]))) for run in sweep.runs()]


@pytest.mark.slow
def test_finished_runs_are_skipped_and_failed_ones_rerun(tmp_path, fast_smoke, capsys):
    done, failed = _folders(fast_smoke, "1e-2")
    records.write_record(done, {"status": "finished", "error": None, "marker": "kept", "test_metric": 0.5})
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
    (tmp_path / "RTE").mkdir()   # a folder without the task's files: that run fails once it has started
    sweep.write_text("fixed: {experiment: smoke, seed: 1}\ngrids:\n"
                     f"  - {{task: rte, task.data_dir: {tmp_path / 'RTE'}}}\n  - {{task: synthetic}}\n")
    rc, counts = run_json([str(sweep), *fast_smoke], capsys)
    assert rc == 1
    assert (counts["launched"], counts["finished"], counts["failed"]) == (2, 1, 1)
    bad = counts["failed_runs"][0]
    assert "/rte/" in bad["run_dir"] and "missing data file" in bad["error"]
    assert records.read_record(bad["run_dir"])["status"] == "failed"
    rc, counts = run_json([str(sweep), *fast_smoke], capsys)
    assert rc == 1 and counts["launched"] == 1 and counts["finished"] == 1


@pytest.mark.slow
def test_submitit_local_runs_each_run_in_its_own_process(tmp_path, fast_smoke, capsys):
    rc, counts = run_json(
        ["sweeps/smoke.yaml", "seed=1", "cluster=submitit_local", "cluster.parallel=2", *fast_smoke], capsys
    )
    assert rc == 0 and counts["finished"] == counts["launched"] == 2
    for folder in _folders(fast_smoke, "1e-2", seeds=(1,)) + _folders(fast_smoke, "3e-2", seeds=(1,)):
        assert records.read_record(folder)["status"] == "finished"
    logs = list((tmp_path / "sweeps").rglob("*_log.out"))
    assert len(logs) == 2


def test_a_corrupt_record_counts_as_failed_and_is_never_overwritten(tmp_path, fast_smoke, capsys):
    corrupt, _ = _folders(fast_smoke, "1e-2")
    corrupt.mkdir(parents=True)
    (corrupt / records.RECORD_FILE).write_text('{"status": "finished", "test_metric": 0.')
    rc, counts = run_json(["sweeps/smoke.yaml", "optim.lr=1e-2", *fast_smoke, "--dry-run"], capsys)
    assert (counts["total"], counts["failed"], counts["corrupt"], counts["missing"]) == (2, 1, 1, 1)
    bad = counts["failed_runs"][0]
    assert bad["run_dir"] == str(corrupt) and str(corrupt / records.RECORD_FILE) in bad["error"]
    rc = main(["sweeps/smoke.yaml", "optim.lr=1e-2", "seed=1", *fast_smoke, "--json"])
    out = capsys.readouterr()
    counts = json.loads(out.out.strip().splitlines()[-1])
    assert rc == 1 and counts["launched"] == 0 and counts["failed"] == 1
    assert (corrupt / records.RECORD_FILE).read_text() == '{"status": "finished", "test_metric": 0.'
    assert "force=true" in out.err


@pytest.mark.slow
def test_force_relaunches_a_corrupt_record(tmp_path, fast_smoke, capsys):
    corrupt, _ = _folders(fast_smoke, "1e-2")
    corrupt.mkdir(parents=True)
    (corrupt / records.RECORD_FILE).write_text("not json")
    rc, counts = run_json(["sweeps/smoke.yaml", "optim.lr=1e-2", "seed=1", "force=true", *fast_smoke], capsys)
    assert rc == 0 and counts["launched"] == 1 and counts["finished"] == 1
    assert records.read_record(corrupt)["status"] == "finished"


def test_list_prints_the_runs_and_launches_nothing(tmp_path, fast_smoke, capsys, monkeypatch):
    import rmpeft.sweeps.cli as cli

    def no_launch(*args, **kwargs):
        raise AssertionError("--list launched runs")

    monkeypatch.setattr(cli, "launch_runs", no_launch)
    rc = main(["sweeps/smoke.yaml", "optim.lr=1e-2", *fast_smoke, "--list"])
    out = capsys.readouterr().out
    assert rc == 0
    listed = [line for line in out.splitlines() if "optim.lr=" in line]
    assert len(listed) == 2 and all("seed=" in line for line in listed)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra,match", [
    (["trainer.epochs=0"], "trainer.epochs=0 is invalid; expected an integer in [1, inf]"),
    (["+trainer.epoch=3"], "unknown field 'trainer.epoch'"),
    (["method.ratio=2"], "method.ratio=2 is invalid"),
])
def test_a_bad_value_refuses_the_sweep_before_any_launch(tmp_path, fast_smoke, capsys, monkeypatch, extra, match):
    import rmpeft.sweeps.cli as cli

    monkeypatch.setattr(cli, "launch_runs", lambda *a, **k: pytest.fail("a run was launched"))
    for dry in ([], ["--dry-run"]):
        assert main(["sweeps/smoke.yaml", *fast_smoke, *extra, *dry]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("rmpeft-sweep: error: ") and match in err[0], err
    assert not (tmp_path / "runs").exists()


def test_one_bad_run_refuses_every_run(tmp_path, fast_smoke, capsys, monkeypatch):
    import rmpeft.sweeps.cli as cli

    monkeypatch.setattr(cli, "launch_runs", lambda *a, **k: pytest.fail("a run was launched"))
    sweep = tmp_path / "mixed.yaml"
    sweep.write_text("fixed: {experiment: smoke, seed: 1}\nparams: {method.ratio: '0.001,1.5'}\n")
    assert main([str(sweep), *fast_smoke]) == 2
    err = capsys.readouterr().err
    assert "method.ratio=1.5 is invalid" in err and "method.ratio=1.5" in err.split("is invalid")[0]
    assert not (tmp_path / "runs").exists()
