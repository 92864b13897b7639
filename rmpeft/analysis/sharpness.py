"""Sharpness of a built run (:class:`rmpeft.run.Run`): the glue between a run and :func:`top_eigenvalue`.

Used by ``rmpeft-hessian`` and by the trainer for ``analysis.hessian=true``. The loss is
:func:`hessian_loss_fn` (mean training loss over the first ``analysis.hessian_batches`` batches, eval
mode) under the run's autocast, with respect to ``handle.trainable_parameters()``; iterations and
tolerance come from ``analysis.hessian_iters`` / ``analysis.hessian_tol``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable

import torch

from rmpeft.analysis.hessian import top_eigenvalue
from rmpeft.errors import unknown_choice
from rmpeft.run import Run, batch_loss, train_loader
from rmpeft.sparse import use_backend

SPARSE_BACKEND_CHOICES = ("dense", "run")


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


# Symmetry-check tolerance of the autograd products: rounding alone stays far below 1e-2 in fp32;
# half-precision autocast products carry ~1e-2 relative error of their own.
CHECK_RTOL = {"fp32": 1e-2, "bf16": 5e-2, "fp16": 5e-2}


def hessian_loss_fn(run: Run) -> Callable[[], torch.Tensor]:
    """Mean training loss over a fixed set of training batches (the first ``analysis.hessian_batches``
    of the unshuffled training set), in eval mode."""
    batches = []
    for i, b in enumerate(train_loader(run, epoch=0, shuffle=False)):
        if i >= int(run.cfg.analysis.hessian_batches):
            break
        batches.append(b)

    def loss_fn() -> torch.Tensor:
        run.model.eval()
        return torch.stack([batch_loss(run, b) for b in batches]).mean()

    return loss_fn


def measure_run(run: Run, hvp: str = "auto", seed: int | None = None, sparse_backend: str = "dense") -> dict[str, Any]:
    """Sharpness of ``run`` at its current trainable parameters.

    ``sparse_backend="dense"`` computes masked layers with the dense reference backend while measuring
    (exact double backward; one dense delta per masked matrix); ``"run"`` keeps the run's backend,
    whose products then go through ``top_eigenvalue``'s symmetry check. The model is moved to the
    run's device if it is elsewhere, and its train/eval mode is restored afterwards.
    """
    if sparse_backend not in SPARSE_BACKEND_CHOICES:
        raise unknown_choice("sparse backend for the Hessian", sparse_backend, SPARSE_BACKEND_CHOICES)
    model = run.model
    params = run.handle.trainable_parameters()
    if params and not _same_device(params[0].device, torch.device(run.device)):
        model.to(run.device)
    plain = hessian_loss_fn(run)

    def loss_fn() -> torch.Tensor:
        with run.accelerator.autocast():
            return plain()

    was_training = model.training
    cfg = run.cfg.analysis
    swap = use_backend(model, "dense") if sparse_backend == "dense" else nullcontext(0)
    try:
        with swap as switched:
            result = top_eigenvalue(loss_fn, run.handle.trainable_parameters(), iters=int(cfg.hessian_iters),
                                    tol=float(cfg.hessian_tol), seed=int(run.cfg.seed if seed is None else seed),
                                    hvp=hvp, check_rtol=CHECK_RTOL.get(str(run.precision), 1e-2))
    finally:
        model.train(was_training)
    result["sparse_backend"] = "dense" if switched else "run"
    return result
