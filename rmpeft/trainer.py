"""One run, end to end: load model and data, apply the method, train, pick the best epoch on validation,
report test at that epoch, and write the run record.

``train(cfg)`` is the plain function behind ``rmpeft-train``; sweeps, tests and analyses call it (or
``build_run``) directly. Devices, mixed precision, gradient accumulation and multi-process training
go through Hugging Face Accelerate (``accelerate launch`` with DDP, FSDP or DeepSpeed configs).
"""

from __future__ import annotations

import logging
import math
import resource
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rmpeft import data as tasks
from rmpeft import metrics, records, scoring
from rmpeft.analysis.distance import l2_distance
from rmpeft.data import Example
from rmpeft.errors import RmpeftError
from rmpeft.loggers import RunLogger, build_logger
from rmpeft.methods import MethodContext, MethodHandle, get_method
from rmpeft.models import (
    count_parameters,
    load_model_and_tokenizer,
    resolve_precision,
    torch_dtype,
)

log = logging.getLogger(__name__)

GENERATION = "generation"


class Diverged(Exception):
    """The training loss became NaN/inf or exceeded ``trainer.divergence_loss``."""


@dataclass
class Run:
    """Everything a run is made of, built from its config by :func:`build_run`."""

    cfg: DictConfig
    accelerator: Any
    handle: MethodHandle
    tokenizer: Any
    splits: dict[str, list[Example]]
    total_params: int
    precision: str
    micro_batch_size: int

    @property
    def model(self) -> torch.nn.Module:
        return self.handle.model

    @property
    def is_generation(self) -> bool:
        return self.cfg.task.kind == GENERATION

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    return max(math.ceil(num_train / batch_size), 1)


def _accelerator(cfg: DictConfig):
    from accelerate import Accelerator

    device = cfg.trainer.device
    if device not in ("auto", "cpu", "cuda"):
        raise RmpeftError(f"unknown trainer.device '{device}'; valid choices: auto, cpu, cuda")
    use_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    probe = torch.device("cpu" if use_cpu else "cuda")
    precision = resolve_precision(cfg.trainer.precision, probe)
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    if use_cpu and mixed != "no":
        raise RmpeftError(f"trainer.precision={precision} needs a GPU; on CPU use fp32")
    acc = Accelerator(cpu=use_cpu, mixed_precision=mixed, gradient_accumulation_steps=int(cfg.trainer.grad_accum))
    return acc, precision


def build_run(cfg: DictConfig, accelerator=None) -> Run:
    """Load data, model and tokenizer, and apply the method (no training)."""
    from accelerate.utils import set_seed

    if accelerator is None:
        accelerator, precision = _accelerator(cfg)
    else:
        precision = resolve_precision(cfg.trainer.precision, accelerator.device)
    set_seed(int(cfg.seed))
    splits = tasks.load_splits(cfg.task, int(cfg.data_seed))
    if not splits["train"]:
        raise RmpeftError(f"task '{cfg.task.name}' has no training examples")

    # Frozen weights may live in half precision; trainable parameters are kept in fp32 and the
    # forward runs under autocast. Full fine-tuning keeps fp32 master weights.
    load_dtype = torch.float32 if precision == "fp32" or cfg.method.name == "ft" else torch_dtype(precision)
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.cache_dir, dtype=load_dtype)
    total_params = count_parameters(model)

    world = accelerator.num_processes
    batch, accum = int(cfg.trainer.batch_size), int(cfg.trainer.grad_accum)
    if batch % (accum * world):
        raise RmpeftError(f"trainer.batch_size={batch} is not divisible by trainer.grad_accum={accum} x {world} processes")
    micro = batch // (accum * world)
    total_steps = steps_per_epoch(len(splits["train"]), batch) * int(cfg.trainer.epochs)
    if cfg.trainer.max_steps:
        total_steps = min(total_steps, int(cfg.trainer.max_steps))
    ctx = MethodContext(seed=int(cfg.seed), total_params=total_params, total_steps=total_steps,
                        model_cfg=cfg.model, tokenizer=tokenizer, device=accelerator.device)
    handle = get_method(cfg.method.name).apply(model, cfg.method, ctx)
    for p in handle.trainable_parameters():
        if p.dtype != torch.float32:
            p.data = p.data.float()
    if handle.num_trainable() == 0:
        raise RmpeftError(f"method '{cfg.method.name}' left no trainable parameters")
    return Run(cfg, accelerator, handle, tokenizer, splits, total_params, precision, micro)


def batch_loss(run: Run, batch: scoring.Batch) -> torch.Tensor:
    """Training loss of one micro-batch (classification CE over candidates, or LM loss on answers)."""
    batch = batch.to(run.device)
    if run.is_generation:
        return scoring.lm_loss(run.model, batch)
    return scoring.classification_loss(run.model, batch)


def train_loader(run: Run, epoch: int, shuffle: bool = True) -> DataLoader:
    """Micro-batches of training examples; the order follows the run seed and the epoch."""
    gen = torch.Generator().manual_seed(int(run.cfg.seed) * 1000 + epoch)
    mode = "gold" if run.is_generation else "all"
    return DataLoader(run.splits["train"], batch_size=run.micro_batch_size, shuffle=shuffle, generator=gen,
                      collate_fn=lambda exs: scoring.collate(exs, run.tokenizer, int(run.cfg.trainer.max_length), mode))


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
        chunk = shard[start: start + size]
        with acc.autocast():
            if run.is_generation:
                preds = scoring.generate_answers(acc.unwrap_model(model), run.tokenizer, [e.prompt for e in chunk],
                                                 int(run.cfg.trainer.max_length), int(run.cfg.trainer.max_new_tokens),
                                                 run.device)
                scores += [metrics.squad_f1(p, e.answers or e.candidates) for p, e in zip(preds, chunk)]
            else:
                batch = scoring.collate(chunk, run.tokenizer, int(run.cfg.trainer.max_length)).to(run.device)
                preds = scoring.predict_choices(model, batch)
                # ReCoRD: an entity can appear under several names, all of them correct (meta["gold_set"]).
                scores += [float(metrics.is_correct(p, e.meta.get("gold_set", e.gold))) for p, e in zip(preds, chunk)]
    gathered = acc.gather_for_metrics(scores, use_gather_object=True) if acc.num_processes > 1 else scores
    if was_training:
        model.train()
    return float(sum(gathered) / max(len(gathered), 1))


def hessian_loss_fn(run: Run) -> Callable[[], torch.Tensor]:
    """Mean training loss over a fixed set of training batches (for sharpness), in eval mode."""
    loader = train_loader(run, epoch=0, shuffle=False)
    batches = []
    for i, b in enumerate(loader):
        if i >= int(run.cfg.analysis.hessian_batches):
            break
        batches.append(b)

    def loss_fn() -> torch.Tensor:
        run.model.eval()
        return torch.stack([batch_loss(run, b) for b in batches]).mean()

    return loss_fn


def sharpness(run: Run) -> dict[str, Any]:
    """Largest Hessian eigenvalue of the training loss w.r.t. the trainable parameters (see rmpeft.analysis)."""
    from rmpeft.analysis.sharpness import measure_run

    return measure_run(run)


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _optimizer(run: Run) -> torch.optim.Optimizer:
    o = run.cfg.optim
    if o.name != "adamw":
        raise RmpeftError(f"unknown optim.name '{o.name}'; valid choices: adamw")
    if not (float(o.lr) > 0):
        raise RmpeftError(f"optim.lr must be positive, got {o.lr}")
    return torch.optim.AdamW(run.handle.trainable_parameters(), lr=float(o.lr), betas=tuple(o.betas),
                             eps=float(o.eps), weight_decay=float(o.weight_decay))


def _scheduler(opt: torch.optim.Optimizer, cfg: DictConfig, total_steps: int):
    from transformers import (
        get_constant_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    kind, warm = cfg.optim.scheduler, int(cfg.optim.warmup_steps)
    if kind == "constant":
        return get_constant_schedule_with_warmup(opt, warm)
    if kind == "linear":
        return get_linear_schedule_with_warmup(opt, warm, total_steps)
    raise RmpeftError(f"unknown optim.scheduler '{kind}'; valid choices: constant, linear")


def fit(run: Run, record: dict[str, Any], logger: RunLogger, save: Callable[[], None]) -> None:
    """Train for ``trainer.epochs`` epochs, validating after each; fill ``record`` as it goes.

    Leaves the trainable parameters at the best validation epoch. Raises :class:`Diverged`.
    """
    cfg, acc = run.cfg, run.accelerator
    # The model is prepared (DDP/FSDP-wrapped) before the optimizer is built from its parameters, as
    # FSDP requires.
    model = acc.prepare(run.handle.model)
    run.handle.model = model
    opt = _optimizer(run)
    total = steps_per_epoch(len(run.splits["train"]), int(cfg.trainer.batch_size)) * int(cfg.trainer.epochs)
    if cfg.trainer.max_steps:
        total = min(total, int(cfg.trainer.max_steps))
    opt, sched = acc.prepare(opt, _scheduler(opt, cfg, total))
    params = run.handle.trainable_parameters()
    best_val, best_state = -math.inf, None
    step = 0
    for epoch in range(1, int(cfg.trainer.epochs) + 1):
        model.train()
        loader = acc.prepare(train_loader(run, epoch))
        losses: list[float] = []
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.trainer.epochs}", leave=False,
                   disable=not (cfg.trainer.progress and acc.is_main_process))
        for batch in bar:
            with acc.accumulate(model):
                with acc.autocast():
                    loss = batch_loss(run, batch)
                    reg = run.handle.regularization_loss()  # e.g. AdaLoRA's orthogonality penalty
                    if reg is not None:
                        loss = loss + reg
                value = float(loss.detach())
                if not math.isfinite(value) or value > float(cfg.trainer.divergence_loss):
                    raise Diverged(f"train loss {value} at epoch {epoch}, step {step}")
                losses.append(value)
                acc.backward(loss)
                if acc.sync_gradients and cfg.optim.max_grad_norm:
                    acc.clip_grad_norm_(params, float(cfg.optim.max_grad_norm))
                opt.step()
                sched.step()
                if acc.sync_gradients:
                    step += 1
                    run.handle.on_optimizer_step(step)
                opt.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{value:.4f}")
            if cfg.trainer.max_steps and step >= int(cfg.trainer.max_steps):
                break
        train_loss = sum(losses) / max(len(losses), 1)
        val = evaluate(run, run.splits["validation"], desc="validation") if run.splits["validation"] else math.nan
        record["epochs"].append({"epoch": epoch, "train_loss": train_loss, "val_metric": val})
        logger.log_epoch(epoch, train_loss, val)
        if acc.is_main_process:
            log.info("epoch %d: train_loss=%.4f val_%s=%.4f", epoch, train_loss, cfg.task.metric, val)
        if best_state is None or val > best_val:  # ties keep the earlier epoch
            best_val, record["best_epoch"] = val, epoch
            best_state = [p.detach().to("cpu", copy=True) for p in params]
        save()
        if cfg.trainer.max_steps and step >= int(cfg.trainer.max_steps):
            break
    record["final_state"] = [p.detach().to("cpu", copy=True) for p in params]
    with torch.no_grad():
        for p, b in zip(params, best_state or []):
            p.copy_(b.to(p.device))
    record["val_metric"] = best_val


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one config end to end and return its record (also written to ``<run_dir>/record.json``).

    A run whose record is already finished (or diverged) is skipped unless ``force=true``.
    A run that raises is recorded as failed (with the error) and the exception propagates.
    """
    folder = records.run_dir(cfg)
    existing = records.read_record(folder)
    if existing and existing["status"] in records.DONE_STATUSES and not cfg.force:
        log.info("skipping %s: already %s (force=true reruns it)", folder, existing["status"])
        existing["skipped"] = True
        return existing

    started = time.time()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    record: dict[str, Any] = {
        "status": "running", "error": None, "config": resolved, "run_dir": str(folder),
        "metric": cfg.task.get("metric"), "total_params": None, "trainable_params": None,
        "trainable_share": None, "epochs": [], "best_epoch": None, "val_metric": None, "test_metric": None,
        "distance_from_init": None, "wall_s": None, "peak_mem_bytes": None, "started_at": _now(),
        "finished_at": None, "versions": records.versions(), "git_commit": records.git_commit(),
    }
    accelerator, _ = _accelerator(cfg)
    is_main = accelerator.is_main_process

    def save() -> None:
        if is_main:
            record["wall_s"] = round(time.time() - started, 3)
            records.write_record(folder, {k: v for k, v in record.items() if k != "final_state"})

    save()
    logger = build_logger(cfg) if is_main else RunLogger()
    logger.log_config(resolved)
    try:
        run = build_run(cfg, accelerator)
        record.update(total_params=run.total_params, trainable_params=run.handle.num_trainable(),
                      trainable_share=run.handle.num_trainable() / run.total_params,
                      split_sizes={k: len(v) for k, v in run.splits.items()})
        if is_main:
            log.info("%s: %d / %d trainable parameters (%.4f%%) -> %s", cfg.method.name, record["trainable_params"],
                     run.total_params, 100 * record["trainable_share"], folder)
        initial = [p.detach().to("cpu", copy=True) for p in run.handle.trainable_parameters()]
        if cfg.analysis.hessian:
            record["hessian"] = {"before": sharpness(run)}
        save()
        try:
            fit(run, record, logger, save)
        except Diverged as e:
            record.update(status="diverged", error=str(e))
        final = record.pop("final_state", None)
        if final is not None:
            record["distance_from_init"] = l2_distance(initial, final)
        if record["status"] != "diverged":
            if cfg.analysis.hessian:
                record["hessian"]["after"] = sharpness(run)
            record["test_metric"] = evaluate(run, run.splits["test"], desc="test")
            record["status"] = "finished"
            if cfg.trainer.save_trainable and is_main:
                torch.save([p.detach().cpu() for p in run.handle.trainable_parameters()], folder / "trainable.pt")
        record["method_state"] = run.handle.state_for_record()
        record["peak_mem_bytes"] = _peak_memory(run.device)
    except BaseException as e:
        record.update(status="failed", error=f"{type(e).__name__}: {e}".splitlines()[0], finished_at=_now())
        save()
        logger.log_summary(record)
        logger.finish()
        raise
    record["finished_at"] = _now()
    save()
    logger.log_summary(record)
    logger.finish()
    if is_main:
        log.info("%s: status=%s best_epoch=%s val=%s test=%s", folder, record["status"], record["best_epoch"],
                 record["val_metric"], record["test_metric"])
    return record
