"""A result is never reused for a different config, an identical relaunch is skipped, and every bad
value is refused with one line before anything runs or is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rmpeft import records
from rmpeft.errors import RmpeftError
from rmpeft.trainer import train
from tests.helpers import REPO, compose_train

FAST = ["trainer.epochs=1", "task.num_train=16", "task.num_val=8", "task.num_test=8"]


def _run(overrides):
    return train(compose_train(overrides))


def test_a_different_method_setting_is_a_different_run(smoke_overrides):
    base = smoke_overrides + FAST + ["method=lora", "optim.lr=1e-3"]
    r8 = _run(base)
    r16 = _run(base + ["method.r=16"])
    assert not r16.get("skipped") and r16["status"] == "finished"
    assert r16["config"]["method"]["r"] == 16 and r16["run_dir"] != r8["run_dir"]
    assert r16["trainable_params"] == 2 * r8["trainable_params"]
    again = _run(base + ["method.r=16"])                          # identical config: skipped
    assert again.get("skipped") and again["run_dir"] == r16["run_dir"]


def test_debug_and_short_runs_never_stand_for_the_full_run(smoke_overrides):
    short = _run(smoke_overrides + FAST + ["trainer.max_steps=1"])
    full = _run(smoke_overrides + FAST)
    assert not full.get("skipped") and full["run_dir"] != short["run_dir"]
    longer = _run(smoke_overrides + FAST[1:] + ["trainer.epochs=2"])
    assert not longer.get("skipped") and len(longer["epochs"]) == 2
    # bookkeeping fields do not change the identity
    same = _run(smoke_overrides + FAST + ["trainer.eval_batch_size=3", "trainer.progress=true"])
    assert same.get("skipped") and same["run_dir"] == full["run_dir"]


def test_bad_values_are_refused_even_when_a_finished_record_exists(smoke_overrides):
    done = _run(smoke_overrides + FAST)
    assert done["status"] == "finished"
    for bad in (["trainer.device=tpu"], ["method.backend=foo"]):
        with pytest.raises(RmpeftError, match=bad[0].split("=")[0].replace(".", r"\.")):
            _run(smoke_overrides + FAST + bad)


def test_a_corrupt_record_is_reported_with_its_path_and_kept(smoke_overrides):
    from rmpeft.resolve import resolve_run_config

    cfg = resolve_run_config(compose_train(smoke_overrides + FAST))
    folder = records.run_dir(cfg)
    folder.mkdir(parents=True)
    (folder / "record.json").write_text('{"status": "finish')
    with pytest.raises(RmpeftError, match=f"corrupt run record {folder}/record.json"):
        train(cfg)
    assert (folder / "record.json").read_text() == '{"status": "finish'


@pytest.mark.parametrize("arg,message", [
    ("method.ratio=abc", "method.ratio='abc' is invalid; expected a number in (0, 1]"),
    ("optim.lr=abc", "optim.lr='abc' is invalid; expected a number in (0, 1e+06]"),
    ("seed=abc", "seed='abc' is invalid; expected an integer in [0, inf]"),
    ("trainer.batch_size=0", "trainer.batch_size=0 is invalid; expected an integer in [1, inf]"),
    ("trainer.epochs=0", "trainer.epochs=0 is invalid; expected an integer in [1, inf]"),
    ("model.name_or_path=/nonexistent", "model.name_or_path='/nonexistent' is neither an existing folder nor a hub id"),
    # checks that used to run only after the run's record was written
    ("task.name=foo", "unknown task 'foo'; valid choices: boolq, cb, copa"),
    ("method.ratio=0.5", "method.ratio=0.5 is outside (0, 0.0896987]: the target modules (q_proj, v_proj) hold"),
    ("model.first_token_id=999999", "model.first_token_id=999999 is outside the model's vocabulary [0, 264)"),
])
def test_cli_bad_value_is_one_line_without_traceback_and_writes_nothing(arg, message, results_root, cache_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "rmpeft.train", "experiment=smoke", arg, f"results_root={results_root}",
                          f"cache_dir={cache_dir}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [f"rmpeft-train: error: {message}"] or (
        len(lines) == 1 and lines[0].startswith(f"rmpeft-train: error: {message}")), out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not results_root.exists() or not any(results_root.rglob("record.json"))


def test_records_of_a_real_run_are_strict_json(smoke_overrides):
    rec = _run(smoke_overrides + FAST)
    text = (records.run_dir(rec["config"]) / "record.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert rec["identity_hash"] == records.identity_hash(rec["config"])


def test_rmpeft_identity_names_the_folder_train_writes(smoke_overrides, capsys):
    from rmpeft.identity_cli import main

    overrides = smoke_overrides + FAST + ["method=lora", "method.r=4"]
    assert main(overrides + ["--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["status"] == "missing" and before["identity"]["method"]["r"] == 4
    assert "results_root" not in before["identity"] and "force" not in before["identity"]
    rec = _run(overrides)
    assert rec["run_dir"] == before["run_dir"] and rec["identity_hash"] == before["identity_hash"]
    assert main(overrides + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "finished"
    assert main(overrides + ["method.r=abc"]) == 2
    assert capsys.readouterr().err.strip() == "rmpeft-identity: error: method.r='abc' is invalid; expected an integer in [1, inf]"


def test_configs_recorded_before_identities_keep_theirs():
    """Resolved configs as records stored them before run identities (and the fields added since)
    existed have the same identity as today's compose of the same command line, so `rmpeft-migrate`
    moves old runs exactly where a relaunch looks for them."""
    from rmpeft.identity import differing_fields, run_identity

    stored = json.loads((REPO / "tests" / "fixtures" / "configs_before_identity.json").read_text())
    assert len(stored) >= 9
    for entry in stored:
        new = compose_train(entry["overrides"])
        assert records.identity_hash(entry["config"]) == records.identity_hash(new), (
            entry["overrides"], differing_fields(run_identity(entry["config"]), run_identity(new)))



def _identity(overrides):
    from rmpeft.resolve import resolve_run_config

    cfg = resolve_run_config(compose_train(overrides))
    return records.run_dir(cfg), records.run_identity(cfg)


@pytest.mark.parametrize("a,b", [
    ("optim.lr=1", "optim.lr=1.0"),
    ("method.ratio=1", "method.ratio=1.0"),
    ("trainer.divergence_loss=10000", "trainer.divergence_loss=1e4"),
    ("optim.weight_decay=0", "optim.weight_decay=0.0"),
])
def test_spellings_of_one_number_are_one_run(a, b):
    base = ["model=opt-125m", "task=rte", "method=masking"]
    assert _identity(base + [a])[0] == _identity(base + [b])[0]


def test_auto_fields_are_hashed_as_they_resolve_here():
    base = ["model=opt-125m", "task=rte", "method=masking"]
    auto_dir, auto_id = _identity(base)
    assert auto_id["trainer"]["device"] == "cpu" and auto_id["trainer"]["precision"] == "fp32"   # no GPU here
    assert _identity(base + ["trainer.device=cpu", "trainer.precision=fp32"])[0] == auto_dir
    assert _identity(base + ["trainer.device=cuda", "trainer.precision=bf16"])[0] != auto_dir
    # a SLURM job that asks for a GPU runs on one: resolved as cuda/bf16 from a CPU login node
    slurm_dir, slurm_id = _identity(base + ["cluster=slurm"])
    assert (slurm_id["trainer"]["device"], slurm_id["trainer"]["precision"]) == ("cuda", "bf16")
    assert slurm_dir == _identity(base + ["trainer.device=cuda", "trainer.precision=bf16"])[0] != auto_dir


def _data_copy(tmp_path, name):
    import shutil

    folder = tmp_path / name / "RTE"
    shutil.copytree(REPO / "tests" / "fixtures" / "tasks" / "RTE", folder)
    return folder


def test_local_data_is_identified_by_its_content_not_its_path(tmp_path):
    a, b = _data_copy(tmp_path, "here"), _data_copy(tmp_path, "there")
    base = ["model=opt-125m", "task=rte", "method=masking"]
    dir_a, id_a = _identity(base + [f"task.data_dir={a}"])
    assert "data_dir" not in id_a["task"] and len(id_a["task"]["data_fingerprint"]) == 64
    assert _identity(base + [f"task.data_dir={b}"])[0] == dir_a          # same files elsewhere: same run
    with open(b / "val.jsonl", "a") as f:                                 # other files at a path: another run
        f.write('{"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 9999}\n')
    assert _identity(base + [f"task.data_dir={b}"])[0] != dir_a
    assert _identity(base)[0] != dir_a                                   # hub data is another source


def test_a_record_stores_what_its_auto_fields_resolved_to(smoke_overrides):
    rec = _run(smoke_overrides + FAST + ["trainer.device=auto"])
    assert rec["config"]["trainer"]["device"] == "cpu" and rec["config"]["trainer"]["precision"] == "fp32"
    assert rec["identity_hash"] == records.identity_hash(rec["config"])
    again = _run(smoke_overrides + FAST + ["trainer.device=cpu", "trainer.precision=fp32"])
    assert again.get("skipped") and again["run_dir"] == rec["run_dir"]


def test_records_from_before_resolution_migrate_to_where_a_relaunch_looks(tmp_path):
    """Stored configs with `auto` fields (written before resolution) move to the folder that today's
    launch of the same command line resolves to on a CPU."""
    from rmpeft.migrate import migrate
    from rmpeft.resolve import resolve_recorded_config, resolve_run_config

    stored = json.loads((REPO / "tests" / "fixtures" / "configs_before_identity.json").read_text())
    for entry in stored:
        new = resolve_run_config(compose_train(entry["overrides"] + ["trainer.device=cpu"]))
        old = resolve_recorded_config(json.loads(json.dumps(entry["config"])), device="cpu")
        assert records.identity_hash(old) == records.identity_hash(new), entry["overrides"]
    entry = stored[1]
    config = {**entry["config"], "results_root": str(tmp_path)}
    folder = records.unhashed_run_dir(config)
    records.write_record(folder, {"status": "finished", "config": config, "test_metric": 0.5})
    assert migrate(tmp_path, apply=True, say=lambda s: None) == 1
    relaunch = resolve_run_config(compose_train(entry["overrides"] + [f"results_root={tmp_path}"]))
    assert records.run_status(relaunch) == "finished"
