"""Trained deltas, for every `conf/method` choice on the tiny model of every model family: kept by the
run, exported, re-evaluated (on a fresh cache) to the record's exact metrics, merged into a plain
checkpoint; wrong bases and damaged files refused."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from rmpeft import records
from rmpeft.config import group_choices
from rmpeft.deltas.cli import eval_main, export_main, merge_main
from rmpeft.deltas.evaluate import eval_config
from rmpeft.methods.delta_format import META_FILE, TENSOR_FILE, open_delta, tensor_files
from rmpeft.errors import RmpeftError
from rmpeft.methods import MethodContext, get_method
from rmpeft.models import count_parameters, load_model_and_tokenizer
from rmpeft.trainer import train
from tests.helpers import compose_train
from tests.model_matrix import MODELS, model_method_pairs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

CHOICES = [m for m in group_choices("method") if get_method(m).trains]   # zero-shot keeps no delta
# A short run of each model: the image classifier on a small part of its task.
MODEL_OVERRIDES = {"tiny-opt": (), "tiny-llama": ("model=tiny-llama",),
                   "tiny-clip": ("model=tiny-clip", f"task={MODELS['tiny-clip']}", "task.full_train=false",
                                 "task.num_train=32", "task.num_val=16", "task.num_test=16")}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("deltas")


def _overrides(root, *extra: str) -> list[str]:
    return ["experiment=smoke", f"cache_dir={root / 'cache'}", f"results_root={root / 'runs'}",
            "trainer.progress=false", "trainer.epochs=2", "trainer.save_delta=always", *extra]


_RUNS: dict[tuple[str, str], tuple] = {}


def trained(root, method: str, model: str = "tiny-opt"):
    """(config, record, exported delta folder) of a short run of ``method`` on ``model`` (once per module)."""
    if (model, method) not in _RUNS:
        cfg = compose_train(_overrides(root, *MODEL_OVERRIDES[model], f"method={method}"))
        rec = train(cfg)
        assert rec["status"] == "finished", rec["error"]
        out = root / f"{model}-{method}.delta"
        assert export_main([rec["run_dir"], "--out", str(out)]) == 0
        _RUNS[model, method] = (cfg, rec, out)
    return _RUNS[model, method]


def _one_line_error(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("model,method", model_method_pairs(CHOICES))
def test_run_keeps_its_delta_and_eval_reproduces_its_metrics(root, model, method, capsys):
    cfg, rec, out = trained(root, method, model)
    assert rec["delta"]["bytes"] > 0 and (records.run_dir(cfg) / "delta" / META_FILE).is_file()
    delta = open_delta(out)
    assert delta.fingerprint == rec["delta"]["fingerprint"]
    assert delta.meta["run"]["identity_hash"] == rec["identity_hash"]
    assert delta.meta["run"]["test_metric"] == rec["test_metric"]
    # a cache of its own: the base model is materialised and fingerprinted again by its family
    assert eval_main([str(out), f"results_root={root / 'runs'}", f"cache_dir={root / model / 'eval-cache'}"]) == 0
    capsys.readouterr()
    (path,) = [p for p in (root / "runs").rglob("record.json")
               if json.loads(p.read_text()).get("config", {}).get("evaluation", {}).get("delta") == delta.content_hash]
    ev = records.read_record(path)
    assert ev["status"] == "finished" and ev["delta"]["evaluated"] is True
    assert ev["test_metric"] == rec["test_metric"]
    assert ev["val_metric"] == rec["val_metric"]
    assert ev["identity_hash"] != rec["identity_hash"]


CAUSAL_LMS = ("tiny-opt", "tiny-llama")


def _patched_and_merged_logits(root, method: str, model_name: str = "tiny-opt"):
    cfg, _, out = trained(root, method, model_name)
    delta = open_delta(out)
    model, tok = load_model_and_tokenizer(cfg.model, cfg.cache_dir)
    ctx = MethodContext(seed=int(cfg.seed), total_params=count_parameters(model), total_steps=1, tokenizer=tok)
    handle = get_method(method).apply_delta(model, delta, ctx)
    ids = torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        patched = handle.model.eval()(input_ids=ids).logits
    return delta, out, ids, patched


MERGEABLE = [m for m in CHOICES if get_method(m).mergeable]


@pytest.mark.parametrize("model,method", model_method_pairs(MERGEABLE, CAUSAL_LMS))
def test_merged_checkpoint_loads_with_plain_transformers(root, model, method, capsys):
    from transformers import AutoModelForCausalLM

    _, out, ids, patched = _patched_and_merged_logits(root, method, model)
    merged_dir = root / f"{model}-{method}.merged"
    assert merge_main([str(out), "--out", str(merged_dir)]) == 0
    capsys.readouterr()
    assert not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    with torch.no_grad():
        plain = merged(input_ids=ids).logits
    torch.testing.assert_close(plain, patched, rtol=1e-5, atol=1e-5)
    cfg = trained(root, method, model)[0]
    base, _ = load_model_and_tokenizer(cfg.model, cfg.cache_dir)
    with torch.no_grad():
        assert not torch.allclose(base.eval()(input_ids=ids).logits, plain)   # the update is in the weights


def test_an_image_classifier_delta_refuses_to_merge_with_one_line(root, capsys):
    _, _, out = trained(root, "masking", "tiny-clip")
    assert merge_main([str(out), "--out", str(root / "tiny-clip-masking.merged")]) == 2
    assert "only causal-LM deltas merge" in _one_line_error(capsys)
    assert not (root / "tiny-clip-masking.merged").exists()


@pytest.mark.parametrize("method", [m for m in CHOICES if not get_method(m).mergeable])
def test_unmergeable_methods_refuse_with_one_line(root, method, capsys):
    _, _, out = trained(root, method)
    assert merge_main([str(out), "--out", str(root / f"{method}.merged")]) == 2
    assert "cannot be merged" in _one_line_error(capsys)
    assert not (root / f"{method}.merged").exists()


@pytest.mark.parametrize("model_name", CAUSAL_LMS)
def test_peft_deltas_load_with_plain_peft(root, model_name):
    from peft import PeftModel

    for method, kind in (("lora", "LORA"), ("adalora", "ADALORA"), ("prefix", "PREFIX_TUNING")):
        cfg, _, out = trained(root, method, model_name)
        _, _, ids, patched = _patched_and_merged_logits(root, method, model_name)
        model, _ = load_model_and_tokenizer(cfg.model, cfg.cache_dir)
        peft_model = PeftModel.from_pretrained(model, str(out)).eval()
        assert peft_model.peft_config["default"].peft_type.value == kind
        with torch.no_grad():
            torch.testing.assert_close(peft_model(input_ids=ids).logits, patched)


def test_masking_delta_is_about_8_bytes_per_entry(root):
    cfg = compose_train(_overrides(root, "method=masking", "method.ratio=0.08", "trainer.epochs=1",
                                   "trainer.max_steps=1", "trainer.save_delta=auto"))
    rec = train(cfg)
    k = rec["trainable_params"]
    assert k > 10_000
    assert 8 * k <= rec["delta"]["bytes"] <= 8 * k + 2048
    assert rec["delta"]["bytes"] == (records.run_dir(cfg) / "delta" / TENSOR_FILE).stat().st_size


def test_ft_keeps_no_delta_unless_asked(root):
    cfg = compose_train(_overrides(root, "method=ft", "trainer.epochs=1", "trainer.max_steps=1",
                                   "trainer.save_delta=auto"))
    rec = train(cfg)
    assert rec["status"] == "finished" and rec["delta"] is None
    assert not (records.run_dir(cfg) / "delta").exists()


def test_different_base_is_refused(root, capsys):
    _, _, out = trained(root, "masking")
    assert eval_main([str(out), f"results_root={root / 'runs'}", "model.init_seed=1"]) == 2
    line = _one_line_error(capsys)
    assert "fingerprint" in line and "base model" in line


def _rewrite_meta(folder, **changes) -> None:
    meta = json.loads((folder / META_FILE).read_text())
    meta.update(changes)
    (folder / META_FILE).write_text(json.dumps(meta))


def _flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _copy_of_a_trained_delta(root, tmp_path, name: str = "bad.delta"):
    """A copy of a trained masking delta, free to be damaged; also the original's folder."""
    _, _, out = trained(root, "masking")
    copy = tmp_path / name
    shutil.copytree(out, copy)
    return copy, out


@pytest.mark.parametrize("damage,match", [
    ("truncate", "truncated"),
    ("flip", "SHA-256"),
    ("json", "not valid JSON"),
    ("missing", "is missing"),
])
def test_corrupt_delta_is_refused(root, tmp_path, capsys, damage, match):
    bad, _ = _copy_of_a_trained_delta(root, tmp_path)
    tensors = bad / tensor_files(bad)[0]
    if damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[:-16])
    elif damage == "flip":
        _flip_last_byte(tensors)
    elif damage == "json":
        (bad / META_FILE).write_text("{not json")
    else:
        tensors.unlink()
    with pytest.raises(RmpeftError, match=match):
        open_delta(bad)
    assert eval_main([str(bad)]) == 2
    assert match in _one_line_error(capsys)


def test_evaluations_of_different_deltas_never_share_a_folder(root):
    one, two = open_delta(trained(root, "masking")[2]), open_delta(trained(root, "lora")[2])
    a = eval_config(one, ["task.num_test=16"])
    b = eval_config(two, ["task.num_test=16"])
    b.method = a.method   # only the delta differs
    assert records.identity_hash(a) != records.identity_hash(b)
    assert records.run_dir(a) != records.run_dir(b)


def test_eval_overrides(root):
    _, rec, out = trained(root, "masking")
    delta = open_delta(out)
    cfg = eval_config(delta, ["task.num_test=7", "seed=3"])
    assert cfg.task.num_test == 7 and cfg.seed == 3 and cfg.name == f"{rec['config']['name']}-eval"
    assert cfg.method == delta.method_config
    with pytest.raises(RmpeftError, match="come from the delta"):
        eval_config(delta, ["method.ratio=0.1"])
    with pytest.raises(RmpeftError, match="task"):
        eval_config(delta, ["task=nosuchtask"])


def test_export_of_a_run_without_delta_is_one_line(root, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    _, rec, _ = trained(root, "masking")
    records.write_record(folder, rec)
    assert export_main([str(folder), "--out", str(tmp_path / "x")]) == 2
    assert "kept no delta" in _one_line_error(capsys)


@pytest.mark.parametrize("damage,match", [
    ("unlisted", "extra.bin is not listed in delta.json"),
    ("empty_listing", "is not listed in delta.json"),
    ("outside", "lists '../../../etc/hostname', which is not a plain file name"),
    ("subfolder", "sub is not listed in delta.json"),
])
def test_every_file_of_a_delta_is_verified(root, tmp_path, capsys, damage, match):
    bad, _ = _copy_of_a_trained_delta(root, tmp_path)
    if damage == "unlisted":
        (bad / "extra.bin").write_bytes(b"x")
    elif damage == "empty_listing":   # modified tensors, and a listing that names none of them
        _flip_last_byte(bad / TENSOR_FILE)
        _rewrite_meta(bad, files={})
    elif damage == "outside":
        _rewrite_meta(bad, files={**json.loads((bad / META_FILE).read_text())["files"],
                                  "../../../etc/hostname": {"bytes": 1, "sha256": "0" * 64}})
    else:
        (bad / "sub").mkdir()
    with pytest.raises(RmpeftError, match=re.escape(match)):
        open_delta(bad)
    assert eval_main([str(bad), f"results_root={root / 'runs'}"]) == 2
    assert match in _one_line_error(capsys)
    assert merge_main([str(bad), "--out", str(tmp_path / "merged")]) == 2
    assert match in _one_line_error(capsys)
    assert not (tmp_path / "merged").exists()


def test_a_modified_delta_is_never_taken_for_an_evaluated_one(root, tmp_path, capsys):
    bad, out = _copy_of_a_trained_delta(root, tmp_path, "modified.delta")
    assert eval_main([str(out), f"results_root={root / 'runs'}", "task.num_test=8"]) == 0
    capsys.readouterr()
    _flip_last_byte(bad / TENSOR_FILE)
    _rewrite_meta(bad, files={})
    assert eval_main([str(bad), f"results_root={root / 'runs'}", "task.num_test=8"]) == 2
    assert "already evaluated" not in capsys.readouterr().out


def test_the_evaluation_identity_follows_the_delta_bytes_not_its_stored_fingerprint(root, tmp_path):
    _, _, out = trained(root, "masking")
    other = tmp_path / "other.delta"
    shutil.copytree(out, other)
    meta = json.loads((other / META_FILE).read_text())
    _rewrite_meta(other, delta={**meta["delta"], "note": "another layout fact"})   # same tensors, same fingerprint
    one, two = open_delta(out), open_delta(other)
    assert one.fingerprint == two.fingerprint and one.content_hash != two.content_hash
    a, b = eval_config(one, ["task.num_test=16"]), eval_config(two, ["task.num_test=16"])
    assert records.identity_hash(a) != records.identity_hash(b)
    same = tmp_path / "same.delta"
    shutil.copytree(out, same)
    assert records.identity_hash(eval_config(open_delta(same), ["task.num_test=16"])) == records.identity_hash(a)


def test_a_forged_fingerprint_is_refused(root, tmp_path):
    _, _, out = trained(root, "masking")
    bad = tmp_path / "forged.delta"
    shutil.copytree(out, bad)
    _rewrite_meta(bad, fingerprint="0" * 16)
    with pytest.raises(RmpeftError, match="fingerprint"):
        open_delta(bad)


def test_eval_writes_where_the_caller_says_never_where_the_delta_says(root, tmp_path, monkeypatch):
    _, _, out = trained(root, "masking")
    foreign = tmp_path / "foreign.delta"
    shutil.copytree(out, foreign)
    meta = json.loads((foreign / META_FILE).read_text())
    config = meta["run"]["config"]
    config.update(results_root=str(tmp_path / "theirs" / "runs"), cache_dir=str(tmp_path / "theirs" / "cache"),
                  name="../../escape", force=True)
    _rewrite_meta(foreign, run={**meta["run"], "config": config})
    delta = open_delta(foreign)
    cfg = eval_config(delta, [])
    defaults = compose_train([])
    assert cfg.results_root == defaults.results_root and cfg.cache_dir == defaults.cache_dir
    assert cfg.force is False and "/" not in cfg.name and ".." not in cfg.name
    mine = eval_config(delta, [f"results_root={tmp_path / 'mine'}", f"cache_dir={tmp_path / 'cache'}"])
    assert mine.results_root == str(tmp_path / "mine") and mine.cache_dir == str(tmp_path / "cache")
    assert records.run_dir(mine).is_relative_to(tmp_path / "mine")


@pytest.mark.parametrize("override,match", [
    ("task.num_tst=10", "unknown field 'task.num_tst' in 'task.num_tst=10' (did you mean task.num_test?)"),
    ("+trainer.epoch=3", "unknown field 'trainer.epoch'"),
    ("trainer.epochs=0", "trainer.epochs=0 is invalid"),
])
def test_eval_refuses_unknown_fields_and_bad_values(root, capsys, override, match):
    _, _, out = trained(root, "masking")
    assert eval_main([str(out), f"results_root={root / 'runs'}", override]) == 2
    assert match in _one_line_error(capsys)


def test_version_1_deltas_still_open(root, tmp_path):
    """Version 1 listed the tensor files only; peft's side files stayed unlisted (and still count in the
    content hash)."""
    from rmpeft.methods.delta_format import PEFT_FILES, delta_fingerprint

    _, _, out = trained(root, "lora")
    old = tmp_path / "v1.delta"
    shutil.copytree(out, old)
    meta = json.loads((old / META_FILE).read_text())
    files = {k: v for k, v in meta["files"].items() if k in PEFT_FILES}
    assert set(files) != set(meta["files"])   # the new format lists adapter_config.json too
    _rewrite_meta(old, format_version=1, files=files,
                  fingerprint=delta_fingerprint(meta["method"], meta["base"]["fingerprint"], files))
    delta = open_delta(old)
    (old / "adapter_config.json").write_text((old / "adapter_config.json").read_text() + " ")
    assert open_delta(old).content_hash != delta.content_hash
