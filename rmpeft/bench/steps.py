"""One benchmark row: attach a method, time AdamW training steps, measure memory and state, detach."""

from __future__ import annotations

import copy
import ctypes
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from rmpeft.bench.workload import TARGETS
from rmpeft.methods import MethodContext, get_method
from rmpeft.optim import build_optimizer
from rmpeft.sparse import layer_state_bytes, unpatch


@dataclass
class BenchRow:
    method: str
    ratio: float | None = None
    backend: str | None = None
    step_s: float | None = None          # median over rounds of each round's median step time
    spread: float | None = None          # (max - min) / median of the round medians
    ratio_to_floor: float | None = None  # median over rounds of the round's ratio to the floor
    ratio_to_lora: float | None = None   # the same, to the LoRA row (when it ran)
    round_step_s: list[float] | None = None
    peak_mem_bytes: int | None = None
    trainable_params: int = 0
    trainable_state_bytes: int = 0
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.method}/{self.ratio}/{self.backend}"


@dataclass
class Attached:
    """A method attached to the model: what to call, what to optimise, how to take it off."""

    model: nn.Module
    params: list[nn.Parameter]
    detach: Callable[[], None]
    position_bytes: int = 0


# --- attaching each method -----------------------------------------------------------------------------

def attach_floor(model: nn.Module, row: BenchRow, total: int) -> Attached:
    """No parameter trains, but the embeddings' output requires grad: backward runs through every layer."""
    hook = model.get_input_embeddings().register_forward_hook(lambda mod, args, out: out.requires_grad_(True))
    return Attached(model, [], hook.remove)


def attach_masking(model: nn.Module, row: BenchRow, total: int) -> Attached:
    cfg = OmegaConf.create({"name": row.method, "ratio": row.ratio, "target_modules": TARGETS,
                            "backend": row.backend or "auto", "mask_seed": 0, "autotune": True})
    handle = get_method(row.method).apply(model, cfg, MethodContext(seed=0, total_params=total))
    return Attached(model, handle.trainable_parameters(), lambda: unpatch(model),
                    layer_state_bytes(model)["positions"])


def attach_lora(model: nn.Module, row: BenchRow, total: int) -> Attached:
    """LoRA r=8, alpha=16 on q_proj/v_proj (the `lora` method)."""
    cfg = OmegaConf.create({"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": TARGETS})
    handle = get_method("lora").apply(model, cfg, MethodContext(seed=0, total_params=total))
    wrapped, params = handle.model, handle.trainable_parameters()

    def detach() -> None:
        if hasattr(wrapped, "unload"):
            wrapped.unload()
        for p in model.parameters():
            p.requires_grad_(False)

    return Attached(wrapped, params, detach)


SHIRA_R = 8     # as the LoRA row's r: SHiRA then trains as many entries as LoRA


def shira_entries(model: nn.Module) -> int:
    """Entries SHiRA r=:data:`SHIRA_R` trains on the target modules: ``r * (in + out)`` per module."""
    return SHIRA_R * sum(m.in_features + m.out_features for n, m in model.named_modules()
                         if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in TARGETS)


def attach_shira(model: nn.Module, row: BenchRow, total: int) -> Attached:
    """SHiRA through peft (the `shira` method), r=8 on q_proj/v_proj; its positions are int32 (row, column)."""
    cfg = OmegaConf.create({"name": "shira", "r": SHIRA_R, "target_modules": TARGETS, "mask_seed": 0})
    handle = get_method("shira").apply(model, cfg, MethodContext(seed=0, total_params=total))
    wrapped, params = handle.model, handle.trainable_parameters()
    positions = sum(t.numel() * t.element_size() for m in wrapped.modules()
                    for t in (getattr(m, "shira_indices", None) or {}).values())

    def detach() -> None:
        wrapped.unload()
        for p in model.parameters():
            p.requires_grad_(False)

    return Attached(wrapped, params, detach, positions)


def attach_ft(model: nn.Module, row: BenchRow, total: int) -> Attached:
    params = list({id(p): p for p in model.parameters()}.values())
    for p in params:
        p.requires_grad_(True)

    def detach() -> None:
        for p in params:
            p.requires_grad_(False)
            p.grad = None

    return Attached(model, params, detach)


ATTACH = {"floor": attach_floor, "masking": attach_masking, "structured_masking": attach_masking,
          "lora": attach_lora, "shira": attach_shira, "ft": attach_ft}


# --- measuring ---------------------------------------------------------------------------------------

def optimizer_state_bytes(opt: torch.optim.Optimizer | None) -> int:
    if opt is None:
        return 0
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


class Memory:
    """Peak memory above a baseline: CUDA allocator statistics, or the process' peak RSS on Linux.

    On CPU, large allocations are forced to go straight to the kernel (glibc ``M_MMAP_THRESHOLD``) so
    that freed memory leaves the resident set and the peak RSS (reset through ``/proc/self/clear_refs``)
    follows the live tensors. That slows allocation a little, so CPU memory is measured in a separate
    pass after all timings.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline = 0

    @staticmethod
    def cpu_supported() -> bool:
        return Path("/proc/self/clear_refs").exists() and Path("/proc/self/status").exists()

    @staticmethod
    def prepare_cpu() -> None:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD: 256 KiB, fixed (no dynamic growth)
            libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD: glibc's default (the timings kept freed memory)
        except OSError:
            pass

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
        else:
            try:  # hand freed heap pages back so that the resident set starts from live memory
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except OSError:
                pass
            self.baseline = self._status("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.baseline
        return max(0, self._status("VmHWM") - self.baseline)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(model: nn.Module, batch: dict[str, torch.Tensor], opt: torch.optim.Optimizer | None) -> float:
    loss = model(**batch).loss
    loss.backward()
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return float(loss.detach())


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_OPTIM = {"name": "adamw", "lr": 1e-6, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}


def make_optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer | None:
    """The optimizer a run builds (:func:`rmpeft.optim.build_optimizer`), at a learning rate too small to matter."""
    return build_optimizer(params, OmegaConf.create(_OPTIM)) if params else None


def _timed_step(att: Attached, batch: dict[str, torch.Tensor], opt: torch.optim.Optimizer | None,
                device: torch.device, now: Callable[[], float], label: str) -> float:
    _sync(device)
    start = now()
    loss = train_step(att.model, batch, opt)
    _sync(device)
    elapsed = now() - start
    if not math.isfinite(loss):
        raise RuntimeError(f"{label}: non-finite loss {loss}")
    return elapsed


def _fill_state(row: BenchRow, att: Attached, opt: torch.optim.Optimizer | None) -> None:
    row.trainable_params = sum(p.numel() for p in att.params)
    row.trainable_state_bytes = (2 * sum(p.numel() * p.element_size() for p in att.params)
                                 + optimizer_state_bytes(opt) + att.position_bytes)


def time_rows_in_turn(model: nn.Module, rows: list[BenchRow], batch: dict[str, torch.Tensor], total: int,
                      device: torch.device, warmup: int, steps: int, rounds: int,
                      clock: str = "wall") -> dict[str, list[list[float]]]:
    """Step times of all ``rows``, taken in turn: label -> per round, the row's timed steps.

    Every row trains its own copy of ``model`` (the floor trains ``model`` itself), all attached at once.
    In each round, every row runs one step in turn, ``steps`` times over, the order reversed at every
    pass: a row's steps and the floor's or LoRA's are seconds apart, so a slow spell of the machine
    hits them alike. Costs one model copy per row; :func:`run_row` (``--sequential``) needs one model.
    Fills each row's trainable count and state.
    """
    copies = [model if row.method == "floor" else copy.deepcopy(model) for row in rows]  # before any attach
    live: list[tuple[BenchRow, Attached, torch.optim.Optimizer | None]] = []
    now = CLOCKS[clock]
    times: dict[str, list[list[float]]] = {row.label: [] for row in rows}
    try:
        for row, m in zip(rows, copies):
            att = ATTACH[row.method](m, row, total)
            live.append((row, att, make_optimizer(att.params)))
        del copies
        for row, att, opt in live:
            for _ in range(warmup):
                _timed_step(att, batch, opt, device, now, row.label)
        for _ in range(rounds):
            for row in rows:
                times[row.label].append([])
            for i in range(steps):
                for row, att, opt in (live if i % 2 == 0 else live[::-1]):
                    times[row.label][-1].append(_timed_step(att, batch, opt, device, now, row.label))
        for row, att, opt in live:
            _fill_state(row, att, opt)
    finally:
        for _, att, _ in live:
            att.detach()
        live.clear()
        gc.collect()
    return times


def run_row(model: nn.Module, row: BenchRow, batch: dict[str, torch.Tensor], total: int, device: torch.device,
            warmup: int, steps: int, memory: Memory | None, clock: str = "wall") -> list[float]:
    """Attach, train ``warmup + steps`` steps, detach. Returns the timed steps' seconds and fills ``row``."""
    if memory is not None:
        memory.start()
    att = ATTACH[row.method](model, row, total)
    opt = make_optimizer(att.params)
    times = []
    now = CLOCKS[clock]
    try:
        for i in range(warmup + steps):
            elapsed = _timed_step(att, batch, opt, device, now, row.label)
            if i >= warmup:
                times.append(elapsed)
        if memory is not None:
            row.peak_mem_bytes = memory.peak()
        _fill_state(row, att, opt)
    finally:
        del opt
        att.detach()
        gc.collect()
    return times
