"""Random Masking and Structured Masking as methods: counts, gradients, frozen weights, seeds, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from rmpeft.errors import RmpeftError
from rmpeft.methods import MethodContext, get_method
from rmpeft.methods.masking import MASK_SEED_OFFSET
from rmpeft.sparse import ColumnMaskedLinear, MaskedLinear, masked_layers, reset_strategy_decisions, unpatch

CONF = Path(__file__).resolve().parents[1] / "conf"
TARGETS = ("q_proj", "v_proj")


def tiny_opt(seed: int = 0, device: str | None = None) -> nn.Module:
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4, vocab_size=100,
                       max_position_embeddings=64, word_embed_proj_dim=32, dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(seed)
    if device == "meta":
        with torch.device("meta"):
            return OPTForCausalLM(config)
    return OPTForCausalLM(config)


def total(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def method_cfg(name: str = "masking", **kw):
    base = {"name": name, "ratio": 0.01, "target_modules": list(TARGETS), "backend": "auto", "mask_seed": None}
    if name == "structured_masking":
        base = {"name": name, "ratio": 0.01, "target_modules": list(TARGETS), "column_order": "random",
                "mask_seed": None}
    base.update(kw)
    return OmegaConf.create(base)


def apply(model, name="masking", seed=0, **kw):
    return get_method(name).apply(model, method_cfg(name, **kw), MethodContext(seed=seed, total_params=total(model)))


def batch(seed: int = 0, n: int = 4, length: int = 12):
    ids = torch.randint(3, 100, (n, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def target_weights(model) -> dict[str, torch.Tensor]:
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.endswith(TARGETS)}


def mask_of(handle) -> dict[str, torch.Tensor]:
    return {n: m.index.clone() for n, m in handle.layers.items()}


# --- counts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0.0005, 0.01, 0.1])
def test_exact_number_of_trainable_entries(ratio):
    model = tiny_opt()
    n = total(model)
    h = apply(model, ratio=ratio)
    k = math.floor(ratio * n + 0.5)
    assert h.num_trainable() == k == h.extra["k"] == sum(h.extra["per_module"].values())
    assert sum(p.numel() for p in h.trainable_parameters()) == k
    assert [p for p in h.model.parameters() if p.requires_grad] == h.trainable_parameters()
    for name, layer in h.layers.items():
        idx = layer.index.long()
        assert torch.unique(idx).numel() == idx.numel() == h.extra["per_module"][name]
        assert idx.min() >= 0 and idx.max() < layer.weight.numel()
    assert h.extra["mask_seed"] == MASK_SEED_OFFSET and h.extra["backend"] == "torch"


def test_mask_spreads_over_the_union_of_target_matrices():
    """Counts per matrix follow the hypergeometric split: over seeds, each matrix gets k/M on average."""
    model = tiny_opt()
    per = []
    for seed in range(30):
        h = apply(model, seed=seed, ratio=0.05)
        per.append(list(h.extra["per_module"].values()))
        unpatch(model)
    means = torch.tensor(per, dtype=torch.float64).mean(0)
    assert len(per[0]) == 4 and torch.allclose(means, torch.full_like(means, means.mean().item()), rtol=0.1)
    assert len({tuple(p) for p in per}) > 1


def test_meta_model_counts_match_real_model_without_sampling():
    real, meta = tiny_opt(), tiny_opt(device="meta")
    for name in ("masking", "structured_masking"):
        for ratio in (0.001, 0.02, 0.1):
            hr, hm = apply(real, name, ratio=ratio), apply(meta, name, ratio=ratio)
            assert hm.num_trainable() == hr.num_trainable()
            assert all(p.device.type == "meta" for p in hm.trainable_parameters())
            unpatch(real), unpatch(meta)


def test_opt13b_on_meta_counts_every_paper_ratio():
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(hidden_size=5120, num_hidden_layers=40, ffn_dim=20480, num_attention_heads=40,
                       vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=5120)
    with torch.device("meta"):
        model = OPTForCausalLM(config)
    n = total(model)
    for ratio in (0.1, 0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001, 0.00005, 0.00001):
        h = get_method("masking").apply(model, method_cfg(ratio=ratio), MethodContext(seed=0, total_params=n))
        assert h.num_trainable() == math.floor(ratio * n + 0.5)
        unpatch(model)


# --- gradients and frozen weights -------------------------------------------------------------------

def test_gradients_only_on_masked_entries_and_equal_dense_gradient():
    reference = tiny_opt()
    model = tiny_opt()
    h = apply(model, ratio=0.02, backend="torch")
    for m in target_weights(reference).values():
        m.requires_grad_(True)
    reference(**batch()).loss.backward()
    model(**batch()).loss.backward()
    dense = {n: w.grad for n, w in target_weights(reference).items()}
    for name, layer in h.layers.items():
        assert layer.base_layer.weight.grad is None
        torch.testing.assert_close(layer.values.grad, dense[name].view(-1)[layer.index.long()], rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for n, p in model.named_parameters() if not n.endswith("values"))


def test_frozen_weights_bit_identical_and_only_masked_entries_move():
    model = tiny_opt()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    h = apply(model, ratio=0.02)
    opt = torch.optim.AdamW(h.trainable_parameters(), lr=1e-1)
    for step in range(4):
        model(**batch(step)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for layer in h.layers.values():
        delta = layer.delta().view(-1)
        moved = torch.zeros_like(delta, dtype=torch.bool)
        moved[layer.index.long()] = True
        assert torch.all(delta[~moved] == 0) and torch.count_nonzero(delta[moved]) > 0
    # the trainer's distance from init: the values are deltas that start at zero
    assert sum(p.detach().square().sum() for p in h.trainable_parameters()) > 0
    after = dict(unpatch(model).named_parameters())             # original names again
    assert after.keys() == before.keys()
    for n, p in before.items():
        assert torch.equal(after[n].detach(), p), n             # bit-identical frozen weights
        assert after[n].grad is None, n


def test_structured_masking_trains_whole_columns_only():
    model = tiny_opt()
    h = apply(model, "structured_masking", ratio=0.02)
    n = total(model)
    k = math.floor(0.02 * n + 0.5)
    columns = max(1, math.floor(k / 32 + 0.5))                   # every target column has 32 entries
    assert h.extra["columns"] == columns and h.num_trainable() == columns * 32 == h.extra["trainable"]
    opt = torch.optim.AdamW(h.trainable_parameters(), lr=1e-1)
    for step in range(2):
        model(**batch(step)).loss.backward()
        opt.step()
        opt.zero_grad()
    for layer in h.layers.values():
        assert isinstance(layer, ColumnMaskedLinear) and layer.base_layer.weight.grad is None
        d = layer.delta()
        chosen = torch.zeros(d.shape[1], dtype=torch.bool)
        chosen[layer.columns.long()] = True
        assert torch.all(d[:, ~chosen] == 0) and torch.all(d[:, chosen].abs().sum(0) > 0)


def test_structured_head_order_takes_leading_columns_round_robin():
    model = tiny_opt()
    h = apply(model, "structured_masking", ratio=0.01, column_order="head")
    cols = {n: layer.columns.tolist() for n, layer in h.layers.items()}
    k = math.floor(0.01 * total(model) + 0.5)
    c = max(1, math.floor(k / 32 + 0.5))
    assert sum(map(len, cols.values())) == c
    assert all(v == list(range(len(v))) for v in cols.values())
    assert max(map(len, cols.values())) - min(len(cols.get(n, [])) for n in h.extra["per_module"]) <= 1


# --- seeds ----------------------------------------------------------------------------------------

def test_mask_follows_the_seed():
    model = tiny_opt()
    a = mask_of(apply(model, seed=1)); unpatch(model)
    b = mask_of(apply(model, seed=1)); unpatch(model)
    c = mask_of(apply(model, seed=2)); unpatch(model)
    d = mask_of(apply(model, seed=2, mask_seed=1 + MASK_SEED_OFFSET)); unpatch(model)
    same = lambda x, y: x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)  # noqa: E731
    assert same(a, b) and not same(a, c) and same(a, d)
    cols = lambda h: {n: m.columns.tolist() for n, m in h.layers.items()}  # noqa: E731
    s1 = cols(apply(model, "structured_masking", seed=1)); unpatch(model)
    s1b = cols(apply(model, "structured_masking", seed=1)); unpatch(model)
    s2 = cols(apply(model, "structured_masking", seed=2)); unpatch(model)
    assert s1 == s1b and s1 != s2


# --- backends end to end ---------------------------------------------------------------------------

def _trajectory(backend: str, **kw) -> list[float]:
    from rmpeft.sparse.torch_backend import TorchBackend

    model = tiny_opt()
    h = apply(model, ratio=0.03, backend=backend, seed=3)
    if kw:
        for layer in h.layers.values():
            layer.backend = TorchBackend(**kw)
    opt = torch.optim.AdamW(h.trainable_parameters(), lr=5e-2)
    losses = []
    for step in range(5):
        loss = model(**batch(step)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_same_loss_trajectory_across_backends():
    from rmpeft.sparse import available_backends
    from rmpeft.sparse.torch_backend import FORWARD_STRATEGIES, SDDMM_STRATEGIES

    reset_strategy_decisions()
    reference = _trajectory("dense")
    assert reference[-1] < reference[0]                          # it trains
    runs = {name: _trajectory(name) for name in available_backends("cpu") if name != "dense"}
    runs["torch-rule"] = _trajectory("torch", autotune=False)
    for f in FORWARD_STRATEGIES:
        for s in SDDMM_STRATEGIES:
            runs[f"torch-{f}-{s}"] = _trajectory("torch", forward_strategy=f, sddmm_strategy=s)
    for name, losses in runs.items():
        assert losses == pytest.approx(reference, rel=1e-4), name


def test_model_stays_a_normal_hf_model_fp32_and_bf16():
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_opt().to(dtype)
        h = apply(model, ratio=0.05)
        out = model(**batch())
        assert out.logits.dtype == dtype and torch.isfinite(out.loss)
        out.loss.backward()
        assert all(p.grad is not None and p.grad.dtype == dtype for p in h.trainable_parameters())
        gen = model.generate(batch()["input_ids"][:, :5], max_new_tokens=3, do_sample=False)
        assert gen.shape == (4, 8)
    # fp32 values on bf16 weights (the trainer keeps trainable parameters in fp32)
    model = tiny_opt().to(torch.bfloat16)
    h = apply(model, ratio=0.05)
    for p in h.trainable_parameters():
        p.data = p.data.float()
    model(**batch()).loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in h.trainable_parameters())


def test_unpatch_merge_gives_the_same_function():
    model = tiny_opt()
    h = apply(model, ratio=0.05)
    with torch.no_grad():
        for p in h.trainable_parameters():
            p.normal_()
        expected = model(**batch()).logits
    unpatch(model, merge=True)
    assert not masked_layers(model)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch()).logits, expected, rtol=1e-4, atol=1e-5)


def test_state_dict_holds_values_and_positions():
    model = tiny_opt()
    h = apply(model)
    keys = [k for k in model.state_dict() if "q_proj" in k and ".layers.0." in k]
    assert sorted(keys) == sorted(["model.decoder.layers.0.self_attn.q_proj.values",
                                   "model.decoder.layers.0.self_attn.q_proj.index",
                                   "model.decoder.layers.0.self_attn.q_proj.base_layer.weight",
                                   "model.decoder.layers.0.self_attn.q_proj.base_layer.bias"])
    assert isinstance(h.layers["model.decoder.layers.0.self_attn.q_proj"], MaskedLinear)


# --- bad input ------------------------------------------------------------------------------------

def test_ratio_bounds():
    model = tiny_opt()
    n = total(model)
    bound = 4 * 32 * 32 / n
    for name in ("masking", "structured_masking"):
        for bad in (0, -0.1, bound * 1.01, 0.5, 1.0):
            with pytest.raises(RmpeftError, match=rf"method.ratio={bad} is outside \(0, {bound:.6g}\]: the target "
                                                  rf"modules \(q_proj, v_proj\) hold 4096 of the model's {n}"):
                apply(tiny_opt(), name, ratio=bad)
        with pytest.raises(RmpeftError, match="is not a number"):
            apply(tiny_opt(), name, ratio="1%")
        with pytest.raises(RmpeftError, match=r"gives no trainable entry .* smallest ratio is"):
            apply(tiny_opt(), name, ratio=1e-9)
    h = apply(model, ratio=bound)                                # the bound itself: every target entry
    assert h.num_trainable() == 4096


def test_unknown_target_module_and_backend():
    with pytest.raises(RmpeftError, match=r"target module\(s\) \['qkv'\] not found.*q_proj"):
        apply(tiny_opt(), target_modules=["q_proj", "qkv"])
    with pytest.raises(RmpeftError, match="unknown method.backend 'fast'; valid choices: auto, dense, spops, torch"):
        apply(tiny_opt(), backend="fast")
    with pytest.raises(RmpeftError, match="unknown method.column_order 'left'; valid choices: head, random"):
        apply(tiny_opt(), "structured_masking", column_order="left")
    with pytest.raises(RmpeftError, match=r"method.target_modules must be a module name or a list of module names, got \[\]"):
        apply(tiny_opt(), target_modules=[])


# --- configs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["masking", "structured_masking"])
def test_method_config_files(name):
    cfg = OmegaConf.merge({"model": OmegaConf.load(CONF / "model" / "opt-125m.yaml")},
                          {"method": OmegaConf.load(CONF / "method" / f"{name}.yaml")})
    m = cfg.method
    assert m.name == name and 0 < m.ratio < 0.1 and m.mask_seed is None
    assert list(m.target_modules) == ["q_proj", "v_proj"]
    model = tiny_opt()
    h = get_method(name).apply(model, m, MethodContext(seed=5, total_params=total(model)))
    assert h.extra["mask_seed"] == 5 + MASK_SEED_OFFSET and h.num_trainable() > 0
