"""The optimizer and learning-rate schedule of a run, built from the ``optim`` config group."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from rmpeft.errors import unknown_choice

OPTIMIZERS = ("adamw",)

# name -> transformers schedule factory (optimizer, warmup_steps, total_steps)
_SCHEDULES: dict[str, Callable[..., Any]] = {
    "constant": lambda opt, warm, steps: get_constant_schedule_with_warmup(opt, warm),
    "linear": get_linear_schedule_with_warmup,     # linear decay to 0 after warm-up
    "cosine": get_cosine_schedule_with_warmup,     # half a cosine from the peak to 0 after warm-up
}
SCHEDULERS = tuple(_SCHEDULES)


def build_optimizer(params: Iterable[torch.nn.Parameter], optim_cfg: Any) -> torch.optim.Optimizer:
    """AdamW over ``params`` with the config's lr, betas, eps and weight decay.

    The multi-tensor (``foreach``) implementation, torch's default on CUDA, is asked for everywhere: on
    CPU it gives the same bits as the per-tensor loop torch would pick there, at about half the time
    (an optimizer step is a large share of a full fine-tuning step on CPU). ``fused`` is faster still
    but rounds differently, so it would change the results of runs that already exist.
    """
    if optim_cfg.name not in OPTIMIZERS:
        raise unknown_choice("optim.name", optim_cfg.name, OPTIMIZERS)
    return torch.optim.AdamW(list(params), lr=float(optim_cfg.lr), betas=tuple(optim_cfg.betas),
                             eps=float(optim_cfg.eps), weight_decay=float(optim_cfg.weight_decay), foreach=True)


def build_scheduler(opt: torch.optim.Optimizer, optim_cfg: Any, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The ``optim.scheduler`` schedule with ``optim.warmup_steps`` warm-up over ``steps`` optimizer steps."""
    kind = str(optim_cfg.scheduler)
    if kind not in _SCHEDULES:
        raise unknown_choice("optim.scheduler", kind, SCHEDULERS)
    return _SCHEDULES[kind](opt, int(optim_cfg.warmup_steps), steps)
