"""The shared-prompt path and the flat path give the candidate log-probabilities of a plain
full-logits reference, on tiny OPT and Llama models, for every task kind, with left truncation and
padding, through every method, with gradients."""

from __future__ import annotations

import functools
import logging

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from rmpeft import scoring
from rmpeft.config import group_choices
from rmpeft.data import Example
from rmpeft.methods import MethodContext, get_method
from rmpeft.models import count_parameters, hf_config_from_arch, load_model_and_tokenizer
from rmpeft.scoring import paths
from tests.helpers import CONF_DIR, compose_train

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

TINY_LLAMA = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, intermediate_size=128, vocab_size=264,
                  max_position_embeddings=1024, pad_token_id=1, bos_token_id=2, eos_token_id=2,
                  tie_word_embeddings=True)
ATOL = 1e-4

# Every task kind: single-token classification (2 and 3 classes), multiple choice with multi-token
# candidates of different lengths, a long prompt that is truncated from the left.
CHOICE = [Example("The film was fun. It was", ["Y", "N"], gold=0),
          Example("Premise and a much longer hypothesis here? Answer:", ["Y", "N", "M"], gold=2)]
MULTI = [Example("Cause: the glass fell. Effect:", [" it broke", " it sang a long song"], gold=0),
         Example("A short one:", [" yes", " no", " maybe so"], gold=1),
         Example("x" * 300 + " long passage; the entity is", [" Ada", " Grace Hopper", " Alan"], gold=1)]
GEN = [Example("Question: who? Answer:", [" Ada Lovelace"], answers=["Ada Lovelace"]),
       Example("Q: what? A:", [" a much longer answer"], answers=["x"])]
MAX_LENGTH = 64   # the long example is truncated, differently for each candidate length


@functools.cache
def _tokenizer_and_opt(cache_dir):
    model, tok = load_model_and_tokenizer(OmegaConf.load(CONF_DIR / "model" / "tiny-opt.yaml"), cache_dir)
    return model.eval(), tok


def _model(kind: str, cache_dir):
    model, tok = _tokenizer_and_opt(cache_dir)
    if kind == "llama":
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(hf_config_from_arch(TINY_LLAMA)).eval()
    return model, tok


def reference(model, tok, examples, candidates="all"):
    """(sum, count) per row from the full logits of each sequence alone (no batching, no padding)."""
    sums, counts = [], []
    for ex in examples:
        for ids, start in scoring.encode_example(ex, tok, MAX_LENGTH, candidates):
            logp = F.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            sums.append(sum(logp[i - 1, ids[i]] for i in range(start, len(ids))))
            counts.append(len(ids) - start)
    return torch.stack(sums), torch.tensor(counts, dtype=torch.float32)


@pytest.mark.parametrize("kind", ["opt", "llama"])
@pytest.mark.parametrize("examples,candidates", [(CHOICE, "all"), (MULTI, "all"), (GEN, "gold")],
                         ids=["classification", "multiple_choice", "generation"])
def test_paths_match_full_logits(kind, examples, candidates, cache_dir):
    model, tok = _model(kind, cache_dir)
    batch = scoring.collate(examples, tok, MAX_LENGTH, candidates)
    with torch.no_grad():
        ref_sum, ref_count = reference(model, tok, examples, candidates)
        for path in ("flat", "shared", "auto"):
            total, count = scoring.token_logprobs(model, batch, path)
            assert torch.equal(count, ref_count), path
            assert torch.allclose(total, ref_sum, atol=ATOL), (path, total, ref_sum)


def test_truncation_and_groups(cache_dir):
    _, tok = _model("opt", cache_dir)
    batch = scoring.collate(MULTI, tok, MAX_LENGTH)
    # Candidates of one example share a prompt row unless truncation cut their prompts differently.
    assert batch.prompt_ids.size(0) == 1 + 1 + 3 and batch.cand_ids.size(0) == 8
    assert batch.group.tolist() == [0, 0, 1, 1, 1, 2, 3, 4]
    assert int(batch.attention_mask.sum(-1).max()) == MAX_LENGTH
    assert batch.num_tokens == 8 * MAX_LENGTH


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_gradients_match(kind, cache_dir):
    model, tok = _model(kind, cache_dir)
    batch = scoring.collate(MULTI, tok, MAX_LENGTH)
    grads = {}
    for path in ("flat", "shared"):
        model.zero_grad(set_to_none=True)
        scoring.classification_loss(model, batch, path).backward()
        grads[path] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(grads["flat"]) == len(grads["shared"]) > 0
    for a, b in zip(grads["flat"], grads["shared"]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    model.zero_grad(set_to_none=True)


def _applied(name: str, kind: str, cache_dir):
    model, tok = _model(kind, cache_dir)
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_config(model.config)
    fresh.load_state_dict(model.state_dict())
    cfg = compose_train(["model=tiny-opt", f"method={name}"])
    ctx = MethodContext(seed=0, total_params=count_parameters(fresh), total_steps=10, model_cfg=cfg.model,
                        tokenizer=tok, device=torch.device("cpu"))
    handle = get_method(name).apply(fresh, cfg.method, ctx)
    # Move every trainable parameter off its initial value so that the method's path matters.
    with torch.no_grad():
        for p in handle.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return handle.model.eval(), tok


@pytest.mark.parametrize("name", group_choices("method"))
def test_every_method(name, cache_dir, caplog):
    model, tok = _applied(name, "opt", cache_dir)
    for examples in (CHOICE, MULTI):
        batch = scoring.collate(examples, tok, MAX_LENGTH)
        with torch.no_grad():
            flat = scoring.token_logprobs(model, batch, "flat")
            with caplog.at_level(logging.INFO, logger=paths.__name__):
                auto = scoring.token_logprobs(model, batch, "auto")
        assert torch.allclose(flat[0], auto[0], atol=ATOL) and torch.equal(flat[1], auto[1])
    issue = paths.shared_path_issue(model, scoring.collate(MULTI, tok, MAX_LENGTH))
    if name == "prefix":
        assert issue == "prefix tuning keeps its own key/value cache"
        assert "flat path" in caplog.text or issue in paths._reported
        with pytest.raises(paths.SharedPathUnsupported):
            scoring.token_logprobs(model, scoring.collate(MULTI, tok, MAX_LENGTH), "shared")
    else:
        assert issue is None


def test_sparse_masking_backends(cache_dir):
    from rmpeft.sparse import available_backends

    for backend in available_backends(torch.device("cpu")):
        model, tok = _model("llama", cache_dir)
        cfg = compose_train(["model=tiny-opt", "method=masking", "method.ratio=0.01", f"method.backend={backend}"])
        handle = get_method("masking").apply(model, cfg.method, MethodContext(
            seed=0, total_params=count_parameters(model), total_steps=10, model_cfg=cfg.model, tokenizer=tok))
        batch = scoring.collate(MULTI, tok, MAX_LENGTH)
        losses = {p: scoring.classification_loss(handle.model, batch, p) for p in ("flat", "shared")}
        assert torch.allclose(losses["flat"], losses["shared"], atol=1e-5)
        grads = []
        for p in ("flat", "shared"):
            handle.model.zero_grad(set_to_none=True)
            scoring.classification_loss(handle.model, batch, p).backward()
            grads.append([q.grad.clone() for q in handle.trainable_parameters()])
        for a, b in zip(*grads):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
        handle.detach() if hasattr(handle, "detach") else None


def test_logits_only_where_scored(cache_dir):
    """The output head sees the scored positions only (one per candidate token; one per prompt)."""
    model, tok = _model("opt", cache_dir)
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    try:
        batch = scoring.collate(MULTI, tok, MAX_LENGTH)
        with torch.no_grad():
            scoring.token_logprobs(model, batch, "flat")
            scoring.token_logprobs(model, batch, "shared")
    finally:
        hook.remove()
    cand_tokens = int(batch.option_mask.sum())
    assert seen[0] == (1, cand_tokens, 264)
    assert seen[1] == (1, batch.prompt_ids.size(0), 264)
    assert seen[2] == (1, cand_tokens - batch.cand_ids.size(0), 264)


def test_token_chunks():
    rows = [[([0] * 10, 5)] * 2, [([0] * 30, 5)] * 3, [([0] * 5, 2)], [([0] * 100, 5)]]
    assert scoring.token_chunks(rows, None) == [[0, 1, 2, 3]]
    assert scoring.token_chunks(rows, 200) == [[0, 1, 2], [3]]
    assert scoring.token_chunks(rows, 60) == [[0], [1], [2], [3]]
    assert scoring.flat_tokens(rows[:2]) == 5 * 30


def test_unknown_path(cache_dir):
    model, tok = _model("opt", cache_dir)
    with pytest.raises(Exception, match="unknown scoring path 'fast'; valid choices: auto, flat, shared"):
        scoring.token_logprobs(model, scoring.collate(CHOICE, tok, MAX_LENGTH), "fast")
