"""The paper protocol and its knobs: composition, identity, Structured Masking layouts, the LM objective
for candidate tasks, epoch selection, LR selection on test, BitFit/AdaLoRA switches, the first token."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from rmpeft import scoring
from rmpeft.identity import identity_hash, run_identity
from rmpeft.loggers import RunLogger
from rmpeft.methods import MethodContext, get_method
from rmpeft.methods.masking import per_matrix_count, per_matrix_positions
from rmpeft.models import build_byte_tokenizer, set_first_token
from rmpeft.objectives import CandidateLMObjective, ChoiceObjective
from rmpeft.records import RunRecord, run_dir, write_record
from rmpeft.reporting import cli as reporting_cli
from rmpeft.run import batch_loss, build_run, train_loader
from rmpeft.evaluation import validation_loss
from rmpeft.trainer import fit
from tests.helpers import compose_train


# ---------------------------------------------------------------------------------------------- config


def test_paper_protocol_sets_each_knob_and_every_knob_stays_overridable():
    cfg = compose_train(["protocol=paper"])
    assert cfg.protocol.name == "paper"
    assert (cfg.trainer.select_epoch_by, cfg.trainer.max_length, cfg.optim.max_grad_norm,
            cfg.model.first_token_id) == ("val_loss", 2048, 1.0, 0)
    assert compose_train(["protocol=paper", "task=cb"]).task.num_val == 50
    assert compose_train(["protocol=paper", "task=wsc"]).task.num_val == 50
    assert compose_train(["protocol=paper", "task=rte"]).task.num_val == 500
    assert compose_train(["protocol=paper", "task=record"]).task.objective == "lm"
    sm = compose_train(["protocol=paper", "method=structured_masking"]).method
    assert (sm.layout, sm.column_order) == ("per_matrix", "head")
    assert compose_train(["protocol=paper", "method=bitfit"]).method.layer_norm_biases is True
    ada = compose_train(["protocol=paper", "method=adalora"])
    assert (ada.method.init_r, ada.method.target_r, ada.method.reallocate, ada.method.orth_reg_weight,
            ada.trainer.select_epoch_by) == (12, 8, False, 0.0, "last")
    over = compose_train(["protocol=paper", "task=cb", "task.num_val=80", "optim.max_grad_norm=null",
                          "method=bitfit", "method.layer_norm_biases=false"])
    assert (over.task.num_val, over.optim.max_grad_norm, over.method.layer_norm_biases) == (80, None, False)


def test_clean_protocol_keeps_earlier_identities_and_paper_is_part_of_identity():
    clean = compose_train([])
    assert clean.protocol.name == "clean"
    tree = run_identity(clean)
    assert "protocol" not in tree and "select_epoch_by" not in tree["trainer"]
    assert "objective" not in tree["task"] and "first_token_id" not in tree["model"]
    assert "layout" not in run_identity(compose_train(["method=structured_masking"]))["method"]
    # the same config without the new fields (a record written before they existed) has the same hash
    old = json.loads(json.dumps(run_identity(clean)))
    assert identity_hash(old) == identity_hash(clean)
    paper = compose_train(["protocol=paper"])
    assert run_identity(paper)["protocol"] == {"name": "paper"}
    assert identity_hash(paper) != identity_hash(clean)


# --------------------------------------------------------------------------------- Structured Masking


class _Block(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.q_proj, self.v_proj, self.fc = nn.Linear(d_in, d_out), nn.Linear(d_in, d_out), nn.Linear(d_in, d_in)


def _toy(layers: int = 3, d_in: int = 10, d_out: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[_Block(d_in, d_out) for _ in range(layers)])


def test_per_matrix_layout_gives_every_matrix_the_same_count_from_its_leading_columns():
    model = _toy()
    total = sum(p.numel() for p in model.parameters())
    ratio = 0.08                     # 0.08 * total / 6 matrices = 10.x entries each: one full column of 6 + 4
    cfg = {"name": "structured_masking", "ratio": ratio, "target_modules": ["q_proj", "v_proj"],
           "layout": "per_matrix", "column_order": "head", "mask_seed": None}
    handle = get_method("structured_masking").apply(model, cfg, MethodContext(seed=1, total_params=total))
    expected = math.floor(ratio * total / 6)
    assert expected == per_matrix_count(ratio, total, 60, 360) and expected % 6 != 0
    counts = handle.extra["per_module"]
    assert len(counts) == 6 and set(counts.values()) == {expected}
    assert handle.num_trainable() == 6 * expected
    full, rest = divmod(expected, 6)
    for layer in handle.layers.values():
        rows, cols = layer.index.long() // 10, layer.index.long() % 10
        on = set(zip(rows.tolist(), cols.tolist()))
        assert on == {(r, c) for c in range(full) for r in range(6)} | {(r, full) for r in range(rest)}
    # the delta is trained only there: a gradient step moves exactly those weights
    x = torch.randn(4, 10)
    loss = sum(b.q_proj(x).pow(2).sum() + b.v_proj(x).pow(2).sum() for b in model)
    loss.backward()
    assert all(layer.values.grad is not None and layer.values.grad.abs().sum() > 0 for layer in handle.layers.values())


def test_pooled_layout_is_todays_random_whole_columns():
    model = _toy()
    total = sum(p.numel() for p in model.parameters())
    cfg = {"name": "structured_masking", "ratio": 0.08, "target_modules": ["q_proj", "v_proj"],
           "layout": "pooled", "column_order": "random", "mask_seed": None}
    handle = get_method("structured_masking").apply(model, cfg, MethodContext(seed=1, total_params=total))
    assert handle.num_trainable() % 6 == 0 and len(set(handle.extra["per_module"].values())) > 1


def test_per_matrix_random_order_keeps_the_count_and_draws_other_columns():
    gen = torch.Generator().manual_seed(3)
    pos = per_matrix_positions(6, 10, 16, "random", gen)
    cols = pos.long() % 10
    assert pos.numel() == 16 and len(set(cols.tolist())) == 3 and sorted(pos.tolist()) == pos.tolist()
    others = {frozenset((per_matrix_positions(6, 10, 16, "random", torch.Generator().manual_seed(k)) % 10).tolist())
              for k in range(5)}
    assert len(others) > 1                                   # which columns follows the generator


# ------------------------------------------------------------------------------------- BitFit, AdaLoRA


def test_bitfit_layer_norm_biases_switch():
    class WithNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.norm = nn.Linear(4, 4), nn.LayerNorm(4)

    for flag, trainable in ((False, 4), (True, 8)):
        model = WithNorm()
        handle = get_method("bitfit").apply(model, {"name": "bitfit", "target_modules": None,
                                                    "layer_norm_biases": flag}, MethodContext())
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
        assert handle.extra["layer_norm_biases"] == (1 if flag else 0)


# ----------------------------------------------------------------------------------- first token


def test_first_token_id_makes_every_input_start_with_that_token():
    tok = build_byte_tokenizer()
    assert scoring.encode_candidate(tok, "ab", " c", 64)[0][0] == 2        # the tokenizer's </s>
    set_first_token(tok, 0)
    ids, start = scoring.encode_candidate(tok, "ab", " c", 64)
    assert ids[0] == 0 and tok.convert_ids_to_tokens(0) == "<s>" and start == 3


# ------------------------------------------------------------------------- training: objective, epochs


@pytest.fixture
def smoke_run(smoke_overrides):
    def make(*extra: str):
        cfg = compose_train(smoke_overrides + list(extra))
        return cfg, build_run(cfg)
    return make


def test_objective_lm_trains_on_the_lm_loss_of_the_gold_candidate(smoke_run):
    _, run = smoke_run("task.objective=lm")
    assert isinstance(run.objective, CandidateLMObjective)
    batch = next(iter(train_loader(run, 1)))
    examples = run.splits["train"][: run.micro_batch_size]
    assert batch.input_ids.shape[0] == len(examples) == len(batch.num_candidates)   # one row per example
    # the loss is the mean NLL of the gold candidate's tokens given the prompt
    nll, count = 0.0, 0
    with torch.no_grad():
        for ex in train_loader(run, 1, shuffle=False).dataset[: 4]:
            ids, start = scoring.encode_candidate(run.tokenizer, ex.prompt, ex.candidates[ex.gold], 128)
            logits = run.model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            logp = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
            nll -= float(logp[start - 1:].sum())
            count += len(ids) - start
        b = run.objective.collate(run.splits["train"][:4])
        assert float(batch_loss(run, b)) == pytest.approx(nll / count, rel=1e-5)
    _, clf = smoke_run()
    assert type(clf.objective) is ChoiceObjective
    with torch.no_grad():
        assert float(batch_loss(clf, clf.objective.collate(clf.splits["train"][:4]))) != pytest.approx(nll / count)
    # evaluation still scores every candidate
    assert 0.0 <= run.objective.aggregate(run.objective.scores(run.model, run.splits["test"][:8], run.device)) <= 1.0


def test_select_epoch_by_val_loss_restores_the_epoch_with_the_lowest_validation_loss(smoke_run):
    cfg, run = smoke_run("trainer.select_epoch_by=val_loss", "trainer.epochs=4", "optim.lr=0.3")
    rec = RunRecord(status="running", config={})
    fit(run, rec, RunLogger(), lambda: None)
    losses = [e["val_loss"] for e in rec.epochs]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert all("val_metric" in e for e in rec.epochs)
    best = min(range(4), key=lambda i: losses[i]) + 1
    assert rec.best_epoch == best and rec.val_metric == rec.epochs[best - 1]["val_metric"]
    assert validation_loss(run) == pytest.approx(losses[best - 1], rel=1e-5)   # those weights are back
    if best != 4:   # and not the last epoch's
        assert validation_loss(run) != pytest.approx(losses[-1], rel=1e-9)


def test_select_epoch_by_last_keeps_the_last_epoch(smoke_run):
    _, run = smoke_run("trainer.select_epoch_by=last", "trainer.epochs=2")
    rec = RunRecord(status="running", config={})
    fit(run, rec, RunLogger(), lambda: None)
    assert rec.best_epoch == 2 and validation_loss(run) == pytest.approx(rec.epochs[-1]["val_loss"], rel=1e-5)


# ------------------------------------------------------------------------------------- LR selection


def _record(lr: float, seed: int, val: float, test: float, protocol: str = "clean") -> dict:
    cfg = {"name": "main", "seed": seed, "model": {"name": "opt-125m"}, "task": {"name": "rte"},
           "method": {"name": "lora"}, "optim": {"lr": lr}}
    if protocol != "clean":
        cfg["protocol"] = {"name": protocol}
    return {"status": "finished", "error": None, "config": cfg, "val_metric": val, "test_metric": test,
            "metric": "accuracy", "trainable_share": 0.001, "epochs": []}


def _tables(*argv) -> str:
    out, err = io.StringIO(), io.StringIO()
    assert reporting_cli.run_tables([str(a) for a in argv], stdout=out, stderr=err) == 0
    return out.getvalue()


def test_select_test_picks_the_lr_with_the_best_mean_test_metric_and_labels_it(tmp_path: Path):
    recs = [_record(1e-4, s, 0.70, 0.55) for s in (1, 2)] + [_record(1e-3, s, 0.60, 0.65) for s in (1, 2)]
    for r in recs:
        write_record(run_dir({**r["config"], "results_root": str(tmp_path)}), r)
    val = json.loads(_tables(tmp_path, "--json"))
    test = json.loads(_tables(tmp_path, "--json", "--select", "test"))
    assert (val[0]["best_lr"], val[0]["selected_on"]) == (1e-4, "val")
    assert (test[0]["best_lr"], test[0]["selected_on"], test[0]["test_mean"]) == (1e-3, "test", pytest.approx(0.65))
    md = _tables(tmp_path, "--table", "main", "--select", "test")
    assert "TEST" in md.splitlines()[0] and "65.0" in md and "best mean TEST metric" in md
    both = _tables(tmp_path, "--table", "main", "--select", "both", "--compare-paper")
    titles = [line for line in both.splitlines() if line.startswith("### Table")]
    assert len(titles) == 2 and "TEST" not in titles[0] and "TEST" in titles[1]


def test_tables_never_mix_protocols_and_say_which_protocol_a_row_is(tmp_path: Path):
    recs = [_record(1e-4, s, 0.70, 0.55) for s in (1, 2)] + [_record(1e-4, s, 0.70, 0.75, "paper") for s in (1, 2)]
    for r in recs:
        write_record(run_dir({**r["config"], "results_root": str(tmp_path)}), r)
    cells = json.loads(_tables(tmp_path, "--json"))
    assert sorted((c["protocol"], round(c["test_mean"], 2)) for c in cells) == [("clean", 0.55), ("paper", 0.75)]
    md = _tables(tmp_path, "--table", "main")
    assert "protocol: clean, paper" in md.splitlines()[0] and "LoRA (protocol=paper)" in md
