from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from rmpeft.errors import RmpeftError
from rmpeft.models import (
    build_byte_tokenizer,
    build_model_on_meta,
    count_parameters,
    load_model_and_tokenizer,
    materialize_random_model,
)
from tests.helpers import CONF_DIR

# Public parameter counts of the real checkpoints (tied input/output embeddings counted once).
EXPECTED_TOTALS = {"opt-125m": 125_239_296, "opt-1.3b": 1_315_758_080, "opt-13b": 12_853_473_280,
                   "llama2-7b": 6_738_415_616}


@pytest.mark.parametrize("name", sorted(EXPECTED_TOTALS))
def test_meta_models_have_the_public_parameter_counts(name):
    model = build_model_on_meta(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"))
    assert next(model.parameters()).device.type == "meta"
    assert count_parameters(model) == EXPECTED_TOTALS[name]


def test_random_init_model_goes_through_from_pretrained(cache_dir):
    cfg = OmegaConf.load(CONF_DIR / "model" / "tiny-opt.yaml")
    folder = materialize_random_model(cfg, cache_dir)
    assert (folder / "config.json").exists() and (folder / "tokenizer.json").exists()
    m1, tok = load_model_and_tokenizer(cfg, cache_dir)
    m2, _ = load_model_and_tokenizer(cfg, cache_dir)  # reused folder: identical weights
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    cfg2 = OmegaConf.merge(cfg, {"init_seed": 1})
    m3, _ = load_model_and_tokenizer(cfg2, cache_dir)
    assert not torch.equal(m3.model.decoder.layers[0].self_attn.q_proj.weight,
                           m1.model.decoder.layers[0].self_attn.q_proj.weight)
    text = "Is it great? Yes, 100% — it was!"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_byte_tokenizer_special_ids_follow_opt():
    tok = build_byte_tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (1, 2, 2)
    assert len(tok) == 260


def test_missing_local_checkpoint_is_a_one_line_error(tmp_path, cache_dir):
    cfg = OmegaConf.create({"name": "x", "name_or_path": str(tmp_path / "nope"), "random_init": False})
    with pytest.raises(RmpeftError, match="cannot load model"):
        load_model_and_tokenizer(cfg, cache_dir)
