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
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

import torch
from accelerate.utils import DistributedType
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rmpeft import records, resume
from rmpeft.analysis.distance import l2_distance, snapshot
from rmpeft.analysis.sharpness import measure_run
from rmpeft.data import Example
from rmpeft.deltas.export import keep_run_delta
from rmpeft.errors import RmpeftError, unknown_choice
from rmpeft.loggers import RunLogger, build_logger
from rmpeft.loss_scaling import OverflowBudget
from rmpeft.optim import build_optimizer, build_scheduler
from rmpeft.records import RunRecord
from rmpeft.resolve import resolve_run_config
from rmpeft.run_folder import RunLock
from rmpeft.run_stats import Heartbeat, Timer, examples_in, peak_memory
from rmpeft.run import (Run, backward_micro_batch, batch_loss, build_run, check_config, make_accelerator,
                        total_steps, train_loader)
from rmpeft.validation import EPOCH_SELECTIONS

log = logging.getLogger(__name__)


# Runs whose optimizer state lives in shards: not resumed (rmpeft/resume.py).
_SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


class Diverged(Exception):
    """The training loss became NaN/inf or exceeded ``trainer.divergence_loss``."""


@torch.no_grad()
def evaluate(run: Run, examples: list[Example], desc: str = "eval") -> float:
    """The task metric (accuracy or F1, in [0, 1]) on ``examples``, sharded over processes."""
    acc = run.accelerator
    model = run.model
    was_training = model.training
    model.eval()
    shard = examples[acc.process_index:: acc.num_processes]
    size = int(run.cfg.trainer.eval_batch_size)
    scores: list[float] = []
    bar = tqdm(range(0, len(shard), size), desc=desc, leave=False,
               disable=not (run.cfg.trainer.progress and acc.is_main_process))
    for start in bar:
        with acc.autocast():
            scores += run.objective.scores(model, shard[start: start + size], run.device)
    gathered = acc.gather_for_metrics(scores, use_gather_object=True) if acc.num_processes > 1 else scores
    if was_training:
        model.train()
    return run.objective.aggregate(gathered)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")




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


@torch.no_grad()
def validation_loss(run: Run) -> float:
    """The training objective on the validation split (mean over examples), sharded over processes."""
    acc, model = run.accelerator, run.model
    was_training = model.training
    model.eval()
    shard = run.splits["validation"][acc.process_index:: acc.num_processes]
    with acc.autocast():
        mean = run.objective.mean_loss(model, shard, int(run.cfg.trainer.eval_batch_size), run.device) if shard else 0.0
    parts = [(mean * len(shard), len(shard))]
    if acc.num_processes > 1:
        parts = acc.gather_for_metrics(parts, use_gather_object=True)
    if was_training:
        model.train()
    return sum(t for t, _ in parts) / max(sum(n for _, n in parts), 1)


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
    select_by = str(cfg.trainer.get("select_epoch_by", "val_metric"))
    if not run.splits["validation"] and select_by != "last":
        # Nothing to choose an epoch by: the last one is tested (never silently the first).
        log.warning("no validation examples: testing the last epoch (trainer.select_epoch_by=last)")
        select_by = "last"
    # trainer.nonfinite_steps: `stop` ends the run at the first non-finite loss; `skip` skips such steps
    # as fp16 dynamic loss scaling does and stops only where DeepSpeed would (rmpeft/loss_scaling.py).
    overflows = OverflowBudget() if cfg.trainer.get("nonfinite_steps", "stop") == "skip" else None
    step, first_epoch = 0, 1
    resumable = (bool(cfg.trainer.get("resume", True)) and acc.distributed_type not in _SHARDED
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


def _evaluate_only(run: Run, rec: RunRecord, timer: Timer) -> None:
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


def _finish(run: Run, rec: RunRecord, logger: RunLogger, save: Callable[[], None]) -> None:
    """Train, then (unless diverged) measure and test at the best epoch; fills ``rec``. A method
    that trains nothing is only evaluated."""
    timer = Timer()
    if not run.trains:
        save()
        _evaluate_only(run, rec, timer)
    else:
        _train_and_test(run, rec, logger, save, timer)
    rec.method_state = run.handle.state_for_record()
    timer.fill(rec)
    rec.peak_mem_bytes = peak_memory(run.device)
    rec.max_batch_tokens = getattr(run.objective, "max_batch_tokens", 0) or None


def _train_and_test(run: Run, rec: RunRecord, logger: RunLogger, save: Callable[[], None], timer: Timer) -> None:
    """Train, then (unless diverged) measure and test at the best epoch."""
    cfg = run.cfg
    initial = snapshot(run.handle.trainable_parameters())
    if cfg.analysis.hessian:
        rec.hessian = {"before": measure_run(run)}
    save()
    try:
        final = fit(run, rec, logger, save, timer)
    except Diverged as e:
        rec.status, rec.error = "diverged", str(e)
    else:
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


def _build_and_finish(cfg: DictConfig, accelerator: Any, rec: RunRecord, logger: RunLogger,
                      save: Callable[[], None]) -> None:
    """Build the run, then train and test it (or only evaluate it); fills ``rec``."""
    run = build_run(cfg, accelerator)
    rec.total_params, rec.trainable_params = run.total_params, run.handle.num_trainable()
    rec.trainable_share = rec.trainable_params / run.total_params
    rec.split_sizes = {k: len(v) for k, v in run.splits.items()}
    if accelerator.is_main_process:
        log.info("%s: %d / %d trainable parameters (%.4f%%) -> %s", cfg.method.name, rec.trainable_params,
                 run.total_params, 100 * rec.trainable_share, rec.run_dir)
    _finish(run, rec, logger, save)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one config end to end and return its record (also written to ``<run_dir>/record.json``).

    A run whose record is already finished (or diverged) is skipped unless ``force=true``; a forced
    rerun writes beside the old result and replaces it only with a new finished one (or, over a
    diverged one, with any new result). A launch of a run that another live process holds stops with
    one line (:class:`rmpeft.run_folder.RunLock`). A run that raises is recorded as failed (with the
    error) and the exception propagates.
    """
    check_config(cfg)
    cfg = resolve_run_config(cfg)   # `auto` fields and local data as this machine resolves them
    folder = records.run_dir(cfg)
    try:
        existing = records.read_record(folder)
        if existing is not None:
            records.check_result(existing, folder / records.RECORD_FILE)
    except RmpeftError:
        if not cfg.force:   # a corrupt record is reported, never silently replaced
            raise
        existing = None
    if existing and existing["status"] in records.DONE_STATUSES and not cfg.force:
        log.info("skipping %s: already %s (force=true reruns it)", folder, existing["status"])
        existing["skipped"] = True
        return existing
    replacing = existing["status"] if existing and existing["status"] in records.DONE_STATUSES else None

    started = time.time()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    identity = records.identity_hash(cfg)
    rec = RunRecord(status="running", config=resolved, run_dir=str(folder), identity_hash=identity,
                    metric=cfg.task.get("metric"), started_at=_now(), versions=records.versions(),
                    git_commit=records.git_commit())
    accelerator, _ = make_accelerator(cfg)
    is_main = accelerator.is_main_process
    claim = RunLock(folder, records.STALE_AFTER_S)
    if is_main:
        claim.acquire()
        if cfg.force:
            resume.discard(folder)   # a forced rerun starts afresh
    # a relaunch that will resume logs into the interrupted attempt's wandb run
    resuming = existing and (folder / resume.RESUME_FILE).exists() and existing.get("wandb_id")
    rec.wandb_id = existing["wandb_id"] if resuming else resume.new_wandb_id(identity)
    # A forced rerun of a result writes its record beside it until it has a result of its own.
    record_name = records.NEXT_RECORD_FILE if replacing else records.RECORD_FILE
    if is_main and not replacing:   # an earlier rerun's leftover attempt: this run's record is record.json
        (folder / records.NEXT_RECORD_FILE).unlink(missing_ok=True)

    writing = threading.Lock()   # the heartbeat thread writes the record too

    def save() -> None:
        if is_main:
            with writing:
                rec.wall_s = round(time.time() - started, 3)
                rec.heartbeat_at = _now()
                records.write_record(folder, rec, record_name)
                claim.beat()

    try:
        save()
        logger = build_logger(cfg, rec.wandb_id) if is_main else RunLogger()
        logger.log_config(resolved)
        try:
            with Heartbeat(save, records.HEARTBEAT_S):
                _build_and_finish(cfg, accelerator, rec, logger, save)
        except BaseException as e:
            rec.status, rec.error, rec.finished_at = "failed", f"{type(e).__name__}: {e}".splitlines()[0], _now()
            save()
            logger.log_summary(rec.to_dict())
            logger.finish()
            raise
        rec.finished_at = _now()
        save()
        if is_main:
            resume.discard(folder)   # the run has a result
        if is_main and replacing:
            _settle_rerun(folder, replacing, rec.status)
    finally:
        if is_main and replacing and rec.status != "running":
            records.discard_next_delta(folder)
        claim.release()
    out = records.to_json_dict(rec)
    logger.log_summary(out)
    logger.finish()
    if is_main:
        log.info("%s: status=%s best_epoch=%s val=%s test=%s", folder, rec.status, rec.best_epoch,
                 rec.val_metric, rec.test_metric)
    return out


def _settle_rerun(folder: Any, old_status: str, new_status: str) -> None:
    """After a forced rerun: its result replaces the old one when it is finished, or when the old one
    was diverged and the new one is a result too; otherwise the old result stays and the attempt's
    record is kept beside it."""
    if new_status == "finished" or (old_status == "diverged" and new_status in records.DONE_STATUSES):
        records.promote_next(folder)
    else:
        log.warning("%s: the rerun ended %s; the %s result is kept (this attempt: %s)", folder, new_status,
                    old_status, records.NEXT_RECORD_FILE)
