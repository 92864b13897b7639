"""The run's optimizer: the same bits as torch's per-tensor AdamW, so changing the implementation changes no result."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from rmpeft.errors import RmpeftError
from rmpeft.optim import build_optimizer


def _params(seed: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(64, 32), (32,), (7, 5, 3), (1,)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_bitwise_equal_to_per_tensor_loop(weight_decay):
    cfg = OmegaConf.create({"name": "adamw", "lr": 3e-3, "betas": [0.9, 0.98], "eps": 1e-6,
                            "weight_decay": weight_decay})
    ours, ref = _params(0), _params(0)
    opt = build_optimizer(ours, cfg)
    opt_ref = torch.optim.AdamW(ref, lr=3e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=weight_decay,
                                foreach=False)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        for a, b in zip(ours, ref):
            a.grad = torch.randn(a.shape, generator=gen) * 1e-2
            b.grad = a.grad.clone()
        opt.step()
        opt_ref.step()
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["exp_avg_sq"], opt_ref.state[b]["exp_avg_sq"])
    assert any(not torch.equal(a, b) for a, b in zip(ours, _params(0)))  # the steps moved the weights


def test_unknown_optimizer_names_choices():
    cfg = OmegaConf.create({"name": "sgd", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0})
    with pytest.raises(RmpeftError, match="optim.name.*sgd.*adamw"):
        build_optimizer(_params(0), cfg)
