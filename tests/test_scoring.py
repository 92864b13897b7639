from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from rmpeft import scoring
from rmpeft.data import Example
from rmpeft.models import load_model_and_tokenizer
from tests.helpers import CONF_DIR


def _tiny(cache_dir):
    model, tok = load_model_and_tokenizer(OmegaConf.load(CONF_DIR / "model" / "tiny-opt.yaml"), cache_dir)
    return model.eval(), tok


def _manual_mean_logprob(model, tok, prompt, cand):
    p = tok(prompt, add_special_tokens=False).input_ids
    c = tok(cand, add_special_tokens=False).input_ids
    ids = torch.tensor([[tok.bos_token_id] + p + c])
    logp = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    start = 1 + len(p)
    return sum(logp[i - 1, ids[0, i]].item() for i in range(start, ids.size(1))) / len(c)


def test_candidate_scores_are_mean_token_logprobs(cache_dir):
    model, tok = _tiny(cache_dir)
    exs = [Example("The film was fun. It was", [" great", " terrible"], gold=0),
           Example("Premise? Yes or no:", [" Yes", " No", " Maybe"], gold=2)]
    batch = scoring.collate(exs, tok, max_length=128)
    assert batch.num_candidates == [2, 3] and batch.input_ids.shape[0] == 5
    scores = scoring.candidate_scores(model, batch)
    for ex, s in zip(exs, scores):
        expected = [_manual_mean_logprob(model, tok, ex.prompt, c) for c in ex.candidates]
        assert torch.allclose(s, torch.tensor(expected), atol=1e-4)
    loss = scoring.classification_loss(model, batch)
    manual = sum(F.cross_entropy(s.unsqueeze(0), torch.tensor([e.gold])) for s, e in zip(scores, exs)) / 2
    assert torch.allclose(loss, manual, atol=1e-5)
    assert scoring.predict_choices(model, batch) == [int(s.argmax()) for s in scores]


def test_left_truncation_keeps_the_candidate(cache_dir):
    _, tok = _tiny(cache_dir)
    ids, start = scoring.encode_candidate(tok, "x" * 500, " great", max_length=32)
    assert len(ids) == 32 and tok.decode(ids[start:]) == " great" and ids[0] == tok.bos_token_id


def test_lm_loss_counts_only_answer_tokens(cache_dir):
    model, tok = _tiny(cache_dir)
    ex = Example("Question: who? Answer:", [" Ada Lovelace"], answers=["Ada Lovelace"])
    batch = scoring.collate([ex], tok, 128, candidates="gold")
    loss = scoring.lm_loss(model, batch)
    assert torch.allclose(-loss, torch.tensor(_manual_mean_logprob(model, tok, ex.prompt, ex.candidates[0])),
                          atol=1e-4)
    # A one-candidate classification loss would be identically zero: the LM loss is not.
    assert scoring.classification_loss(model, batch).item() == 0.0 and loss.item() > 0


def test_generation_is_greedy_and_stops_at_newline(cache_dir):
    model, tok = _tiny(cache_dir)
    prompts = ["Q: a? A:", "A much longer question here? A:"]
    out = scoring.generate_answers(model, tok, prompts, 128, 8, torch.device("cpu"))
    assert len(out) == 2 and all("\n" not in o for o in out)
    single = scoring.generate_answers(model, tok, prompts[1:], 128, 8, torch.device("cpu"))
    assert single[0] == out[1]  # left padding does not change the greedy continuation
