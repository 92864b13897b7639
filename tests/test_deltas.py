"""Trained deltas, for every `conf/method` choice: kept by the run, exported, re-evaluated to the
record's exact metrics, merged into a plain checkpoint; wrong bases and damaged files refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rmpeft import records
from rmpeft.config import group_choices
from rmpeft.deltas.cli import eval_main, export_main, merge_main
from rmpeft.deltas.evaluate import eval_config
from rmpeft.deltas.format import META_FILE, TENSOR_FILE, open_delta, tensor_files
from rmpeft.errors import RmpeftError
from rmpeft.methods import MethodContext, get_method
from rmpeft.models import count_parameters, load_model_and_tokenizer
from rmpeft.trainer import train
from tests.conftest import compose_train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

CHOICES = [m for m in group_choices("method") if get_method(m).trains]   # zero-shot keeps no delta


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("deltas")


def _overrides(root, *extra: str) -> list[str]:
    return ["experiment=smoke", f"cache_dir={root / 'cache'}", f"results_root={root / 'runs'}",
            "trainer.progress=false", "trainer.epochs=2", "trainer.save_delta=always", *extra]


_RUNS: dict[str, tuple] = {}


def trained(root, method: str):
    """(config, record, exported delta folder) of a short tiny-opt run of ``method`` (once per module)."""
    if method not in _RUNS:
        cfg = compose_train(_overrides(root, f"method={method}"))
        rec = train(cfg)
        assert rec["status"] == "finished", rec["error"]
        out = root / f"{method}.delta"
        assert export_main([rec["run_dir"], "--out", str(out)]) == 0
        _RUNS[method] = (cfg, rec, out)
    return _RUNS[method]


def _one_line_error(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("method", CHOICES)
def test_run_keeps_its_delta_and_eval_reproduces_its_metrics(root, method, capsys):
    cfg, rec, out = trained(root, method)
    assert rec["delta"]["bytes"] > 0 and (records.run_dir(cfg) / "delta" / META_FILE).is_file()
    delta = open_delta(out)
    assert delta.fingerprint == rec["delta"]["fingerprint"]
    assert delta.meta["run"]["identity_hash"] == rec["identity_hash"]
    assert delta.meta["run"]["test_metric"] == rec["test_metric"]
    assert eval_main([str(out), f"results_root={root / 'runs'}"]) == 0
    capsys.readouterr()
    (path,) = [p for p in (root / "runs").rglob("record.json")
               if json.loads(p.read_text()).get("config", {}).get("evaluation", {}).get("delta") == delta.fingerprint]
    ev = records.read_record(path)
    assert ev["status"] == "finished" and ev["delta"]["evaluated"] is True
    assert ev["test_metric"] == rec["test_metric"]
    assert ev["val_metric"] == rec["val_metric"]
    assert ev["identity_hash"] != rec["identity_hash"]


def _patched_and_merged_logits(root, method: str):
    cfg, _, out = trained(root, method)
    delta = open_delta(out)
    model, tok = load_model_and_tokenizer(cfg.model, cfg.cache_dir)
    ctx = MethodContext(seed=int(cfg.seed), total_params=count_parameters(model), total_steps=1, tokenizer=tok)
    handle = get_method(method).apply_delta(model, delta, ctx)
    ids = torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        patched = handle.model.eval()(input_ids=ids).logits
    return delta, out, ids, patched


@pytest.mark.parametrize("method", [m for m in CHOICES if get_method(m).mergeable])
def test_merged_checkpoint_loads_with_plain_transformers(root, method, capsys):
    from transformers import AutoModelForCausalLM

    _, out, ids, patched = _patched_and_merged_logits(root, method)
    merged_dir = root / f"{method}.merged"
    assert merge_main([str(out), "--out", str(merged_dir)]) == 0
    capsys.readouterr()
    assert not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    with torch.no_grad():
        plain = merged(input_ids=ids).logits
    torch.testing.assert_close(plain, patched, rtol=1e-5, atol=1e-5)
    base, _ = load_model_and_tokenizer(trained(root, method)[0].model, trained(root, method)[0].cache_dir)
    with torch.no_grad():
        assert not torch.allclose(base.eval()(input_ids=ids).logits, plain)   # the update is in the weights


@pytest.mark.parametrize("method", [m for m in CHOICES if not get_method(m).mergeable])
def test_unmergeable_methods_refuse_with_one_line(root, method, capsys):
    _, _, out = trained(root, method)
    assert merge_main([str(out), "--out", str(root / f"{method}.merged")]) == 2
    assert "cannot be merged" in _one_line_error(capsys)
    assert not (root / f"{method}.merged").exists()


def test_peft_deltas_load_with_plain_peft(root):
    from peft import PeftModel

    for method, kind in (("lora", "LORA"), ("adalora", "ADALORA"), ("prefix", "PREFIX_TUNING")):
        cfg, _, out = trained(root, method)
        _, _, ids, patched = _patched_and_merged_logits(root, method)
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


@pytest.mark.parametrize("damage,match", [
    ("truncate", "truncated"),
    ("flip", "SHA-256"),
    ("json", "not valid JSON"),
    ("missing", "is missing"),
])
def test_corrupt_delta_is_refused(root, tmp_path, capsys, damage, match):
    _, _, out = trained(root, "masking")
    bad = tmp_path / "bad.delta"
    shutil.copytree(out, bad)
    tensors = bad / tensor_files(bad)[0]
    if damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[:-16])
    elif damage == "flip":
        data = bytearray(tensors.read_bytes())
        data[-1] ^= 0xFF
        tensors.write_bytes(bytes(data))
    elif damage == "json":
        (bad / META_FILE).write_text("{not json")
    else:
        tensors.unlink()
    with pytest.raises(RmpeftError, match=match):
        open_delta(bad)
    assert eval_main([str(bad)]) == 2
    assert match in _one_line_error(capsys)


def test_evaluations_of_different_deltas_never_share_a_folder(root):
    _, _, out = trained(root, "masking")
    one = open_delta(out)
    two = open_delta(out)
    two.meta = {**two.meta, "fingerprint": "0" * 16}
    a, b = eval_config(one, ["task.num_test=16"]), eval_config(two, ["task.num_test=16"])
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
