"""L2 distance between initial and current trainable parameters."""

from __future__ import annotations

import math

import pytest
import torch

from rmpeft.analysis.distance import l2_distance, snapshot


def test_untrained_parameters_are_at_distance_zero():
    net = torch.nn.Linear(7, 3)
    params = list(net.parameters())
    assert l2_distance(snapshot(params), params) == 0.0


def test_distance_is_the_norm_of_the_update_over_all_tensors():
    net = torch.nn.Linear(4, 2)
    params = list(net.parameters())
    init = snapshot(params)
    with torch.no_grad():
        params[0][0, 0] += 3.0
        params[1][1] -= 4.0
    assert l2_distance(init, params) == pytest.approx(5.0, abs=1e-6)


def test_distance_after_an_optimizer_step_matches_the_step():
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 1)
    params = list(net.parameters())
    init = snapshot(params)
    loss = net(torch.randn(8, 5)).pow(2).mean()
    loss.backward()
    grad_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params))
    torch.optim.SGD(params, lr=0.1).step()
    assert l2_distance(init, params) == pytest.approx(0.1 * grad_norm, rel=1e-5)


def test_snapshot_is_independent_of_later_updates():
    p = torch.nn.Parameter(torch.zeros(3))
    init = snapshot([p])
    with torch.no_grad():
        p.add_(1.0)
    assert torch.equal(init[0], torch.zeros(3))
    assert l2_distance(init, [p]) == pytest.approx(math.sqrt(3.0))


def test_mismatched_lists_are_rejected():
    with pytest.raises(ValueError, match="2 initial tensors but 1 current"):
        l2_distance([torch.zeros(2), torch.zeros(2)], [torch.zeros(2)])
    with pytest.raises(ValueError, match="shape"):
        l2_distance([torch.zeros(2)], [torch.zeros(3)])
