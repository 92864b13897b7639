"""The PEFT baselines (LoRA, AdaLoRA, prefix tuning, Houlsby adapters, BitFit) on tiny random models.

Method configs come from the shipped `conf/method/*.yaml`, composed with a model group, so the
defaults (and their interpolation of the model's module names) are what is tested.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from rmpeft.errors import RmpeftError
from rmpeft.methods import MethodContext, get_method
from tests.helpers import compose_train

# peft calls a transformers helper that transformers 5 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

BASELINES = ["lora", "adalora", "prefix", "adapter", "bitfit"]
D, LAYERS, FFN, VOCAB = 32, 2, 64, 100
TOTAL_STEPS = 20


def tiny_opt() -> OPTForCausalLM:
    torch.manual_seed(0)
    cfg = OPTConfig(hidden_size=D, num_hidden_layers=LAYERS, ffn_dim=FFN, num_attention_heads=4, vocab_size=VOCAB,
                    max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)
    return OPTForCausalLM(cfg).eval()


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=D, num_hidden_layers=LAYERS, intermediate_size=FFN, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=VOCAB, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def method_cfg(name: str, model: str = "tiny-opt", overrides: tuple[str, ...] = ()):
    """`cfg.method` as composed for `model=<model> method=<name>` (interpolations resolve against the model)."""
    return compose_train([f"model={model}", f"method={name}", *overrides]).method


def apply(name: str, model: torch.nn.Module, model_group: str = "tiny-opt", overrides: tuple[str, ...] = (),
          total_steps: int = TOTAL_STEPS, tokenizer=None):
    ctx = MethodContext(seed=0, total_steps=total_steps, tokenizer=tokenizer)
    return get_method(name).apply(model, method_cfg(name, model_group, overrides), ctx)


def batch(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (4, 12), generator=g)


def lm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))


# Which parameters each method must train, by name, and how many entries that is on the tiny OPT
# (hidden d=32, 2 layers, FFN 64): r=8 on q/v for (Ada)LoRA, 5 tokens x layers x (K, V) for prefix,
# 2dr + r + d per adapter, every linear bias for BitFit.
INTENDED = {
    "lora": lambda n: bool(re.search(r"(q_proj|v_proj)\.lora_[AB]\.", n)),
    "adalora": lambda n: bool(re.search(r"(q_proj|v_proj)\.lora_[ABE]\.", n)),
    "prefix": lambda n: "prompt_encoder" in n,
    "adapter": lambda n: bool(re.search(r"(out_proj|fc2)\.adapter\.(down|up)\.(weight|bias)$", n)),
    "bitfit": lambda n: bool(re.search(r"(q_proj|k_proj|v_proj|out_proj|fc1|fc2)\.bias$", n)),
}
EXPECTED_COUNT = {
    "lora": LAYERS * 2 * (2 * D * 8),
    "adalora": LAYERS * 2 * (2 * D * 8 + 8),
    "prefix": 5 * LAYERS * 2 * D,
    "adapter": LAYERS * 2 * (2 * D * 8 + 8 + D),
    "bitfit": LAYERS * (4 * D + FFN + D),
}


@pytest.mark.parametrize("name", BASELINES)
def test_only_the_intended_parameters_are_trainable_and_receive_gradients(name):
    handle = apply(name, tiny_opt())
    params = dict(handle.model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    intended = {n for n in params if INTENDED[name](n)}
    assert trainable == intended and intended
    assert handle.num_trainable() == EXPECTED_COUNT[name]

    lm_loss(handle.model, batch()).backward()
    for n, p in params.items():
        assert (p.grad is not None) == (n in intended), n
    assert any(params[n].grad.abs().sum() > 0 for n in intended)


@pytest.mark.parametrize("name", BASELINES)
def test_a_few_training_steps_lower_the_loss(name):
    handle = apply(name, tiny_opt())
    ids = batch()
    opt = torch.optim.AdamW(handle.trainable_parameters(), lr=1e-1 if name == "prefix" else 1e-2)
    losses = []
    for step in range(1, TOTAL_STEPS + 1):
        loss = lm_loss(handle.model, ids)
        losses.append(loss.item())
        loss.backward()
        opt.step()
        handle.on_optimizer_step(step)
        opt.zero_grad()
    assert lm_loss(handle.model, ids).item() < losses[0] - 0.05, losses


@pytest.mark.parametrize("name", ["lora", "adalora", "adapter", "bitfit"])
def test_output_is_unchanged_at_initialisation(name):
    ids = batch()
    model = tiny_opt()
    with torch.no_grad():
        before = model(input_ids=ids).logits
        after = apply(name, model).model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def _base_kv(token_ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys/values an untouched copy of the tiny OPT caches for ``token_ids``."""
    with torch.no_grad():
        cache = tiny_opt()(input_ids=torch.tensor([token_ids]), use_cache=True).past_key_values
    return [(layer.keys, layer.values) for layer in cache.layers]


def test_prefix_equals_the_activations_it_was_initialised_from():
    from rmpeft.models import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    handle = apply("prefix", tiny_opt(), tokenizer=tokenizer)
    init_ids = handle.state_for_record()["init_token_ids"]
    assert len(init_ids) == 5 and len(set(init_ids)) == 5
    assert all(0 <= i < VOCAB and i not in tokenizer.all_special_ids for i in init_ids)

    with torch.no_grad():
        prompt = handle.model.get_prompt(batch_size=1)   # what peft feeds the model as its prefix cache
    expected = _base_kv(init_ids)
    assert len(prompt.layers) == LAYERS
    for layer, (keys, values) in zip(prompt.layers, expected):
        torch.testing.assert_close(layer.keys, keys, rtol=0, atol=1e-6)
        torch.testing.assert_close(layer.values, values, rtol=0, atol=1e-6)


def test_prefix_model_behaves_like_the_real_words_preceding_the_input():
    handle = apply("prefix", tiny_opt())
    prefix = torch.tensor([handle.extra["init_token_ids"]]).expand(2, -1)
    ids = batch()[:2, :7]
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding, as in generation batches
    full_ids, full_mask = torch.cat([prefix, ids], 1), torch.cat([torch.ones_like(prefix), mask], 1)
    base = tiny_opt()
    with torch.no_grad():
        logits = handle.model(input_ids=ids, attention_mask=mask).logits
        reference = base(input_ids=full_ids, attention_mask=full_mask).logits[:, prefix.shape[1]:]
        torch.testing.assert_close(logits[mask.bool()], reference[mask.bool()], rtol=0, atol=1e-5)
        generated = handle.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
        expected = base.generate(input_ids=full_ids, attention_mask=full_mask, max_new_tokens=4, do_sample=False)
    assert torch.equal(generated[:, -4:], expected[:, -4:])


def test_adalora_reallocates_ranks_during_training():
    handle = apply("adalora", tiny_opt())
    init_r, target_r = handle.extra["init_r"], handle.extra["target_r"]
    start = handle.state_for_record()["ranks"]
    assert len(start) == LAYERS * 2 and set(start.values()) == {init_r}
    ids = batch()
    opt = torch.optim.AdamW(handle.trainable_parameters(), lr=1e-2)
    seen = [start]
    for step in range(1, TOTAL_STEPS + 1):
        (lm_loss(handle.model, ids) + handle.regularization_loss()).backward()
        opt.step()
        handle.on_optimizer_step(step)
        opt.zero_grad()
        seen.append(handle.state_for_record()["ranks"])
    end = handle.state_for_record()
    assert end["ranks"] != start and len({tuple(r.values()) for r in seen}) > 2  # changed over several steps
    assert end["rank_total"] == target_r * len(start)  # the final budget: average rank target_r
    # Pruned singular values are zero in the model itself, not only in the record.
    for module, rank in end["ranks"].items():
        e = dict(handle.model.named_parameters())[f"base_model.model.{module}.lora_E.default"]
        assert int((e != 0).sum()) == rank


def test_adalora_schedule_follows_the_run_length():
    handle = apply("adalora", tiny_opt(), total_steps=200)
    cfg = handle.model.peft_config["default"]
    assert (cfg.total_step, cfg.tinit, cfg.tfinal) == (200, 20, 40)  # tinit/tfinal: 10% / 20% of the steps
    with pytest.raises(RmpeftError, match="total_steps"):
        apply("adalora", tiny_opt(), total_steps=0)
    with pytest.raises(RmpeftError, match="target_r"):
        apply("adalora", tiny_opt(), overrides=("method.target_r=8",))
    with pytest.raises(RmpeftError, match="no rank-allocation phase"):
        apply("adalora", tiny_opt(), overrides=("method.tinit_fraction=0.6", "method.tfinal_fraction=0.5"))


def test_adalora_regularisation_matches_peft():
    handle = apply("adalora", tiny_opt())
    ids = batch()
    with torch.no_grad():
        plain = handle.model(input_ids=ids).logits
        with_labels = handle.model(input_ids=ids, labels=ids)  # peft adds its penalty to the model's loss
        ce = F.cross_entropy(plain[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(with_labels.loss, ce + handle.regularization_loss(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["lora", "adalora", "adapter", "bitfit"])
def test_unknown_target_module_is_a_one_line_error_naming_existing_modules(name):
    with pytest.raises(RmpeftError) as err:
        apply(name, tiny_opt(), overrides=("method.target_modules=[q_proj,qq_proj]",))
    msg = str(err.value)
    assert "\n" not in msg and "qq_proj" in msg
    assert all(m in msg for m in ("q_proj", "v_proj", "out_proj", "fc1", "fc2"))


def test_unknown_adapter_activation_lists_the_choices():
    with pytest.raises(RmpeftError, match="unknown adapter activation 'swoosh'.*relu"):
        apply("adapter", tiny_opt(), overrides=("method.activation=swoosh",))


def test_method_configs_take_module_names_from_the_model_group():
    assert list(method_cfg("lora", "llama2-7b").target_modules) == ["q_proj", "v_proj"]
    assert list(method_cfg("adapter", "llama2-7b").target_modules) == ["o_proj", "down_proj"]
    assert list(method_cfg("adapter", "opt-125m").target_modules) == ["out_proj", "fc2"]
    assert list(method_cfg("adalora", "opt-125m").target_modules) == ["q_proj", "v_proj"]


@pytest.mark.parametrize("name", ["lora", "adapter"])
def test_llama_shaped_model(name):
    model, ids = tiny_llama(), batch()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    handle = apply(name, model, model_group="llama2-7b")
    with torch.no_grad():
        torch.testing.assert_close(handle.model(input_ids=ids).logits, before, rtol=0, atol=1e-6)
    trainable = [n for n, p in handle.model.named_parameters() if p.requires_grad]
    pattern = r"(q_proj|v_proj)\.lora_[AB]\." if name == "lora" else r"(o_proj|down_proj)\.adapter\."
    assert trainable and all(re.search(pattern, n) for n in trainable)
    modules = {re.search(pattern, n).group(1) for n in trainable}
    assert modules == ({"q_proj", "v_proj"} if name == "lora" else {"o_proj", "down_proj"})
    lm_loss(handle.model, ids).backward()
    assert all(p.grad is not None for n, p in handle.model.named_parameters() if p.requires_grad)


def test_bitfit_on_a_model_without_biases_is_an_error():
    with pytest.raises(RmpeftError, match="bias"):
        apply("bitfit", tiny_llama(), model_group="llama2-7b")


def test_adapter_keeps_half_precision_models_working():
    model = tiny_opt().to(torch.bfloat16)
    handle = apply("adapter", model)
    assert all(p.dtype == torch.float32 for p in handle.trainable_parameters())
    out = handle.model(input_ids=batch()).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", BASELINES)
def test_baseline_trains_through_the_entrypoint(name, smoke_overrides):
    from rmpeft.trainer import train

    rec = train(compose_train(smoke_overrides + [f"method={name}", "trainer.epochs=1"]))
    assert rec["status"] == "finished", rec["error"]
    assert 0 < rec["trainable_params"] < rec["total_params"]
    assert rec["distance_from_init"] > 0
    if name == "adalora":
        assert rec["method_state"]["total_step"] == 8  # 64 training examples / batch 8, one epoch
        assert rec["method_state"]["ranks"]
