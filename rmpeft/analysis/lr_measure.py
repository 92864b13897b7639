"""Measuring a built run before any update, and the learning rate it predicts (``optim.lr=auto``).

:func:`auto_lr` measures the first ``optim.lr_auto.batches`` training batches (the Hessian: the first
of them), in the order training's first epoch will see them, in eval mode (no dropout), with gradients
taken by ``torch.autograd.grad``: nothing accumulates in ``.grad``, no weight moves and no global random
state is drawn, so training afterwards is exactly that of a run given the predicted LR. Masked layers
use the dense reference backend while the Hessian is measured (exact double backward, as
:func:`rmpeft.analysis.sharpness.measure_run`).
What it returns is what a record holds under ``lr_auto``: the predicted ``lr``, the estimator and its
constant, the measured quantities and the seconds spent.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any, Callable

import torch
from omegaconf import DictConfig, open_dict

from rmpeft.analysis.hessian import DoubleBackwardUnavailable, HvpFn, autograd_hvp, finite_difference_hvp
from rmpeft.analysis.lr_quantities import (
    CURVATURE_QUANTITIES,
    curvature_quantities,
    gradient_moments,
    gradient_quantities,
    preconditioner,
)
from rmpeft.lr_auto.estimators import get_estimator
from rmpeft.lr_auto.predict import predict, predict_all
from rmpeft.lr_auto.settings import LRAutoSettings
from rmpeft.errors import RmpeftError
from rmpeft.resolve import resolve_run_config
from rmpeft.run import Run, batch_loss, build_run, check_config, train_loader
from rmpeft.run_stats import examples_in
from rmpeft.scoring import Batch
from rmpeft.sparse import use_backend


def measurement_batches(run: Run, batches: int) -> list[list[Batch]]:
    """The first ``batches`` optimizer batches of training's first epoch, each as its micro-batches."""
    per_step = max(int(run.cfg.trainer.batch_size) // int(run.micro_batch_size), 1)
    micro = list(itertools.islice(train_loader(run, epoch=1), batches * per_step))
    return [micro[i: i + per_step] for i in range(0, len(micro), per_step)]


def hessian_operator(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> tuple[HvpFn, str]:
    """Exact Hessian-vector products by double backward, or central differences where autograd cannot."""
    try:
        return autograd_hvp(loss_fn, params), "autograd"
    except (DoubleBackwardUnavailable, RuntimeError):
        return finite_difference_hvp(loss_fn, params), "finite_difference"


def measure(run: Run, wanted: Iterable[str], batches: int = 2, power_iters: int = 3,
            seed: int | None = None) -> dict[str, Any]:
    """The ``wanted`` curvature quantities (:mod:`rmpeft.analysis.lr_quantities`) and always ``loss``,
    the gradient quantities, ``num_trainable``, ``batches``, ``examples`` and ``seconds`` of ``run`` at its
    current trainable values. Leaves every value, gradient and the model's train/eval mode as they were."""
    start = time.perf_counter()
    model, acc = run.model, run.accelerator
    params = run.handle.trainable_parameters()
    if params and params[0].device.type != torch.device(run.device).type:
        model.to(run.device)
        params = run.handle.trainable_parameters()
    groups = measurement_batches(run, batches)
    curvature = sorted(set(wanted) & set(CURVATURE_QUANTITIES))
    out: dict[str, Any] = {"num_trainable": int(sum(p.numel() for p in params)), "batches": len(groups),
                           "examples": int(sum(examples_in(b) for g in groups for b in g))}
    was_training = model.training
    model.eval()
    try:
        with use_backend(model, "dense") if curvature else nullcontext(0):
            losses, batch_grads = [], []
            for group in groups:
                sums = [torch.zeros_like(p) for p in params]
                for micro in group:
                    with torch.enable_grad(), acc.autocast():
                        loss = batch_loss(run, micro)
                    grads = torch.autograd.grad(loss / len(group), params, allow_unused=True)
                    for total, g in zip(sums, grads):
                        if g is not None:
                            total.add_(g.detach())
                    losses.append(float(loss.detach()))
                batch_grads.append(sums)
            mean, square = gradient_moments(batch_grads)
            precond = preconditioner(square, float(run.cfg.optim.eps))
            out["loss"] = sum(losses) / max(len(losses), 1)
            out.update(gradient_quantities(mean, precond))
            if curvature:
                def loss_fn() -> torch.Tensor:   # the first batch only: a Hessian graph's memory grows with its inputs
                    with acc.autocast():
                        return torch.stack([batch_loss(run, m) for m in groups[0]]).mean()

                hvp, out["hvp"] = hessian_operator(loss_fn, params)
                out.update(curvature_quantities(hvp, params, mean, precond, curvature, power_iters,
                                                int(run.cfg.seed if seed is None else seed)))
    finally:
        model.train(was_training)
    out["seconds"] = round(time.perf_counter() - start, 3)
    return out


def auto_lr(run: Run, also: Iterable[str] = ()) -> dict[str, Any]:
    """Measure ``run`` and predict its LR with ``optim.lr_auto.estimator``: what a record holds under
    ``lr_auto``. ``also``: further estimators whose quantities are measured too and whose predictions are
    reported under ``predictions``."""
    start = time.perf_counter()
    settings = LRAutoSettings.from_config(run.cfg.optim)
    names = list(dict.fromkeys([get_estimator(settings.estimator).name, *also]))
    wanted = {q for name in names for q in get_estimator(name).needs}
    quantities = measure(run, wanted, int(settings.batches), int(settings.power_iters))
    result: dict[str, Any] = {"estimator": settings.estimator,
                              **predict(quantities, settings.estimator, run.cfg.optim, settings.constant),
                              "quantities": quantities, "power_iters": int(settings.power_iters)}
    if len(names) > 1:
        result["predictions"] = predict_all(quantities, names, run.cfg.optim) | {settings.estimator: result["lr"]}
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def with_lr(cfg: DictConfig, lr: float) -> DictConfig:
    """A copy of ``cfg`` training at ``lr`` (what the optimizer of an ``optim.lr=auto`` run is built from)."""
    out = cfg.copy()
    with open_dict(out):
        out.optim.lr = float(lr)
    return out


def build_trained_run(cfg: DictConfig) -> Run:
    """The run of ``cfg`` built exactly as ``rmpeft-train`` builds it (config checked, ``auto`` fields and
    local data resolved), before any update; a one-line error for a method that trains nothing."""
    check_config(cfg)
    run = build_run(resolve_run_config(cfg))
    if not run.trains:
        raise RmpeftError(f"method '{cfg.method.name}' trains nothing: there is no learning rate to predict")
    return run
