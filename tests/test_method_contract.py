"""The contract every registered method keeps, checked for each `conf/method` choice on each tiny model
family: a causal LM in the OPT layout (`tiny-opt`), one in the Llama layout (`tiny-llama`: no biases,
grouped key/value heads) and an image classifier (`tiny-clip`).

A method is one module under `rmpeft/methods/` and one `conf/method/<name>.yaml`; nothing here names
a method. Each is applied as `rmpeft-params` does (a model built on the meta device from
`conf/model/<model>.yaml`) and to the same tiny model with random weights, and must:

* count the same trainable entries on both, within the model's parameters (none for a method that
  declares ``trains = False``, e.g. zero-shot evaluation);
* make exactly the parameters it returns trainable, and only those receive gradients and change in an
  optimizer step (every other parameter keeps its bits); a method that trains nothing leaves every
  parameter frozen;
* leave the model's outputs unchanged at initialisation (unless it declares otherwise);
* give JSON-serialisable facts for the run record.

A method that does not apply to a model (its family is not in ``Method.model_families``, or the model
lacks what it trains, e.g. BitFit on a Llama without biases) is refused by the config check in one
line; those combinations are listed in `tests/model_matrix.py` and checked to be refused.
"""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
import torch.nn.functional as F

from rmpeft import params
from rmpeft.config import CONF_DIR, group_choices
from rmpeft.errors import RmpeftError
from rmpeft.methods import METHODS, MethodContext, MethodHandle, get_method
from rmpeft.models import count_parameters, load_model_and_tokenizer
from rmpeft.run import check_config
from tests.helpers import compose_train
from tests.model_matrix import MODELS, NOT_APPLICABLE, model_method_pairs

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

CHOICES = group_choices("method")
TOTAL_STEPS = 20
PAIRS = model_method_pairs(CHOICES)


@functools.cache
def composed(model: str, name: str):
    """The `train` config for `model=<model> method=<name>` (the shipped yaml, interpolations resolved)."""
    return compose_train([f"model={model}", f"task={MODELS[model]}", f"method={name}"])


@functools.cache
def _loaded(model: str) -> torch.nn.Module:
    cfg = composed(model, CHOICES[0])
    return load_model_and_tokenizer(cfg.model, cfg.cache_dir, task_cfg=cfg.task)[0].eval()


def tiny_model(model: str) -> torch.nn.Module:
    """A fresh copy of the tiny model with random weights, loaded as a run loads it."""
    return copy.deepcopy(_loaded(model))


def inputs(model: str) -> torch.Tensor:
    """One batch of inputs: token ids for a causal LM, images for an image classifier."""
    gen = torch.Generator().manual_seed(1)
    arch = composed(model, CHOICES[0]).model.arch
    if "vision_config" in arch:
        size = int(arch.vision_config.image_size)
        return torch.randn(2, 3, size, size, generator=gen)
    return torch.randint(4, int(arch.vocab_size), (2, 10), generator=gen)


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logits of a batch: next-token logits of a causal LM, class logits of an image classifier."""
    return model(input_ids=x).logits if x.dtype == torch.long else model(x)


def loss_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of a causal LM; cross-entropy against fixed labels of an image classifier."""
    logits = outputs(model, x)
    if x.dtype != torch.long:
        return F.cross_entropy(logits, torch.arange(len(x)) % logits.shape[-1])
    logits = logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))


def applied(model_name: str, name: str) -> tuple[torch.nn.Module, MethodHandle, torch.Tensor, torch.Tensor]:
    """(the tiny model before, the handle, the logits before and after ``apply``) on one batch."""
    model = tiny_model(model_name)
    x = inputs(model_name)
    with torch.no_grad():
        before = outputs(model, x)
    ctx = MethodContext(seed=0, total_params=count_parameters(model), total_steps=TOTAL_STEPS)
    handle = get_method(name).apply(model, composed(model_name, name).method, ctx)
    with torch.no_grad():
        after = outputs(handle.model, x)
    return model, handle, before, after


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
        assert composed("tiny-opt", name).method.name == name
        assert get_method(name).name == name and get_method(name).label


@pytest.mark.parametrize("model,name", sorted(NOT_APPLICABLE))
def test_a_method_that_does_not_apply_to_a_model_is_refused_in_one_line(model, name):
    with pytest.raises(RmpeftError) as error:
        check_config(composed(model, name))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("model,name", PAIRS)
def test_meta_count_equals_the_count_on_real_weights(model, name):
    counted = params.count(composed(model, name))          # meta device, as rmpeft-params
    _, handle, _, _ = applied(model, name)
    assert counted.total == count_parameters(tiny_model(model))
    if get_method(name).trains:
        assert 0 < counted.trainable <= counted.total
    else:
        assert counted.trainable == 0
    assert handle.num_trainable() == counted.trainable
    assert sum(p.numel() for p in handle.trainable_parameters()) == counted.trainable


@pytest.mark.parametrize("model,name", PAIRS)
def test_only_the_returned_parameters_train(model, name):
    _, handle, _, _ = applied(model, name)
    model_name, model = model, handle.model
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
    loss = loss_of(model, inputs(model_name))
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


@pytest.mark.parametrize("model,name", PAIRS)
def test_output_at_initialisation(model, name):
    _, _, before, after = applied(model, name)
    if get_method(name).output_unchanged_at_init:
        torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    else:
        assert not torch.allclose(after, before, atol=1e-6)


@pytest.mark.parametrize("model,name", PAIRS)
def test_record_facts_are_json(model, name):
    _, handle, _, _ = applied(model, name)
    state = handle.state_for_record()
    assert isinstance(state, dict)
    assert json.loads(json.dumps(state)) == state


def test_only_full_fine_tuning_keeps_fp32_weights():
    assert {n for n in METHODS if get_method(n).keeps_fp32_weights} == {"ft"}
