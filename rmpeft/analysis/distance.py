"""Distance travelled by training: the L2 distance between initial and current trainable parameters.

The paper (Fig. 4b) reads this distance as the length of the path the iterates must travel to a
minimiser; sparser masks travel further. For Random Masking the trainable tensors are the compact
vectors of trainable values, so the distance is over those entries only.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def snapshot(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Detached CPU copies of ``params`` (the initial point), so the accelerator's memory is not doubled."""
    return [p.detach().to("cpu", copy=True) for p in params]


def l2_distance(initial: Sequence[torch.Tensor], current: Sequence[torch.Tensor]) -> float:
    """sqrt(Σ_tensors ‖current − initial‖²), accumulated in float64; tensors may live on different devices."""
    initial, current = list(initial), list(current)
    if len(initial) != len(current):
        raise ValueError(f"l2_distance: {len(initial)} initial tensors but {len(current)} current tensors")
    total = 0.0
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(initial, current)):
            if a.shape != b.shape:
                raise ValueError(f"l2_distance: tensor {i} has shape {tuple(a.shape)} initially but "
                                 f"{tuple(b.shape)} now")
            diff = b.detach().to(device=a.device, dtype=torch.float64) - a.detach().to(torch.float64)
            total += float(diff.square().sum())
    return math.sqrt(total)
