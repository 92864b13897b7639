"""One run, end to end: build it, train, pick the best epoch on validation, report test at that
epoch, and write the run record.

``train(cfg)`` is the plain function behind ``rmpeft-train``; sweeps and tests call it directly.
What the examples are and how they are scored is the run's objective (:mod:`rmpeft.objectives`);
what trains is the method's handle (:mod:`rmpeft.methods`). Devices, mixed precision, gradient
accumulation and multi-process training go through Hugging Face Accelerate (``accelerate launch``
with DDP, FSDP or DeepSpeed configs).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import DistributedType
from omegaconf import DictConfig
from tqdm.auto import tqdm

from rmpeft import resume
from rmpeft.analysis.distance import l2_distance, snapshot
from rmpeft.analysis.lr_measure import auto_lr, with_lr
from rmpeft.analysis.sharpness import measure_run
from rmpeft.deltas.export import keep_run_delta
from rmpeft.errors import unknown_choice
from rmpeft.evaluation import evaluate, validation_loss
from rmpeft.identity import config_value
from rmpeft.lifecycle import RecordedRun, fill_sizes
from rmpeft.loggers import RunLogger
from rmpeft.loss_scaling import OverflowBudget
from rmpeft.lr_auto.settings import is_auto
from rmpeft.optim import build_optimizer, build_scheduler
from rmpeft.records import RunRecord
from rmpeft.run import (
    Run,
    backward_micro_batch,
    batch_loss,
    build_run,
    total_steps,
    train_loader,
)
from rmpeft.run_stats import Timer, examples_in, peak_memory
from rmpeft.validation import EPOCH_SELECTIONS

log = logging.getLogger(__name__)


# Runs whose optimizer state lives in shards: not resumed (rmpeft/resume.py).
_SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


class Diverged(Exception):
    """The training loss became NaN/inf or exceeded ``trainer.divergence_loss``."""


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one config end to end and return its record (also written to ``<run_dir>/record.json``).

    A run whose record is already finished (or diverged) is skipped unless ``force=true``; a forced
    rerun replaces the old result only with a new finished one (or, over a diverged one, with any new
    result); a run that raises is recorded as failed and the exception propagates; a run that another
    live process holds stops with one line (:class:`rmpeft.lifecycle.RecordedRun`).
    """
    recorded = RecordedRun(cfg, logged=True)
    if recorded.done is not None:
        return recorded.done
    with recorded as rec:
        run = build_run(recorded.cfg, recorded.accelerator)
        fill_sizes(rec, run)
        if recorded.is_main:
            log.info("%s: %d / %d trainable parameters (%.4f%%) -> %s", run.cfg.method.name, rec.trainable_params,
                     run.total_params, 100 * rec.trainable_share, rec.run_dir)
        timer = Timer()
        if run.trains:
            train_and_test(run, recorded, timer)
        else:
            recorded.save()
            evaluate_only(run, rec, timer)
        rec.method_state = run.handle.state_for_record()
        timer.fill(rec)
        rec.peak_mem_bytes = peak_memory(run.device)
        rec.max_batch_tokens = getattr(run.objective, "max_batch_tokens", 0) or None
    return recorded.result


def train_and_test(run: Run, recorded: RecordedRun, timer: Timer) -> None:
    """Train, then (unless diverged) measure and test at the best epoch and keep the delta."""
    cfg, rec = run.cfg, recorded.record
    if is_auto(cfg.optim.lr):   # predicted from a few batches before any update (docs/lr-prediction.md)
        rec.lr_auto = auto_lr(run)
        run.cfg = with_lr(cfg, rec.lr_auto["lr"])
    initial = snapshot(run.handle.trainable_parameters())
    if cfg.analysis.hessian:
        rec.hessian = {"before": measure_run(run)}
    recorded.save()
    try:
        final = fit(run, rec, recorded.logger, recorded.save, timer)
    except Diverged as e:
        rec.status, rec.error = "diverged", str(e)
        return
    rec.distance_from_init = l2_distance(initial, final)
    if cfg.analysis.hessian:
        rec.hessian = {**(rec.hessian or {}), "after": measure_run(run)}
    tick = time.perf_counter()
    rec.test_metric = evaluate(run, run.splits["test"], desc="test")
    timer.eval_s += time.perf_counter() - tick
    timer.eval_examples += len(run.splits["test"])
    rec.status = "finished"
    if run.accelerator.is_main_process:
        rec.delta = keep_run_delta(run, rec)   # <run_dir>/delta, per trainer.save_delta


def evaluate_only(run: Run, rec: RunRecord, timer: Timer) -> None:
    """A run whose method trains nothing (zero-shot): validation and test metrics of the model as
    loaded; no epochs, no optimizer step, no delta."""
    run.handle.model.to(run.device)   # nothing trains: no DDP/FSDP wrapping, each process holds the model
    tick = time.perf_counter()
    rec.val_metric = (evaluate(run, run.splits["validation"], desc="validation")
                      if run.splits["validation"] else math.nan)
    rec.test_metric = evaluate(run, run.splits["test"], desc="test")
    timer.eval_s += time.perf_counter() - tick
    timer.eval_examples += len(run.splits["validation"]) + len(run.splits["test"])
    rec.status = "finished"


def better_epoch(select_by: str, val: float, val_loss: float, best_val: float, best_loss: float) -> bool:
    """Whether this epoch replaces the best so far under ``trainer.select_epoch_by``: the highest
    validation metric, the lowest validation loss, or always (``last``). Ties keep the earlier epoch."""
    if select_by == "val_metric":
        return val > best_val
    if select_by == "val_loss":
        return val_loss < best_loss
    if select_by == "last":
        return True
    raise unknown_choice("trainer.select_epoch_by", select_by, EPOCH_SELECTIONS)


def _finite_gradients(params: list[torch.Tensor]) -> bool:
    """Whether every gradient entry of ``params`` is finite (what a loss scaler checks for overflow)."""
    grads = [p.grad for p in params if p.grad is not None]
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True


def fit(run: Run, rec: RunRecord, logger: RunLogger, save: Callable[[], None],
        timer: Timer | None = None) -> list[torch.Tensor]:
    """Train for ``trainer.epochs`` epochs, validating after each; fill ``rec`` as it goes.

    Leaves the trainable parameters at the epoch chosen by ``trainer.select_epoch_by`` and returns (CPU copies of) their
    final values. Raises :class:`Diverged`. ``timer`` adds up training and evaluation time.
    """
    timer = timer or Timer()
    cfg, acc = run.cfg, run.accelerator
    # The model is prepared (DDP/FSDP-wrapped) before the optimizer is built from its parameters, as
    # FSDP requires.
    model = acc.prepare(run.handle.model)
    run.handle.model = model
    opt = build_optimizer(run.handle.trainable_parameters(), cfg.optim)
    opt, sched = acc.prepare(opt, build_scheduler(opt, cfg.optim, total_steps(cfg, len(run.splits["train"]))))
    params = run.handle.trainable_parameters()
    best_val, best_loss, best_state = -math.inf, math.inf, None
    select_by = str(config_value(cfg, "trainer.select_epoch_by"))
    if not run.splits["validation"] and select_by != "last":
        # Nothing to choose an epoch by: the last one is tested (never silently the first).
        log.warning("no validation examples: testing the last epoch (trainer.select_epoch_by=last)")
        select_by = "last"
    # trainer.nonfinite_steps: `stop` ends the run at the first non-finite loss; `skip` skips such steps
    # as fp16 dynamic loss scaling does and stops only where DeepSpeed would (rmpeft/loss_scaling.py).
    overflows = OverflowBudget() if config_value(cfg, "trainer.nonfinite_steps") == "skip" else None
    step, first_epoch = 0, 1
    resumable = (bool(config_value(cfg, "trainer.resume")) and acc.distributed_type not in _SHARDED
                 and rec.run_dir is not None)
    state = resume.load(rec.run_dir, rec.identity_hash) if resumable else None
    if state is not None:   # an interrupted attempt of this run: continue after its last completed epoch
        with torch.no_grad():
            for p, v in zip(params, state.params):
                p.copy_(v.to(p.device))
        opt.load_state_dict(state.optimizer)
        sched.load_state_dict(state.scheduler)
        run.handle.load_training_state(state.method)
        if overflows is not None and state.overflow_budget:
            overflows.__dict__.update(state.overflow_budget)
        resume.set_rng_states(state.rng)
        step, first_epoch, rec.resumed_from_epoch = state.step, state.epoch + 1, state.epoch
        best_val, best_loss, rec.best_epoch = state.best["val"], state.best["loss"], state.best["epoch"]
        best_state, rec.epochs, rec.skipped_steps = state.best["state"], list(state.epochs), state.skipped_steps
        timer.__dict__.update(state.timer)
        if acc.is_main_process:
            log.info("resuming %s after epoch %d of %d", rec.run_dir, state.epoch, cfg.trainer.epochs)
    for epoch in range(first_epoch, int(cfg.trainer.epochs) + 1):
        model.train()
        loader = acc.prepare(train_loader(run, epoch))
        losses: list[float] = []
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.trainer.epochs}", leave=False,
                   disable=not (cfg.trainer.progress and acc.is_main_process))
        tick = time.perf_counter()
        for batch in bar:
            timer.train_examples += examples_in(batch)
            with acc.accumulate(model):
                # Forward and backward, in parts of at most trainer.train_max_tokens tokens. Every process
                # runs backward, so that a non-finite loss on one reaches all of them through the
                # gradient all-reduce and every process skips the same steps.
                value = backward_micro_batch(run, batch, batch_loss)
                if overflows is None and (not math.isfinite(value) or value > float(cfg.trainer.divergence_loss)):
                    raise Diverged(f"train loss {value} at epoch {epoch}, step {step}")
                if math.isfinite(value):
                    losses.append(value)
                overflow = acc.sync_gradients and overflows is not None and not _finite_gradients(params)
                if acc.sync_gradients and cfg.optim.max_grad_norm and not overflow:
                    acc.clip_grad_norm_(params, float(cfg.optim.max_grad_norm))
                if not overflow:
                    opt.step()
                if acc.sync_gradients:   # one schedule step per optimizer step (see make_accelerator)
                    if overflows is not None:
                        stop = overflows.step(overflow)
                        rec.skipped_steps = overflows.skipped
                        if stop:
                            raise Diverged(f"{overflows.skipped} non-finite steps, the last at epoch {epoch}, step "
                                           f"{step}: fp16 loss scaling would be at its minimum")
                    if not overflow:   # a skipped step moves neither the weights nor the schedule
                        sched.step()
                    step += 1
                    run.handle.on_optimizer_step(step)
                opt.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{value:.4f}")
            if cfg.trainer.max_steps and step >= int(cfg.trainer.max_steps):
                break
        tock = time.perf_counter()
        timer.train_s += tock - tick
        train_loss = sum(losses) / max(len(losses), 1)
        val = (evaluate(run, run.splits["validation"], desc="validation") if run.splits["validation"]
               else math.nan)
        val_loss = validation_loss(run) if run.splits["validation"] else math.nan
        timer.eval_s += time.perf_counter() - tock
        timer.eval_examples += len(run.splits["validation"])
        rec.epochs.append({"epoch": epoch, "train_loss": train_loss, "val_metric": val, "val_loss": val_loss})
        logger.log_epoch(epoch, train_loss, val)
        if acc.is_main_process:
            log.info("epoch %d: train_loss=%.4f val_%s=%.4f val_loss=%.4f", epoch, train_loss, cfg.task.metric,
                     val, val_loss)
        if best_state is None or better_epoch(select_by, val, val_loss, best_val, best_loss):
            best_val, best_loss, rec.best_epoch = val, val_loss, epoch
            best_state = snapshot(params)
        timer.fill(rec)
        save()
        if resumable and acc.is_main_process and epoch < int(cfg.trainer.epochs):
            resume.save(rec.run_dir, resume.ResumeState(
                identity_hash=rec.identity_hash, epoch=epoch, step=step, params=snapshot(params),
                optimizer=opt.state_dict(), scheduler=sched.state_dict(), method=run.handle.training_state(),
                rng=resume.rng_states(), best={"val": best_val, "loss": best_loss, "epoch": rec.best_epoch,
                                               "state": best_state},
                epochs=list(rec.epochs), timer=dict(timer.__dict__), skipped_steps=rec.skipped_steps,
                overflow_budget=dict(overflows.__dict__) if overflows is not None else None, wandb_id=rec.wandb_id))
        if cfg.trainer.max_steps and step >= int(cfg.trainer.max_steps):
            break
    final = snapshot(params)
    with torch.no_grad():
        for p, b in zip(params, best_state or []):
            p.copy_(b.to(p.device))
    rec.val_metric = best_val
    return final
