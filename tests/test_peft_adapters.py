"""Masking deltas as peft adapters (SHiRA, Super-Tuning): exported folders load in plain peft with the
patched model's logits and merge to rmpeft-merge's weights; peft folders, exported or trained anywhere,
evaluate, merge and start training in rmpeft; damaged or mismatched folders are refused in one line."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from rmpeft import params, records
from rmpeft.deltas.cli import eval_main, export_main, merge_main
from rmpeft.methods.delta_format import open_delta
from rmpeft.deltas.peft_export import EXPORT_FILE
from rmpeft.deltas.peft_import import open_adapter
from rmpeft.methods.peft_sparse import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    folded,
    supertuning_available,
    tensor_bytes,
    write_adapter,
)
from rmpeft.errors import RmpeftError
from rmpeft.identity import run_identity
from rmpeft.methods import MethodContext, get_method
from rmpeft.models import build_model_on_meta, count_parameters, load_model_and_tokenizer, model_source
from rmpeft.sparse import sample_positions, split_count
from rmpeft.trainer import train
from tests.helpers import compose_train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

LAYOUTS = {"random": ["method=masking"], "pooled": ["method=structured_masking"],
           "per_matrix": ["method=structured_masking", "method.layout=per_matrix"]}
TYPES = ["shira"] + (["supertuning"] if supertuning_available() else [])
PEFT_NAMES = {"shira": "SHIRA", "supertuning": "SUPERTUNING"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("peft-adapters")


def _overrides(root, *extra: str) -> list[str]:
    return ["experiment=smoke", f"cache_dir={root / 'cache'}", f"results_root={root / 'runs'}",
            "trainer.progress=false", "trainer.epochs=1", *extra]


_RUNS: dict[str, tuple] = {}


def trained(root, layout: str):
    """(overrides, config, record, rmpeft delta) of a short tiny-opt run of one masking layout."""
    if layout not in _RUNS:
        ov = _overrides(root, *LAYOUTS[layout])
        cfg = compose_train(ov)
        rec = train(cfg)
        assert rec["status"] == "finished", rec["error"]
        _RUNS[layout] = (ov, cfg, rec, open_delta(records.run_dir(cfg) / "delta"))
    return _RUNS[layout]


def exported(root, layout: str, peft_type: str):
    out = root / f"{layout}-{peft_type}.peft"
    if not out.exists():
        _, _, rec, _ = trained(root, layout)
        assert export_main([rec["run_dir"], "--format", "peft", "--peft-type", peft_type, "--out", str(out)]) == 0
    return out


def ids() -> torch.Tensor:
    return torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(3))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids()).logits


def base(cfg):
    return load_model_and_tokenizer(cfg.model, cfg.cache_dir)[0]


def patched(cfg, delta):
    model = base(cfg)
    return get_method(delta.method).apply_delta(model, delta, MethodContext(total_params=count_parameters(model))).model


def one_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    return err[0]


_MERGED: dict[str, dict] = {}


def rmpeft_merged(root, layout: str) -> dict[str, torch.Tensor]:
    """The weights rmpeft-merge writes for the layout's delta."""
    from transformers import AutoModelForCausalLM

    if layout not in _MERGED:
        _, _, _, delta = trained(root, layout)
        out = root / f"{layout}.merged"
        assert merge_main([str(delta.path), "--out", str(out)]) == 0
        _MERGED[layout] = AutoModelForCausalLM.from_pretrained(str(out)).state_dict()
    return _MERGED[layout]


@pytest.mark.parametrize("peft_type", TYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_export_loads_in_plain_peft_and_merges_as_rmpeft(root, layout, peft_type, capsys):
    from peft import PeftModel

    _, cfg, rec, delta = trained(root, layout)
    out = exported(root, layout, peft_type)
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["peft_type"] == PEFT_NAMES[peft_type] and config["mask_type" if peft_type == "shira" else "sparsity"]
    peft_model = PeftModel.from_pretrained(base(cfg), str(out))
    got, want = logits(peft_model), logits(patched(cfg, delta))
    assert (got - want).abs().max().item() <= 1e-6
    assert not torch.allclose(logits(base(cfg)), want)              # the delta does change the outputs

    merged = peft_model.merge_and_unload().state_dict()
    theirs = rmpeft_merged(root, layout)
    assert set(merged) == set(theirs)
    changed = [k for k in merged if not torch.equal(merged[k], base(cfg).state_dict()[k])]
    assert changed and all(torch.equal(merged[k], theirs[k]) for k in merged)

    card = (out / "README.md").read_text()
    for fact in (delta.method, f"{delta.method_config['ratio']:.4f}", "synthetic", f"{rec['test_metric']:.4f}",
                 delta.meta["base"]["fingerprint"], delta.fingerprint):
        assert fact in card
    meta = json.loads((out / EXPORT_FILE).read_text())
    assert meta["delta"]["fingerprint"] == delta.fingerprint and meta["adapter"]["entries"] == rec["trainable_params"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_default_type_stores_the_fewest_bytes(root, layout):
    out = exported(root, layout, "auto")
    meta = json.loads((out / EXPORT_FILE).read_text())
    sizes = {t: b for t, b in meta["adapter"]["tensor_bytes_by_type"].items() if b is not None and t in TYPES}
    best = min(sizes, key=lambda t: (sizes[t], t != "supertuning"))
    assert meta["adapter"]["peft_type"] == PEFT_NAMES[best]
    for t in TYPES:   # the estimate is what the file holds, besides the safetensors header
        size = (exported(root, layout, t) / WEIGHTS_FILE).stat().st_size
        assert sizes[t] < size <= sizes[t] + 4096


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_peft_folder_reevaluates_to_the_run_metrics(root, layout, tmp_path, capsys):
    ov, _, rec, _ = trained(root, layout)
    out = exported(root, layout, TYPES[-1])
    assert eval_main([str(out), f"results_root={tmp_path / 'a'}"]) == 0
    (path,) = (tmp_path / "a").rglob("record.json")
    ev = records.read_record(path.parent)
    assert ev["status"] == "finished" and ev["delta"]["evaluated"] is True
    assert (ev["test_metric"], ev["val_metric"]) == (rec["test_metric"], rec["val_metric"])
    assert ev["config"]["method"] == rec["config"]["method"]

    # The same folder without rmpeft.json: an adapter trained elsewhere, its config from the command line.
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    (bare / EXPORT_FILE).unlink()
    assert eval_main([str(bare), *[o for o in ov if not o.startswith(("method", "results_root"))],
                      f"results_root={tmp_path / 'b'}"]) == 0
    (path,) = (tmp_path / "b").rglob("record.json")
    ev = records.read_record(path.parent)
    assert ev["config"]["method"]["name"] == "masking" and ev["trainable_params"] == rec["trainable_params"]
    assert ev["test_metric"] == rec["test_metric"]
    capsys.readouterr()


def _foreign(root, peft_type: str):
    """A SHiRA / Super-Tuning adapter made with peft alone (non-zero values), on tiny-opt."""
    from peft import ShiraConfig, get_peft_model

    cfg = compose_train(_overrides(root))
    out = root / f"foreign-{peft_type}"
    if not out.exists():
        model = base(cfg)
        model.name_or_path = model_source(cfg.model, cfg.cache_dir)
        if peft_type == "shira":
            config = ShiraConfig(r=2, target_modules=["q_proj", "v_proj"], init_weights=False, random_seed=5)
        else:
            from peft import SupertuningConfig

            config = SupertuningConfig(target_modules=["q_proj", "v_proj"], sparsity=0.99, init_weights=False)
        torch.manual_seed(0)
        get_peft_model(model, config).save_pretrained(str(out))
    return cfg, out


@pytest.mark.parametrize("peft_type", TYPES)
def test_adapter_trained_elsewhere_evaluates_and_merges(root, peft_type, tmp_path, capsys):
    from peft import PeftModel

    cfg, out = _foreign(root, peft_type)
    cli = _overrides(root)
    delta = open_adapter(out, cli)
    assert delta.method == "masking" and delta.meta["base"]["fingerprint"]
    peft_model = PeftModel.from_pretrained(base(cfg), str(out))
    assert (logits(peft_model) - logits(patched(cfg, delta))).abs().max().item() <= 1e-6

    merged_dir = tmp_path / "merged"
    assert merge_main([str(out), *cli, "--out", str(merged_dir)]) == 0
    from transformers import AutoModelForCausalLM

    theirs = AutoModelForCausalLM.from_pretrained(str(merged_dir)).state_dict()
    ours = peft_model.merge_and_unload().state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)

    assert eval_main([str(out), *cli, f"results_root={tmp_path / 'runs'}"]) == 0
    (path,) = (tmp_path / "runs").rglob("record.json")
    ev = records.read_record(path.parent)
    assert ev["status"] == "finished" and ev["trainable_params"] == delta.meta["delta"]["entries"]
    capsys.readouterr()


def _damage(folder, how: str) -> None:
    if how == "missing":
        (folder / WEIGHTS_FILE).unlink()
    elif how == "peft_type":
        cfg = json.loads((folder / CONFIG_FILE).read_text())
        (folder / CONFIG_FILE).write_text(json.dumps({**cfg, "peft_type": "LORA"}))
    elif how == "shapes":
        from safetensors.torch import load_file, save_file

        t = load_file(str(folder / WEIGHTS_FILE))
        save_file({k: v[..., :-1].contiguous() for k, v in t.items()}, str(folder / WEIGHTS_FILE))
    elif how == "json":
        (folder / CONFIG_FILE).write_text("{not json")
    elif how == "truncate":
        data = (folder / WEIGHTS_FILE).read_bytes()
        (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("how,match", [
    ("missing", "is missing"), ("peft_type", "peft_type LORA"), ("shapes", "does not fit the base model"),
    ("json", "not valid JSON"), ("truncate", "cannot be read"),
])
def test_damaged_adapter_trained_elsewhere_is_refused(root, tmp_path, capsys, how, match):
    _, out = _foreign(root, "shira")
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    _damage(bad, how)
    with pytest.raises(RmpeftError, match=match):
        open_adapter(bad, _overrides(root))
    assert eval_main([str(bad), *_overrides(root)]) == 2
    assert match in one_line(capsys)


@pytest.mark.parametrize("how", ["missing", "peft_type", "shapes"])
def test_modified_export_is_refused(root, tmp_path, capsys, how):
    bad = tmp_path / "bad"
    shutil.copytree(exported(root, "random", TYPES[-1]), bad)
    _damage(bad, how)
    assert eval_main([str(bad)]) == 2
    assert ("is missing" if how == "missing" else "SHA-256") in one_line(capsys)


def test_wrong_base_is_refused(root, tmp_path, capsys):
    out = exported(root, "random", TYPES[-1])
    assert eval_main([str(out), "model.init_seed=1", f"results_root={tmp_path}"]) == 2
    assert "fingerprint" in one_line(capsys)
    _, foreign = _foreign(root, "shira")
    assert eval_main([str(foreign), *_overrides(root), "model=opt-125m"]) == 2    # refused before any download
    line = one_line(capsys)
    assert "was trained on base model" in line and "opt-125m" in line
    assert merge_main([str(foreign), "model=opt-125m", "--out", str(tmp_path / "m")]) == 2
    assert "was trained on base model" in one_line(capsys)


@pytest.mark.parametrize("source", ["export", "foreign"])
def test_masking_trains_from_an_adapter(root, source, tmp_path):
    from peft import PeftModel

    folder = exported(root, "random", TYPES[-1]) if source == "export" else _foreign(root, "shira")[1]
    cfg = compose_train(_overrides(root, "method=masking", f"method.init_from={folder}", "trainer.max_steps=2",
                                   f"results_root={tmp_path}"))
    model = base(cfg)
    handle = get_method("masking").apply(model, cfg.method, MethodContext(
        total_params=count_parameters(model), model_cfg=cfg.model, cache_dir=str(cfg.cache_dir)))
    peft_model = PeftModel.from_pretrained(base(cfg), str(folder))
    assert (logits(handle.model) - logits(peft_model)).abs().max().item() <= 1e-6
    entries = open_adapter(folder, _overrides(root)).meta["delta"]["entries"]
    assert handle.num_trainable() == entries == params.count(cfg).trainable      # meta count as rmpeft-params
    rec = train(cfg)
    assert rec["status"] == "finished" and rec["trainable_params"] == entries
    assert rec["method_state"]["init_from"]["path"] == str(folder)
    # the starting point counts by its content: the same folder elsewhere is the same run, another is not
    assert "init_from" not in run_identity(cfg)["method"] and len(run_identity(cfg)["method"]["init_fingerprint"]) == 64
    import shutil

    from rmpeft.resolve import resolve_run_config
    copy = shutil.copytree(folder, tmp_path / "moved")
    moved = resolve_run_config(compose_train(_overrides(root, "method=masking", f"method.init_from={copy}",
                                                        "trainer.max_steps=2", f"results_root={tmp_path}")))
    assert run_identity(moved) == run_identity(cfg)
    (copy / "README.md").write_text("changed")
    changed = resolve_run_config(compose_train(_overrides(root, "method=masking", f"method.init_from={copy}",
                                                          "trainer.max_steps=2", f"results_root={tmp_path}")))
    assert run_identity(changed) != run_identity(cfg)
    plain = compose_train(_overrides(root, "method=masking"))
    assert plain.method.init_from is None and "init_from" not in run_identity(plain)["method"]


def test_init_from_another_base_is_refused(root):
    folder = exported(root, "random", TYPES[-1])
    cfg = compose_train(_overrides(root, "method=masking", f"method.init_from={folder}", "model.init_seed=1"))
    with pytest.raises(RmpeftError, match="another base model"):
        train(cfg)
    bad = compose_train(_overrides(root, "method=masking", f"method.init_from={root / 'nowhere'}"))
    with pytest.raises(RmpeftError, match="is not a folder"):
        train(bad)


def test_export_size_on_an_opt_125m_shape(tmp_path):
    """Random Masking at 0.01% of an OPT-125m-shaped model (masks drawn as the method draws them)."""
    cfg = compose_train(["model=opt-125m"])
    meta = build_model_on_meta(cfg.model)
    total = count_parameters(meta)
    targets = {q: m for q, m in meta.named_modules() if q.endswith(("q_proj", "v_proj"))}
    k = math.floor(1e-4 * total + 0.5)
    sizes = [m.weight.numel() for m in targets.values()]
    counts = split_count(k, sizes, 1000)
    gen = torch.Generator().manual_seed(1000)
    entries = {q: folded((m.out_features, m.in_features), sample_positions(n, c, gen), torch.randn(c))
               for (q, m), n, c in zip(targets.items(), sizes, counts) if c}
    facts = write_adapter(entries, tmp_path / "a", TYPES[-1], "facebook/opt-125m", "CAUSAL_LM", "masking")
    size = (tmp_path / "a" / WEIGHTS_FILE).stat().st_size
    per_entry = 8 if TYPES[-1] == "supertuning" else 12
    # Every module stores as many entries as the fullest one (one sparsity / one r for all): no more.
    if TYPES[-1] == "supertuning":
        assert facts["stored_entries"] == len(entries) * max(counts)
    assert size - per_entry * facts["stored_entries"] <= 8192          # the rest is the safetensors header
    assert tensor_bytes(entries, TYPES[-1]) == per_entry * facts["stored_entries"]
    print(f"0.01% of OPT-125m: {k} entries, {size} bytes, {size / k:.3f} B/entry "
          f"({per_entry * facts['stored_entries'] / k:.3f} without the header)")


def test_lm_eval_scores_an_exported_adapter_as_rmpeft_eval_does(root, tmp_path, capsys):
    """lm-evaluation-harness on the local task of the run's test examples, with the exported adapter
    loaded by its own peft loading, agrees with rmpeft example by example."""
    pytest.importorskip("lm_eval", reason="the lm-eval extra is not installed")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from rmpeft.deltas.apply import build_delta_run
    from rmpeft.deltas.evaluate import eval_config
    from rmpeft.deltas.lm_eval_task import main as task_main

    _, _, rec, _ = trained(root, "random")
    out = exported(root, "random", TYPES[-1])
    assert task_main([str(out), "--out", str(tmp_path / "task")]) == 0
    capsys.readouterr()
    facts = json.loads((tmp_path / "task" / "rmpeft_task.json").read_text())
    assert facts["matching_metric"] == "acc_bytes"          # tiny-opt's tokenizer is byte-level
    lm = HFLM(pretrained=facts["base_model"], peft=str(out), add_bos_token=False, device="cpu", batch_size=16)
    res = simple_evaluate(model=lm, tasks=[facts["task"]], task_manager=TaskManager(include_path=str(tmp_path / "task")),
                          log_samples=True)
    theirs = res["results"][facts["task"]]
    samples = sorted(res["samples"][facts["task"]], key=lambda s: s["doc_id"])

    delta = open_adapter(out, [])
    run = build_delta_run(delta, eval_config(delta, []))
    ours = run.objective.scores(run.model.eval(), run.splits["test"], run.device)
    assert len(samples) == len(ours) == facts["examples"]
    mismatched = [i for i, (s, o) in enumerate(zip(samples, ours)) if s["acc_bytes"] != o]
    assert not mismatched, [samples[i].get("filtered_resps") for i in mismatched]
    assert theirs["acc_bytes,none"] == pytest.approx(rec["test_metric"], abs=1e-12)


@pytest.mark.parametrize("method", ["lora", "prefix", "shira"])
def test_peft_method_deltas_are_copied_with_their_card(root, method, tmp_path, capsys):
    from peft import PeftModel

    cfg = compose_train(_overrides(root, f"method={method}"))
    rec = train(cfg)
    out = tmp_path / "a.peft"
    assert export_main([rec["run_dir"], "--format", "peft", "--out", str(out)]) == 0
    delta = open_delta(records.run_dir(cfg) / "delta")
    assert (out / WEIGHTS_FILE).read_bytes() == (delta.path / WEIGHTS_FILE).read_bytes()
    assert delta.fingerprint in (out / "README.md").read_text()
    peft_model = PeftModel.from_pretrained(base(cfg), str(out))
    assert (logits(peft_model) - logits(patched(cfg, delta))).abs().max().item() <= 1e-6
    assert eval_main([str(out), f"results_root={tmp_path / 'runs'}"]) == 0
    (path,) = (tmp_path / "runs").rglob("record.json")
    assert records.read_record(path.parent)["test_metric"] == rec["test_metric"]
    assert export_main([rec["run_dir"], "--format", "peft", "--peft-type", "shira", "--out", str(tmp_path / "b")]) == 2
    assert "--peft-type applies to masking deltas" in one_line(capsys)


def test_deltas_without_a_peft_form_are_refused(root, tmp_path, capsys):
    cfg = compose_train(_overrides(root, "method=bitfit"))
    rec = train(cfg)
    assert export_main([rec["run_dir"], "--format", "peft", "--out", str(tmp_path / "a")]) == 2
    assert "bitfit deltas have no peft form" in one_line(capsys)
    assert not (tmp_path / "a").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
