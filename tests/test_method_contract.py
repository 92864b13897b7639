"""The contract every registered method keeps, checked for each `conf/method` choice.

A method is one module under `rmpeft/methods/` and one `conf/method/<name>.yaml`; nothing here names
a method. Each is applied as `rmpeft-params` does (a model built on the meta device from
`conf/model/tiny-opt.yaml`) and to the same tiny OPT with random weights, and must:

* count the same trainable entries on both, within the model's parameters (none for a method that
  declares ``trains = False``, e.g. zero-shot evaluation);
* make exactly the parameters it returns trainable, and only those receive gradients and change in an
  optimizer step (every other parameter keeps its bits); a method that trains nothing leaves every
  parameter frozen;
* leave the model's outputs unchanged at initialisation (unless it declares otherwise);
* give JSON-serialisable facts for the run record.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
import torch.nn.functional as F

from rmpeft import params
from rmpeft.config import CONF_DIR, group_choices
from rmpeft.methods import METHODS, MethodContext, MethodHandle, get_method
from rmpeft.models import count_parameters, hf_config_from_arch
from tests.conftest import compose_train

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

MODEL = "tiny-opt"
CHOICES = group_choices("method")
TOTAL_STEPS = 20


@functools.cache
def composed(name: str):
    """The `train` config for `model=tiny-opt method=<name>` (the shipped yaml, interpolations resolved)."""
    return compose_train([f"model={MODEL}", f"method={name}"])


def tiny_model() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(hf_config_from_arch(composed(CHOICES[0]).model.arch)).eval()


def applied(name: str) -> tuple[torch.nn.Module, MethodHandle, torch.Tensor, torch.Tensor]:
    """(the tiny model before, the handle, the logits before and after ``apply``) on one batch."""
    model = tiny_model()
    ids = batch()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    ctx = MethodContext(seed=0, total_params=count_parameters(model), total_steps=TOTAL_STEPS)
    handle = get_method(name).apply(model, composed(name).method, ctx)
    with torch.no_grad():
        after = handle.model(input_ids=ids).logits
    return model, handle, before, after


def batch() -> torch.Tensor:
    vocab = int(composed(CHOICES[0]).model.arch.vocab_size)
    return torch.randint(4, vocab, (2, 10), generator=torch.Generator().manual_seed(1))


def lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))


def unique_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    seen: dict[int, str] = {}
    out = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen[id(p)] = n
            out[n] = p
    return out


def test_every_method_config_is_a_registered_method_and_back():
    assert set(CHOICES) == set(METHODS)
    for name in CHOICES:
        assert (CONF_DIR / "method" / f"{name}.yaml").exists()
        assert composed(name).method.name == name
        assert get_method(name).name == name


@pytest.mark.parametrize("name", CHOICES)
def test_meta_count_equals_the_count_on_real_weights(name):
    counted = params.count(composed(name))          # meta device, as rmpeft-params
    _, handle, _, _ = applied(name)
    assert counted.total == count_parameters(tiny_model())
    if get_method(name).trains:
        assert 0 < counted.trainable <= counted.total
    else:
        assert counted.trainable == 0
    assert handle.num_trainable() == counted.trainable
    assert sum(p.numel() for p in handle.trainable_parameters()) == counted.trainable


@pytest.mark.parametrize("name", CHOICES)
def test_only_the_returned_parameters_train(name):
    _, handle, _, _ = applied(name)
    model = handle.model
    everything = unique_parameters(model)
    declared = {id(p) for p in handle.trainable_parameters()}
    assert len(declared) == len(handle.trainable_parameters())
    assert {id(p) for p in everything.values() if p.requires_grad} == declared
    if not get_method(name).trains:
        assert not declared and handle.regularization_loss() is None
        return
    assert declared
    frozen = {n: p.detach().clone() for n, p in everything.items() if id(p) not in declared}

    model.train()
    ids = batch()
    loss = lm_loss(model, ids)
    extra = handle.regularization_loss()
    (loss if extra is None else loss + extra).backward()
    for n, p in everything.items():
        assert (p.grad is not None) == (id(p) in declared), n
    assert any(p.grad.abs().sum() > 0 for p in handle.trainable_parameters())

    trained = [p.detach().clone() for p in handle.trainable_parameters()]
    torch.optim.AdamW(handle.trainable_parameters(), lr=1e-2).step()
    handle.on_optimizer_step(1)
    for n, p in everything.items():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"{n} is frozen but changed"
    assert any(not torch.equal(p, t) for p, t in zip(handle.trainable_parameters(), trained))


@pytest.mark.parametrize("name", CHOICES)
def test_output_at_initialisation(name):
    _, _, before, after = applied(name)
    if get_method(name).output_unchanged_at_init:
        torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    else:
        assert not torch.allclose(after, before, atol=1e-6)


@pytest.mark.parametrize("name", CHOICES)
def test_record_facts_are_json(name):
    _, handle, _, _ = applied(name)
    state = handle.state_for_record()
    assert isinstance(state, dict)
    assert json.loads(json.dumps(state)) == state


def test_only_full_fine_tuning_keeps_fp32_weights():
    assert {n for n in METHODS if get_method(n).keeps_fp32_weights} == {"ft"}
