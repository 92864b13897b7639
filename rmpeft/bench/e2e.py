"""``rmpeft-bench --e2e``: whole-run throughput of candidate scoring, flat against shared-prompt.

On a real model (SmolLM2-135M when installed, else its shape with random weights: the time does not
depend on them), for FT, LoRA and Random Masking (0.1%), each workload is timed with both scoring paths
(:mod:`rmpeft.scoring.paths`), their batches taken in turn, with the optimizer a run builds:

* ``2-cand``: SST-2-like examples (a ~64-token prompt, two single-token answers): training steps
  (forward, backward, AdamW) and evaluation, in examples per second;
* ``record``: ReCoRD-like examples (a long passage, 10 multi-token entities): evaluation.

A memory row gives the peak memory of evaluating one ReCoRD-shaped example (long passage, 15
entities) with the full-logits scoring of earlier versions and with the current paths.
"""

from __future__ import annotations

import functools
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from rmpeft import scoring
from rmpeft.bench.report import fmt_bytes
from rmpeft.bench.steps import ATTACH, Attached, Memory, BenchRow, make_optimizer
from rmpeft.scoring.batch import TokenRow

E2E_METHODS = (BenchRow("ft"), BenchRow("lora"), BenchRow("masking", 0.001, "auto"))
CELL_SECONDS = 60.0   # default timing budget of one cell (both paths), beyond the minimum of timed batches
MAX_STEPS = 50        # timed batches per cell at most


@dataclass(frozen=True)
class Workload:
    """Synthetic examples: ``prompt`` tokens, ``candidates`` answers of ``cand_tokens`` tokens each."""

    name: str
    prompt: int
    candidates: int
    cand_tokens: tuple[int, ...]
    batch: int
    train: bool


def workloads(small: bool) -> list[Workload]:
    scale = 4 if small else 1
    return [Workload("2-cand", 64 // scale, 2, (1,), 8 // (2 if small else 1), True),
            Workload("record", 320 // scale, 10, (2, 3, 4), 2 if small else 4, False)]


def make_rows(w: Workload, vocab: int, seed: int = 0) -> list[list[TokenRow]]:
    """Encoded examples of a workload: ``<bos> prompt candidate`` rows with random tokens."""
    gen = torch.Generator().manual_seed(seed)

    def toks(n: int) -> list[int]:
        return torch.randint(4, vocab, (n,), generator=gen).tolist()

    out = []
    for _ in range(w.batch):
        prompt = [1, *toks(w.prompt)]
        out.append([(prompt + toks(w.cand_tokens[j % len(w.cand_tokens)]), len(prompt)) for j in range(w.candidates)])
    return out


def make_batch(w: Workload, vocab: int, device: torch.device, seed: int = 0) -> scoring.Batch:
    rows = make_rows(w, vocab, seed)
    return scoring.collate_rows(rows, [0] * len(rows), 0).to(device)


def full_logits_token_logprobs(model: nn.Module, batch: scoring.Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate scoring of earlier versions: every position's logits over the whole vocabulary."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    logits = out.logits[:, :-1].float()
    mask = batch.option_mask[:, 1:].to(logits.dtype)
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch.input_ids[:, 1:].reshape(-1),
                                            reduction="none")
    return -(nll.view_as(mask) * mask).sum(-1), mask.sum(-1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed_in_turn(fns: dict[str, Callable[[], None]], device: torch.device, warmup: int,
                   steps: int, seconds: float = 0.0, max_steps: int = MAX_STEPS) -> dict[str, list[float]]:
    """Seconds of each of ``fns`` per timed step, the functions called in turn (their order alternating
    from step to step), so that a slow spell of a shared machine hits all of them alike. At least
    ``steps`` steps; more, up to ``max_steps``, until the timed calls add up to ``seconds`` (a cheap
    cell gets more pairs: the median of its ratios steadies without making the costly cells longer)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    spent, i = 0.0, 0
    while i < steps or (spent < seconds and i < max_steps):
        for name in (names if i % 2 == 0 else names[::-1]):
            _sync(device)
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
            spent += times[name][-1]
        i += 1
    return times


@dataclass
class E2ERow:
    method: str
    workload: str
    phase: str                  # train | eval
    flat_examples_per_s: float  # batch size / median step time
    shared_examples_per_s: float
    speedup: float              # median over timed steps of (flat time / shared time), steps run in turn
    speedup_q1: float           # first and third quartiles of those per-step ratios
    speedup_q3: float
    batches: int                # timed batches per path (all rounds)
    round_speedups: list[float] = field(default_factory=list)  # the median ratio of each round


def _median_ratio(times: dict[str, list[float]]) -> float:
    return statistics.median(f / s for f, s in zip(times["flat"], times["shared"]))


def row_from_rounds(method: str, w: Workload, phase: str, rounds: list[dict[str, list[float]]]) -> E2ERow:
    """One cell's row from the times of its rounds (:func:`_timed_in_turn`), pooled."""
    flat = [t for r in rounds for t in r["flat"]]
    shared = [t for r in rounds for t in r["shared"]]
    ratios = [f / s for f, s in zip(flat, shared)]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return E2ERow(method, w.name, phase, w.batch / statistics.median(flat), w.batch / statistics.median(shared),
                  statistics.median(ratios), q1, q3, len(ratios), [_median_ratio(r) for r in rounds])


def run_e2e(model: nn.Module, total: int, device: torch.device, small: bool, warmup: int, steps: int,
            autocast_dtype: torch.dtype | None = None, seconds: float = 0.0, rounds: int = 1) -> list[E2ERow]:
    """Examples per second of every method x workload x phase, with both scoring paths timed in turn.

    Per cell and round: ``warmup`` batches, then at least ``steps`` timed batches, more while the cell
    has run less than ``seconds``. ``rounds`` passes over all cells, each method attached afresh; a
    cell's batches are pooled over the rounds, so a slow minute of the machine weighs on one round
    of a cell, not on all of its batches."""
    vocab = model.config.vocab_size
    cells: dict[tuple[str, str, str], list[dict[str, list[float]]]] = {}
    for _ in range(rounds):
        for row in E2E_METHODS:
            label = row.method if row.ratio is None else f"{row.method} {100 * row.ratio:g}%"
            att = ATTACH[row.method](model, BenchRow(row.method, row.ratio, row.backend), total)
            opt = make_optimizer(att.params)
            try:
                for w in workloads(small):
                    batch = make_batch(w, vocab, device)
                    for phase in (("train", "eval") if w.train else ("eval",)):
                        def step(path: str, phase: str = phase) -> None:
                            with torch.autocast(device.type, dtype=autocast_dtype,
                                                enabled=autocast_dtype is not None):
                                if phase == "train":
                                    scoring.classification_loss(att.model, batch, path).backward()
                                    opt.step()
                                    opt.zero_grad(set_to_none=True)
                                else:
                                    with torch.no_grad():
                                        scoring.predict_choices(att.model, batch, path)
                        times = _timed_in_turn({p: functools.partial(step, p) for p in ("flat", "shared")},
                                               device, warmup, steps, seconds)
                        cells.setdefault((label, w.name, phase), []).append(times)
            finally:
                del opt
                att.detach()
                gc.collect()
    by_name = {w.name: w for w in workloads(small)}
    return [row_from_rounds(label, by_name[name], phase, times) for (label, name, phase), times in cells.items()]


# --- precision and activation checkpointing ----------------------------------------------------------

MODE_METHOD = BenchRow("masking", 0.001, "auto")   # Random Masking 0.1%, shared-prompt scoring
MODES = ("bf16", "checkpointing")


@dataclass
class ModeRow:
    """One workload x phase with the run's precision (``base``) against one ``mode``: bf16 autocast, or
    activation checkpointing (training only), batches in turn."""

    workload: str
    phase: str
    mode: str
    base_examples_per_s: float
    mode_examples_per_s: float
    speedup: float              # median over batches of (base time / mode time)
    speedup_q1: float
    speedup_q3: float
    batches: int
    base_peak_mem_bytes: int = 0    # one batch, above the model (training cells; 0: not measured)
    mode_peak_mem_bytes: int = 0


def mode_cells(small: bool, modes: tuple[str, ...] = MODES) -> list[tuple[Workload, str, str]]:
    """(workload, phase, mode): ``bf16`` on every phase, ``checkpointing`` on training, including a
    ReCoRD-shaped training batch."""
    two, record = workloads(small)
    record = Workload("record", record.prompt, record.candidates, record.cand_tokens, 2, True)
    cells = []
    for w, phase in ((two, "train"), (two, "eval"), (record, "train")):
        if "bf16" in modes:
            cells.append((w, phase, "bf16"))
        if phase == "train" and "checkpointing" in modes:
            cells.append((w, phase, "checkpointing"))
    return cells


def _set_checkpointing(model: nn.Module, on: bool) -> None:
    if on:
        from rmpeft.run import enable_checkpointing

        enable_checkpointing(model)
    else:
        off = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        off()


def _mode_step(att: Attached, model: nn.Module, opt: torch.optim.Optimizer, batch: scoring.Batch, phase: str,
               name: str, device: torch.device, autocast_dtype: torch.dtype | None) -> None:
    """One batch of ``phase`` in mode ``name`` (base, bf16, checkpointing), scored by the path a run takes
    (``auto``: shared prompts, except under activation checkpointing, which fills no key/value cache)."""
    dtype = torch.bfloat16 if name == "bf16" else autocast_dtype
    checkpointing = name == "checkpointing"
    if checkpointing:
        _set_checkpointing(model, True)
        att.model.train()   # checkpointing acts in training mode (SmolLM2 has no dropout)
    try:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if phase == "train":
                scoring.classification_loss(att.model, batch, "auto").backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    scoring.predict_choices(att.model, batch, "auto")
    finally:
        if checkpointing:
            att.model.eval()
            _set_checkpointing(model, False)


def _attach_mode_method(model: nn.Module, total: int) -> tuple[Attached, torch.optim.Optimizer]:
    att = ATTACH[MODE_METHOD.method](model, BenchRow(MODE_METHOD.method, MODE_METHOD.ratio, MODE_METHOD.backend), total)
    return att, make_optimizer(att.params)


def run_modes(model: nn.Module, total: int, device: torch.device, small: bool, warmup: int, steps: int,
              autocast_dtype: torch.dtype | None = None, seconds: float = 0.0, rounds: int = 1,
              modes: tuple[str, ...] = MODES) -> list[ModeRow]:
    """Examples per second of Random Masking (0.1%, shared path) in the run's precision against each of
    ``modes`` (bf16 autocast, activation checkpointing), batches in turn, cells timed as in :func:`run_e2e`."""
    vocab = model.config.vocab_size
    cells = mode_cells(small, modes)
    times: dict[int, list[dict[str, list[float]]]] = {}
    for _ in range(rounds):
        att, opt = _attach_mode_method(model, total)
        try:
            for i, (w, phase, mode) in enumerate(cells):
                batch = make_batch(w, vocab, device)
                fns = {name: functools.partial(_mode_step, att, model, opt, batch, phase, name, device, autocast_dtype)
                       for name in ("base", mode)}
                timed = _timed_in_turn(fns, device, warmup, steps, seconds)
                times.setdefault(i, []).append({"base": timed["base"], "mode": timed[mode]})
        finally:
            del opt
            att.detach()
            gc.collect()
    out = []
    for i, (w, phase, mode) in enumerate(cells):
        base = [t for r in times[i] for t in r["base"]]
        other = [t for r in times[i] for t in r["mode"]]
        ratios = [b / m for b, m in zip(base, other)]
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
        out.append(ModeRow(w.name, phase, mode, w.batch / statistics.median(base), w.batch / statistics.median(other),
                           statistics.median(ratios), q1, q3, len(ratios)))
    return out


def mode_memory(model: nn.Module, total: int, device: torch.device, small: bool, rows: list[ModeRow],
                autocast_dtype: torch.dtype | None = None) -> None:
    """Fill the peak memory (above the model) of one batch of each training row, base and mode (after
    all timings: on CPU, :meth:`Memory.prepare_cpu` must have been called)."""
    att, opt = _attach_mode_method(model, total)
    mem = Memory(device)
    cells = {(w.name, phase, mode): w for w, phase, mode in mode_cells(small)}
    try:
        for r in rows:
            if r.phase != "train":
                continue
            batch = make_batch(cells[(r.workload, r.phase, r.mode)], model.config.vocab_size, device)
            _mode_step(att, model, opt, batch, "train", "base", device, autocast_dtype)  # state and buffers first
            peaks = []
            for name in ("base", r.mode):
                mem.start()
                _mode_step(att, model, opt, batch, "train", name, device, autocast_dtype)
                peaks.append(mem.peak())
            r.base_peak_mem_bytes, r.mode_peak_mem_bytes = peaks
    finally:
        del opt
        att.detach()
        gc.collect()


def modes_table(rows: list[ModeRow], base: str) -> str:
    head = (f"{'mode':<15}{'workload':<10}{'phase':<7}{base + ' ex/s':>11}{'mode ex/s':>11}{'speedup':>9}"
            f"{'quartiles':>13}{'batches':>9}{base + ' mem':>12}{'mode mem':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        mem = (f"{fmt_bytes(r.base_peak_mem_bytes):>12}{fmt_bytes(r.mode_peak_mem_bytes):>11}"
               if r.base_peak_mem_bytes else f"{'-':>12}{'-':>11}")
        lines.append(f"{r.mode:<15}{r.workload:<10}{r.phase:<7}{r.base_examples_per_s:>11.2f}"
                     f"{r.mode_examples_per_s:>11.2f}{r.speedup:>8.2f}x{f'{r.speedup_q1:.2f}-{r.speedup_q3:.2f}':>13}"
                     f"{r.batches:>9}{mem}")
    return "\n".join(lines)


def check_mode_targets(rows: list[ModeRow], cpu_bf16: bool | None) -> list[str]:
    """bf16 >= 1.7x on two-candidate training and evaluation (on a CPU: where it has bf16
    instructions); activation checkpointing below the memory of the plain ReCoRD-shaped step."""
    out = []
    two = [r for r in rows if r.mode == "bf16" and r.workload == "2-cand"]
    if two:
        worst = min(two, key=lambda r: r.speedup)
        ok = "ok  " if worst.speedup >= 1.7 else ("n/a " if cpu_bf16 is False else "MISS")
        note = " (this CPU has no bf16 instructions)" if cpu_bf16 is False else ""
        out.append(f"{ok} bf16 vs fp32, 2-cand (worst: {worst.phase}): {worst.speedup:.2f}x (target >= 1.7x){note}")
    ck = [r for r in rows if r.mode == "checkpointing" and r.workload == "record" and r.base_peak_mem_bytes]
    for r in ck:
        ok = "ok  " if r.mode_peak_mem_bytes < r.base_peak_mem_bytes else "MISS"
        out.append(f"{ok} checkpointing, record train: {fmt_bytes(r.mode_peak_mem_bytes)} vs "
                   f"{fmt_bytes(r.base_peak_mem_bytes)} (target: less)")
    return out


def memory_rows(model: nn.Module, device: torch.device, small: bool) -> list[tuple[str, int]]:
    """Peak memory (above the model) of scoring one ReCoRD-shaped example, 15 entities: full logits
    (earlier versions), flat and shared paths."""
    w = Workload("record-15", 80 if small else 350, 15, (2, 3, 4), 1, False)
    batch = make_batch(w, model.config.vocab_size, device, seed=1)
    mem = Memory(device)
    out = []
    fns = {"full logits (before)": lambda: full_logits_token_logprobs(model, batch),
           "flat, scored logits only": lambda: scoring.token_logprobs(model, batch, "flat"),
           "shared prompt": lambda: scoring.token_logprobs(model, batch, "shared")}
    for name, fn in fns.items():
        mem.start()
        with torch.no_grad():
            fn()
        out.append((name, mem.peak()))
        gc.collect()
    return out


def e2e_table(rows: list[E2ERow]) -> str:
    head = (f"{'method':<14}{'workload':<10}{'phase':<7}{'flat ex/s':>11}{'shared ex/s':>13}{'speedup':>9}"
            f"{'quartiles':>13}{'batches':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        quartiles = f"{r.speedup_q1:.2f}-{r.speedup_q3:.2f}"
        lines.append(f"{r.method:<14}{r.workload:<10}{r.phase:<7}{r.flat_examples_per_s:>11.2f}"
                     f"{r.shared_examples_per_s:>13.2f}{r.speedup:>8.2f}x{quartiles:>13}{r.batches:>9}")
    return "\n".join(lines)


def memory_table(rows: list[tuple[str, int]], model_bytes: int) -> str:
    lines = [f"{'scoring one ReCoRD-shaped example (15 entities)':<50}{'peak mem':>12}{'x model':>9}"]
    for name, peak in rows:
        lines.append(f"{name:<50}{fmt_bytes(peak):>12}{peak / max(model_bytes, 1):>9.2f}")
    return "\n".join(lines)


def check_e2e_targets(rows: list[E2ERow]) -> list[str]:
    """The shared-prompt targets: >= 1.8x on two-candidate tasks, >= 5x on ReCoRD-shaped evaluation."""
    out = []
    for workload, bound in (("2-cand", 1.8), ("record", 5.0)):
        sel = [r for r in rows if r.workload == workload]
        if sel:
            worst = min(sel, key=lambda r: r.speedup)
            ok = "ok  " if worst.speedup >= bound else "MISS"
            out.append(f"{ok} {workload} shared vs flat (worst: {worst.method} {worst.phase}): "
                       f"{worst.speedup:.2f}x (target >= {bound:g}x)")
    return out
