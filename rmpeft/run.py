"""A built run: data, model, tokenizer, method and objective, ready to train or analyse.

:func:`build_run` turns a config into a :class:`Run` (no training); :func:`train_loader`,
:func:`batch_loss` and :func:`total_steps` are shared by the training loop (:mod:`rmpeft.trainer`)
and the analyses (:mod:`rmpeft.analysis.sharpness`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from rmpeft.cpu_allocator import keep_freed_memory
from rmpeft.data import Example
from rmpeft.errors import RmpeftError
from rmpeft.methods import MethodContext, MethodHandle, get_method
from rmpeft.models import (
    count_parameters,
    load_model_and_tokenizer,
    resolve_precision,
    torch_dtype,
)
from rmpeft.objectives import Objective, build_objective, objective_type
from rmpeft.scoring import Batch
from rmpeft.sparse import set_strategy_cache_dir
from rmpeft.validation import DEVICES, check_batching, validate

# (model, method config, context) -> handle: how build_run makes the model trainable
ApplyMethod = Callable[[torch.nn.Module, Any, MethodContext], MethodHandle]


@dataclass
class Run:
    """Everything a run is made of, built from its config by :func:`build_run`."""

    cfg: DictConfig
    accelerator: Any
    handle: MethodHandle
    tokenizer: Any
    splits: dict[str, list[Example]]
    objective: Objective
    total_params: int
    precision: str
    micro_batch_size: int
    trains: bool = True            # False: the method trains nothing (zero-shot); the run only evaluates

    @property
    def model(self) -> torch.nn.Module:
        return self.handle.model

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


def check_config(cfg: DictConfig) -> None:
    """Check every value of a composed run config (common and method fields) before anything runs;
    a bad value raises a one-line :class:`RmpeftError`."""
    validate(cfg, get_method(str(cfg.method.name)).config_fields)


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """Optimizer steps in one epoch of ``num_train`` examples (at least 1)."""
    return max(math.ceil(num_train / batch_size), 1)


def total_steps(cfg: DictConfig, num_train: int) -> int:
    """Optimizer steps of the whole run: ``trainer.epochs`` epochs, capped by ``trainer.max_steps``."""
    total = steps_per_epoch(num_train, int(cfg.trainer.batch_size)) * int(cfg.trainer.epochs)
    if cfg.trainer.max_steps:
        total = min(total, int(cfg.trainer.max_steps))
    return total


def make_accelerator(cfg: DictConfig) -> tuple[Any, str]:
    """The Accelerate ``Accelerator`` of ``trainer.device`` / ``trainer.precision`` / ``trainer.grad_accum``,
    and the resolved precision (``fp32``, ``bf16`` or ``fp16``)."""
    from accelerate import Accelerator

    device = cfg.trainer.device
    if device not in DEVICES:
        raise RmpeftError(f"unknown trainer.device '{device}'; valid choices: {', '.join(DEVICES)}")
    use_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    probe = torch.device("cpu" if use_cpu else "cuda")
    precision = resolve_precision(cfg.trainer.precision, probe)
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    if use_cpu and mixed != "no":
        raise RmpeftError(f"trainer.precision={precision} needs a GPU; on CPU use fp32")
    if use_cpu:
        keep_freed_memory()  # steps reuse their memory instead of faulting it in again (rmpeft/cpu_allocator.py)
    # The trainer steps the schedule once per optimizer step (whatever the number of processes), so
    # its length is the run's optimizer steps; Accelerate's default would step it once per process.
    acc = Accelerator(cpu=use_cpu, mixed_precision=mixed, gradient_accumulation_steps=int(cfg.trainer.grad_accum),
                      step_scheduler_with_optimizer=False)
    return acc, precision


def build_run(cfg: DictConfig, accelerator: Any = None, apply_method: ApplyMethod | None = None) -> Run:
    """Load data, model and tokenizer, apply the method and pick the objective (no training).

    ``apply_method(model, cfg.method, ctx)`` replaces the method's own ``apply`` (e.g. to apply a
    trained delta instead of a fresh initialisation)."""
    from accelerate.utils import set_seed

    if accelerator is None:
        accelerator, precision = make_accelerator(cfg)
    else:
        precision = resolve_precision(cfg.trainer.precision, accelerator.device)
    set_seed(int(cfg.seed))
    splits = objective_type(cfg.task).load_splits(cfg.task, int(cfg.data_seed))
    if not splits["train"]:
        raise RmpeftError(f"task '{cfg.task.name}' has no training examples")

    # Frozen weights may live in half precision; trainable parameters are kept in fp32 and the
    # forward runs under autocast. Methods that train the pretrained weights keep fp32 master weights.
    method = get_method(cfg.method.name)
    load_dtype = torch.float32 if precision == "fp32" or method.keeps_fp32_weights else torch_dtype(precision)
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.cache_dir, dtype=load_dtype, task_cfg=cfg.task)
    total_params = count_parameters(model)

    world = accelerator.num_processes
    check_batching(cfg, world)
    micro = int(cfg.trainer.batch_size) // (int(cfg.trainer.grad_accum) * world)
    ctx = MethodContext(seed=int(cfg.seed), total_params=total_params, total_steps=total_steps(cfg, len(splits["train"])),
                        model_cfg=cfg.model, tokenizer=tokenizer, device=accelerator.device)
    set_strategy_cache_dir(cfg.cache_dir)     # the sparse engine's per-shape strategy decisions live there
    handle = (apply_method or method.apply)(model, cfg.method, ctx)
    for p in handle.trainable_parameters():
        if p.dtype != torch.float32:
            p.data = p.data.float()
    if method.trains and handle.num_trainable() == 0:
        raise RmpeftError(f"method '{cfg.method.name}' left no trainable parameters")
    objective = build_objective(cfg.task, tokenizer, cfg.trainer, accelerator.unwrap_model)
    return Run(cfg, accelerator, handle, tokenizer, splits, objective, total_params, precision, micro, method.trains)


def batch_loss(run: Run, batch: Batch) -> torch.Tensor:
    """Training loss of one micro-batch (the task objective's loss)."""
    return run.objective.loss(run.model, batch.to(run.device))


def train_loader(run: Run, epoch: int, shuffle: bool = True) -> DataLoader:
    """Micro-batches of training examples; the order follows the run seed and the epoch."""
    gen = torch.Generator().manual_seed(int(run.cfg.seed) * 1000 + epoch)
    return DataLoader(run.splits["train"], batch_size=run.micro_batch_size, shuffle=shuffle, generator=gen,
                      collate_fn=run.objective.collate)
