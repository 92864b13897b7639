"""A built run: data, model, tokenizer, method and objective, ready to train or analyse.

:func:`build_run` turns a config into a :class:`Run` (no training); :func:`train_loader`,
:func:`batch_loss` and :func:`total_steps` are shared by the training loop (:mod:`rmpeft.trainer`)
and the analyses (:mod:`rmpeft.analysis.sharpness`); :func:`backward_micro_batch` is the training
loop's forward and backward.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from rmpeft.cpu_allocator import keep_freed_memory
from rmpeft.data import Example
from rmpeft.data.tasks import get_task
from rmpeft.errors import RmpeftError
from rmpeft.identity import config_value
from rmpeft.methods import MethodContext, MethodHandle, get_method
from rmpeft.models import (
    FAMILIES,
    build_model_on_meta,
    count_parameters,
    cpu_has_bf16,
    get_family,
    load_model_and_tokenizer,
    resolve_precision,
    torch_dtype,
)
from rmpeft.objectives import OBJECTIVES, Objective, build_objective, objective_type
from rmpeft.scoring import Batch
from rmpeft.sparse import set_strategy_cache_dir
from rmpeft.validation import DEVICES, Spec, check_batching, validate

log = logging.getLogger(__name__)

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


def registry_fields() -> dict[str, Spec]:
    """The fields whose choices come from a registry: the model families, the task kinds and their
    metrics (the objectives)."""
    return {"model.family": Spec("choice", choices=tuple(sorted(FAMILIES)), required=False),
            "task.kind": Spec("choice", choices=tuple(OBJECTIVES)),
            "task.metric": Spec("choice", choices=tuple(dict.fromkeys(o.metric for o in OBJECTIVES.values())))}


def check_config(cfg: DictConfig) -> None:
    """Check every value of a composed run config (common and method fields) before anything runs;
    a bad value raises a one-line :class:`RmpeftError`. Includes what depends on the model's shapes
    (the method fits the model, the first token is in its vocabulary), checked on the meta device."""
    validate(cfg, get_method(str(cfg.method.name)).config_fields, registered=registry_fields())
    get_task(str(cfg.task.name), OBJECTIVES[str(cfg.task.kind)].modality)
    check_method_family(cfg)
    model = cfg.model.get("arch") and OmegaConf.to_container(cfg.model, resolve=True)
    if model:
        _check_on_meta(json.dumps(model, sort_keys=True, default=str),
                       json.dumps(OmegaConf.to_container(cfg.method, resolve=True), sort_keys=True))


def check_method_family(cfg: DictConfig) -> None:
    """The method applies to the model's family (``Method.model_families``)."""
    method, family = get_method(str(cfg.method.name)), get_family(cfg.model)
    if method.model_families and family.name not in method.model_families:
        raise RmpeftError(f"method={method.name} does not apply to a {family.name} model (model={cfg.model.name}); "
                          f"it applies to {', '.join(method.model_families)} models")


@lru_cache(maxsize=256)
def _check_on_meta(model_json: str, method_json: str) -> None:
    """Apply the method to the model built on the meta device from ``model.arch`` (shapes only); a
    method that does not fit (e.g. a masking ratio above the target modules' share) raises here. Cached:
    a sweep checks each (model, method) once."""
    model_cfg, method_cfg = OmegaConf.create(json.loads(model_json)), OmegaConf.create(json.loads(method_json))
    first = model_cfg.get("first_token_id")
    vocab = model_cfg.arch.get("vocab_size")
    if first is not None and vocab and int(first) >= int(vocab):
        raise RmpeftError(f"model.first_token_id={first} is outside the model's vocabulary [0, {vocab})")
    model = build_model_on_meta(model_cfg)
    ctx = MethodContext(seed=0, total_params=count_parameters(model), total_steps=1, model_cfg=model_cfg,
                        tokenizer=None, device=torch.device("meta"))
    get_method(str(method_cfg.name)).apply(model, method_cfg, ctx)


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
    and the resolved precision (``fp32``, ``bf16`` or ``fp16``). bf16 runs under autocast on GPUs and
    CPUs alike; fp16 needs a GPU."""
    from accelerate import Accelerator

    device = cfg.trainer.device
    if device not in DEVICES:
        raise RmpeftError(f"unknown trainer.device '{device}'; valid choices: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():   # Accelerate would silently run on the CPU
        raise RmpeftError("trainer.device=cuda but torch sees no CUDA GPU on this machine; "
                          "valid choices here: auto, cpu")
    use_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    probe = torch.device("cpu" if use_cpu else "cuda")
    precision = resolve_precision(cfg.trainer.precision, probe)
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    if use_cpu and precision == "fp16":
        raise RmpeftError("trainer.precision=fp16 needs a GPU; on CPU use fp32 or bf16")
    if use_cpu and precision == "bf16" and not cpu_has_bf16():
        log.warning("trainer.precision=bf16 on a CPU without bf16 instructions (%s): it computes in bf16 "
                    "but runs slower than fp32 (docs/performance.md)", torch.backends.cpu.get_cpu_capability())
    if use_cpu:
        keep_freed_memory()  # steps reuse their memory instead of faulting it in again (rmpeft/cpu_allocator.py)
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state.get("_mixed_precision", mixed) != mixed:
        # a process running runs of several precisions (a sweep, tests): Accelerate keeps the first one's
        # unless its state (not the process group) is reset
        AcceleratorState._reset_state()
    # The trainer steps the schedule once per optimizer step (whatever the number of processes), so
    # its length is the run's optimizer steps; Accelerate's default would step it once per process.
    acc = Accelerator(cpu=use_cpu, mixed_precision=mixed, gradient_accumulation_steps=int(cfg.trainer.grad_accum),
                      step_scheduler_with_optimizer=False)
    return acc, precision


def build_run(cfg: DictConfig, accelerator: Any = None, apply_method: ApplyMethod | None = None) -> Run:
    """Load data, model and tokenizer, apply the method and pick the objective (no training).

    ``apply_method(model, cfg.method, ctx)`` replaces the method's own ``apply`` (e.g. to apply a
    trained delta instead of a fresh initialisation)."""
    from accelerate.utils import DistributedType, set_seed

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
                        model_cfg=cfg.model, tokenizer=tokenizer, device=accelerator.device,
                        cache_dir=str(cfg.cache_dir))
    set_strategy_cache_dir(cfg.cache_dir)     # the sparse engine's per-shape strategy decisions live there
    handle = (apply_method or method.apply)(model, cfg.method, ctx)
    for p in handle.trainable_parameters():
        if p.dtype != torch.float32:
            p.data = p.data.float()
    if method.trains and handle.num_trainable() == 0:
        raise RmpeftError(f"method '{cfg.method.name}' left no trainable parameters")
    if config_value(cfg, "trainer.gradient_checkpointing"):
        enable_checkpointing(handle.model)
    objective = build_objective(cfg.task, tokenizer, cfg.trainer, accelerator.unwrap_model)
    if objective.train_max_tokens and draws_dropout(handle.model):
        # A split micro-batch would draw other dropout masks than the whole one: not the same result.
        log.info("trainer.train_max_tokens is not applied: the model trains with dropout (activation "
                 "checkpointing bounds its memory without changing a result)")
        objective.train_max_tokens = None
    if objective.train_max_tokens and getattr(accelerator, "distributed_type", None) == DistributedType.DEEPSPEED:
        log.info("trainer.train_max_tokens is not applied under DeepSpeed (its engine steps at every backward)")
        objective.train_max_tokens = None
    return Run(cfg, accelerator, handle, tokenizer, splits, objective, total_params, precision, micro, method.trains)


def draws_dropout(model: torch.nn.Module) -> bool:
    """Whether training ``model`` draws random dropout masks: a dropout module with ``p > 0``, or a
    transformers config with a positive ``*dropout*`` / ``*pdrop*`` rate (functional dropout)."""
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        config = getattr(m, "config", None)
        if config is None or not hasattr(config, "to_dict") or id(config) in seen:
            continue
        seen.add(id(config))
        if any(("dropout" in k or "pdrop" in k) and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
               for k, v in config.to_dict().items()):
            return True
    return False


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Activation checkpointing in training (``trainer.gradient_checkpointing``): every layer of the
    transformers model inside ``model`` keeps only its input and runs again in the backward pass
    (non-reentrant, random state restored: the same numbers). One-line error where it has none."""
    from transformers import PreTrainedModel

    inner = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if inner is None or not inner.supports_gradient_checkpointing:
        name = type(inner if inner is not None else model).__name__
        raise RmpeftError(f"trainer.gradient_checkpointing=true: {name} does not support activation checkpointing")
    enable = getattr(inner, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:   # transformers before activation_checkpointing_enable
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def batch_loss(run: Run, batch: Batch) -> torch.Tensor:
    """Training loss of one micro-batch (the task objective's loss)."""
    return run.objective.loss(run.model, batch.to(run.device))


def backward_micro_batch(run: Run, batch: Batch,
                         loss_fn: Callable[[Run, Batch], torch.Tensor] = batch_loss) -> float:
    """Forward and backward of one training micro-batch, under autocast, in the objective's parts
    (:meth:`rmpeft.objectives.Objective.train_parts`, bounded by ``trainer.train_max_tokens``): each
    part's loss, weighted by its share, is backpropagated on its own, so one part's activations are
    alive at a time and the gradients add up to the micro-batch's. The method's regularization loss
    joins the last part. ``loss_fn(run, part)``: a part's loss (:func:`batch_loss`). Returns the
    micro-batch's loss."""
    acc = run.accelerator
    parts = run.objective.train_parts(batch)
    value = 0.0
    for i, (part, share) in enumerate(parts):
        last = i == len(parts) - 1
        # gradients are synchronised across processes once per micro-batch, with its last part
        with nullcontext() if last else acc.no_sync(run.model):
            with acc.autocast():
                loss = loss_fn(run, part)
                if share != 1.0:
                    loss = loss * share
                reg = run.handle.regularization_loss() if last else None  # e.g. AdaLoRA's orthogonality penalty
                if reg is not None:
                    loss = loss + reg
            value += float(loss.detach())
            acc.backward(loss)
    return value


def train_loader(run: Run, epoch: int, shuffle: bool = True) -> DataLoader:
    """Micro-batches of training examples; the order follows the run seed and the epoch."""
    gen = torch.Generator().manual_seed(int(run.cfg.seed) * 1000 + epoch)
    if hasattr(run.splits["train"], "set_epoch"):   # per-epoch random augmentation (image crops)
        run.splits["train"].set_epoch(epoch)
    return DataLoader(run.splits["train"], batch_size=run.micro_batch_size, shuffle=shuffle, generator=gen,
                      collate_fn=run.objective.collate)
