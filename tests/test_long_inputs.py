"""Long-input training in bounded memory: the packed layout of multi-token candidates, token-bounded
training micro-batches (trainer.train_max_tokens) and activation checkpointing
(trainer.gradient_checkpointing) give the losses and gradients of the plain path, on tiny OPT and
Llama models, for every task kind."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from rmpeft import scoring
from rmpeft.errors import RmpeftError
from rmpeft.identity import identity_hash
from rmpeft.models import hf_config_from_arch
from rmpeft.objectives import build_objective
from rmpeft.run import build_run, check_config, draws_dropout, enable_checkpointing
from rmpeft.scoring import paths
from rmpeft.trainer import train
from tests.helpers import compose_train
from tests.test_scoring_paths import ATOL, CHOICE, GEN, MAX_LENGTH, MULTI, TINY_LLAMA, _model, reference

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning",
                                        "ignore:.*gradient_checkpointing_enable.*:FutureWarning")

# The trainer fields an objective reads (conf/train.yaml's `trainer`), at this test's sizes.
TRAINER = {"max_length": MAX_LENGTH, "max_new_tokens": 4, "eval_max_tokens": None}

# task kind -> (task config, examples)
KINDS = {
    "classification": ({"kind": "classification"}, CHOICE),
    "multiple_choice": ({"kind": "multiple_choice"}, MULTI),
    "generation": ({"kind": "generation"}, GEN),
    "candidate_lm": ({"kind": "multiple_choice", "objective": "lm"}, MULTI),
}


def _eager_llama():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(hf_config_from_arch(TINY_LLAMA), attn_implementation="eager").eval()


def _grads(model: nn.Module) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return out


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-5, rtol=1e-4), (x - y).abs().max()


@pytest.mark.parametrize("kind", ["opt", "llama"])
@pytest.mark.parametrize("task", sorted(KINDS))
def test_train_parts_give_the_micro_batch_loss_and_gradient(kind, task, cache_dir):
    model, tok = _model(kind, cache_dir)
    task_cfg, examples = KINDS[task]
    objective = build_objective(OmegaConf.create(task_cfg), tok, OmegaConf.create(
        {**TRAINER, "train_max_tokens": 40}))
    batch = objective.collate(examples)
    parts = objective.train_parts(batch)
    assert len(parts) > 1 and sum(s for _, s in parts) == pytest.approx(1.0)
    assert all(p.num_tokens <= 40 or len(p.num_candidates) == 1 for p, _ in parts)
    whole = objective.loss(model, batch)
    whole.backward()
    expected = _grads(model)
    split = 0.0
    for part, share in parts:
        loss = objective.loss(model, part) * share
        loss.backward()
        split += float(loss.detach())
    assert split == pytest.approx(float(whole), abs=1e-5)
    _close(_grads(model), expected)


def test_no_bound_or_a_small_batch_is_one_part(cache_dir):
    _, tok = _model("opt", cache_dir)
    for bound in (None, 10_000):
        objective = build_objective(OmegaConf.create({"kind": "multiple_choice"}), tok,
                                    OmegaConf.create({**TRAINER, "train_max_tokens": bound}))
        batch = objective.collate(MULTI)
        assert objective.train_parts(batch) == [(batch, 1.0)]


def test_selected_examples_score_as_in_the_whole_batch(cache_dir):
    model, tok = _model("llama", cache_dir)
    batch = scoring.collate(MULTI, tok, MAX_LENGTH)
    with torch.no_grad():
        whole = scoring.candidate_scores(model, batch)
        for picked in ([0], [1, 2], [2]):
            part = batch.select(picked)
            assert part.num_candidates == [batch.num_candidates[i] for i in picked]
            for path in ("flat", "shared"):
                for i, scores in zip(picked, scoring.candidate_scores(model, part, path)):
                    assert torch.allclose(scores, whole[i], atol=ATOL)


@pytest.mark.parametrize("kind", ["opt", "llama"])
@pytest.mark.parametrize("task", sorted(KINDS))
def test_checkpointing_gives_the_same_loss_and_gradients(kind, task, cache_dir):
    from transformers import AutoModelForCausalLM

    import copy

    base, tok = _model(kind, cache_dir)
    config = copy.deepcopy(base.config)
    if task == "multiple_choice":
        # multi-token candidates: checkpointed training scores them on the flat path (no key/value
        # cache), which draws other dropout masks than the shared path; compare without dropout
        for key in ("dropout", "attention_dropout", "activation_dropout"):
            if hasattr(config, key):
                setattr(config, key, 0.0)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(base.state_dict())
    task_cfg, examples = KINDS[task]
    objective = build_objective(OmegaConf.create(task_cfg), tok, OmegaConf.create(TRAINER))
    batch = objective.collate(examples)
    model.train()   # dropout on (tiny-opt): checkpointing must replay the same masks
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            enable_checkpointing(model)
        torch.manual_seed(0)
        loss = objective.loss(model, batch)
        loss.backward()
        results.append((float(loss), _grads(model)))
    assert results[1][0] == pytest.approx(results[0][0], abs=1e-5)
    _close(results[1][1], results[0][1])


def test_the_cache_path_under_checkpointing_falls_back_to_flat(cache_dir, monkeypatch):
    """Checkpointed layers fill no key/value cache: the cache path must not score candidates without
    their prompt."""
    from transformers import AutoModelForCausalLM

    base, tok = _model("llama", cache_dir)
    model = AutoModelForCausalLM.from_config(base.config)
    model.load_state_dict(base.state_dict())
    batch = scoring.collate(MULTI, tok, MAX_LENGTH)
    expected = scoring.classification_loss(model.train(), batch, "flat")
    enable_checkpointing(model)
    assert float(scoring.classification_loss(model, batch, "auto")) == pytest.approx(float(expected), abs=1e-5)
    with pytest.raises(paths.SharedPathUnsupported, match="key/value cache"):
        scoring.token_logprobs(model, batch, "shared")


def test_checkpointing_a_model_without_support_is_one_line():
    with pytest.raises(RmpeftError, match=r"^trainer.gradient_checkpointing=true: Linear does not support"):
        enable_checkpointing(nn.Linear(2, 2))


def test_run_with_bounded_parts_and_checkpointing_equals_the_plain_run(smoke_overrides, tmp_path):
    """A whole training run: split micro-batches and checkpointed layers change neither the losses nor
    the metrics, nor the run's identity (its folder)."""
    common = smoke_overrides + ["trainer.epochs=2", "method=lora", "optim.lr=1e-2", "trainer.save_delta=never",
                                "+model.arch.dropout=0.0"]
    plain = compose_train(common + ["trainer.train_max_tokens=null"])
    bounded = compose_train(common + ["trainer.train_max_tokens=64", "trainer.gradient_checkpointing=true",
                                      f"results_root={tmp_path / 'bounded'}"])
    assert identity_hash(plain) == identity_hash(bounded)
    run = build_run(bounded)
    batch = run.objective.collate(run.splits["train"][:8])
    assert run.objective.train_max_tokens == 64 and len(run.objective.train_parts(batch)) > 1
    a, b = train(plain), train(bounded)
    assert a["status"] == b["status"] == "finished", (a["error"], b["error"])
    for ea, eb in zip(a["epochs"], b["epochs"]):
        assert eb["train_loss"] == pytest.approx(ea["train_loss"], abs=1e-5)
        assert eb["val_loss"] == pytest.approx(ea["val_loss"], abs=1e-5)
    assert b["test_metric"] == a["test_metric"] and b["val_metric"] == a["val_metric"]
    assert b["distance_from_init"] == pytest.approx(a["distance_from_init"], rel=1e-4)


def test_no_split_where_dropout_would_draw_other_masks(smoke_overrides, cache_dir):
    """tiny-opt trains with dropout 0.1: a split micro-batch would draw other masks, so the bound is
    not applied (checkpointing replays the same masks and is)."""
    run = build_run(compose_train(smoke_overrides + ["trainer.train_max_tokens=8",
                                                     "trainer.gradient_checkpointing=true"]))
    assert draws_dropout(run.model) and run.objective.train_max_tokens is None
    assert any(getattr(m, "gradient_checkpointing", False) for m in run.model.modules())
    assert not draws_dropout(_model("llama", cache_dir)[0])


@pytest.mark.parametrize("override,field", [("trainer.train_max_tokens=0", "trainer.train_max_tokens"),
                                            ("trainer.gradient_checkpointing=maybe", "trainer.gradient_checkpointing")])
def test_bad_values_are_one_line(smoke_overrides, override, field):
    with pytest.raises(RmpeftError) as err:
        check_config(compose_train(smoke_overrides + [override]))
    assert str(err.value).startswith(f"{field}=") and "\n" not in str(err.value)
