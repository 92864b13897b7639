"""``rmpeft-bench``: per-step time and memory of masked fine-tuning against the frozen-model floor.

One process, one random model and one batch. Each row attaches a method to the model, runs a few
AdamW training steps (forward, backward, optimizer step) and takes the method off again:

* ``floor``: no trainable parameter; backward through the activations down to the first layer;
* ``masking`` at 10%, 1%, 0.1%, 0.01%, 0.001% for every available sparse backend and ``dense``;
* ``structured_masking`` at 0.1%; ``lora`` (r=8, alpha=16, q_proj/v_proj); ``ft`` (every parameter).

It prints a table (or, with ``--json``, a list of rows) with the median step time, its ratio to the
floor, peak memory, trainable entries and the trainable state in bytes (values, gradients, optimizer
moments and step counters, mask positions), then checks the targets of the sparse engine.

    rmpeft-bench --small          # seconds on CPU
    rmpeft-bench                  # OPT-125m-shaped model, batch 8 x 128, on the available device
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from rmpeft.errors import RmpeftError, unknown_choice

# Architecture facts of the benchmark models (OPT family; the same numbers as conf/model/*.yaml `arch`).
SHAPES: dict[str, dict[str, int]] = {
    "opt-125m": dict(hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12, vocab_size=50272),
    "opt-1.3b": dict(hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32, vocab_size=50272),
    "small": dict(hidden_size=256, num_hidden_layers=4, ffn_dim=1024, num_attention_heads=4, vocab_size=2048),
}
MASKING_RATIOS = (0.1, 0.01, 0.001, 0.0001, 0.00001)
STRUCTURED_RATIO = 0.001
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGETS = ["q_proj", "v_proj"]


@dataclass
class Row:
    method: str
    ratio: float | None = None
    backend: str | None = None
    step_s: float | None = None
    ratio_to_floor: float | None = None
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


# --- building the model and the batch ----------------------------------------------------------------

def build_model(shape: str, dtype: torch.dtype, device: torch.device, seed: int = 0) -> nn.Module:
    """A randomly initialised OPT with the named shape (built from a config: no download)."""
    from transformers import OPTConfig, OPTForCausalLM

    arch = SHAPES[shape]
    config = OPTConfig(**arch, max_position_embeddings=2048, word_embed_proj_dim=arch["hidden_size"],
                       dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise where it will run (fast on a GPU)
        model = OPTForCausalLM(config)
    model.to(dtype=dtype)
    model.eval()  # no dropout: every row computes the same function
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def make_batch(vocab: int, batch: int, seq: int, device: torch.device) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(4, vocab, (batch, seq), generator=gen).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def available_names(device: str | torch.device) -> list[str]:
    from rmpeft.sparse.base import available_backends

    return available_backends(torch.device(device))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# --- attaching each method -----------------------------------------------------------------------------

def attach_floor(model: nn.Module, row: Row, total: int) -> Attached:
    """No parameter trains, but the embeddings' output requires grad: backward runs through every layer."""
    hook = model.get_input_embeddings().register_forward_hook(lambda mod, args, out: out.requires_grad_(True))
    return Attached(model, [], hook.remove)


def attach_masking(model: nn.Module, row: Row, total: int) -> Attached:
    from omegaconf import OmegaConf

    from rmpeft.methods import MethodContext, get_method
    from rmpeft.sparse import layer_state_bytes, unpatch

    cfg = OmegaConf.create({"name": row.method, "ratio": row.ratio, "target_modules": TARGETS,
                            "backend": row.backend or "auto", "mask_seed": 0, "autotune": True})
    handle = get_method(row.method).apply(model, cfg, MethodContext(seed=0, total_params=total))
    return Attached(model, handle.trainable_parameters(), lambda: unpatch(model),
                    layer_state_bytes(model)["positions"])


def attach_lora(model: nn.Module, row: Row, total: int) -> Attached:
    """LoRA r=8, alpha=16 on q_proj/v_proj: the project's `lora` method when registered, else peft."""
    from rmpeft.methods import METHODS, MethodContext, get_method

    get_method("ft")  # imports every method module
    if "lora" in METHODS:
        from omegaconf import OmegaConf

        cfg = OmegaConf.create({"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": TARGETS})
        handle = get_method("lora").apply(model, cfg, MethodContext(seed=0, total_params=total))
        wrapped, params = handle.model, handle.trainable_parameters()
    else:
        from peft import LoraConfig, get_peft_model

        wrapped = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS))
        params = [p for p in wrapped.parameters() if p.requires_grad]
    row.note = "rmpeft lora" if "lora" in METHODS else "peft"

    def detach() -> None:
        if hasattr(wrapped, "unload"):
            wrapped.unload()
        for p in model.parameters():
            p.requires_grad_(False)

    return Attached(wrapped, params, detach)


def attach_ft(model: nn.Module, row: Row, total: int) -> Attached:
    params = list({id(p): p for p in model.parameters()}.values())
    for p in params:
        p.requires_grad_(True)

    def detach() -> None:
        for p in params:
            p.requires_grad_(False)
            p.grad = None

    return Attached(model, params, detach)


ATTACH = {"floor": attach_floor, "masking": attach_masking, "structured_masking": attach_masking,
          "lora": attach_lora, "ft": attach_ft}


# --- measuring ---------------------------------------------------------------------------------------

def optimizer_state_bytes(opt: torch.optim.Optimizer | None) -> int:
    if opt is None:
        return 0
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def expected_state_bytes(param_numels: list[int], element_size: int, position_bytes: int,
                         step_bytes: int = 4) -> int:
    """AdamW's trainable state: values + gradients + two moments (element_size each per entry), one step
    counter per parameter tensor, plus the mask positions."""
    return 4 * element_size * sum(param_numels) + step_bytes * len(param_numels) + position_bytes


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


def run_row(model: nn.Module, row: Row, batch: dict[str, torch.Tensor], total: int, device: torch.device,
            warmup: int, steps: int, memory: Memory | None, clock: str = "wall") -> list[float]:
    """Attach, train ``warmup + steps`` steps, detach. Returns the timed steps' seconds and fills ``row``."""
    if memory is not None:
        memory.start()
    att = ATTACH[row.method](model, row, total)
    opt = torch.optim.AdamW(att.params, lr=1e-6) if att.params else None
    times = []
    now = CLOCKS[clock]
    try:
        for i in range(warmup + steps):
            _sync(device)
            start = now()
            loss = train_step(att.model, batch, opt)
            _sync(device)
            if i >= warmup:
                times.append(now() - start)
            if not math.isfinite(loss):
                raise RuntimeError(f"{row.label}: non-finite loss {loss}")
        if memory is not None:
            row.peak_mem_bytes = memory.peak()
        row.trainable_params = sum(p.numel() for p in att.params)
        row.trainable_state_bytes = (2 * sum(p.numel() * p.element_size() for p in att.params)
                                     + optimizer_state_bytes(opt) + att.position_bytes)
    finally:
        del opt
        att.detach()
        gc.collect()
    return times


# --- the command ---------------------------------------------------------------------------------------

def plan_rows(ratios: list[float], backends: list[str], max_ratio: float, extra: bool) -> list[Row]:
    rows = [Row("floor")]
    for r in ratios:
        for b in backends:
            rows.append(Row("masking", r, b, note="" if r <= max_ratio else "skipped: above the target share"))
    if extra:
        rows += [Row("structured_masking", STRUCTURED_RATIO, "columns"), Row("lora"), Row("ft")]
    return rows


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{100 * r:g}%"


def table(rows: list[Row]) -> str:
    head = f"{'method':<19}{'ratio':>8}  {'backend':<8}{'step_s':>9}{'x floor':>9}{'peak mem':>12}" \
           f"{'trainable':>12}{'state':>12}{'B/entry':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        per = f"{r.trainable_state_bytes / r.trainable_params:.2f}" if r.trainable_params else "-"
        step = "-" if r.step_s is None else f"{r.step_s:.4f}"
        xf = "-" if r.ratio_to_floor is None else f"{r.ratio_to_floor:.3f}"
        lines.append(f"{r.method:<19}{fmt_ratio(r.ratio):>8}  {(r.backend or '-'):<8}{step:>9}{xf:>9}"
                     f"{fmt_bytes(r.peak_mem_bytes):>12}{r.trainable_params:>12}"
                     f"{fmt_bytes(r.trainable_state_bytes):>12}{per:>9}" + (f"  {r.note}" if r.note else ""))
    return "\n".join(lines)


def check_targets(rows: list[Row]) -> list[str]:
    """The sparse engine's targets, each as one line with the measured figure."""
    done = [r for r in rows if r.step_s is not None]
    lora = next((r for r in done if r.method == "lora"), None)
    sparse = [r for r in done if r.method == "masking" and r.backend not in ("dense",)]
    out = []

    def line(name: str, value: float, bound: float, fmt: str = ".3f") -> None:
        out.append(f"{'ok  ' if value <= bound else 'MISS'} {name}: {value:{fmt}} (target <= {bound:{fmt}})")

    low = [r for r in sparse if r.ratio is not None and r.ratio <= 0.001]
    if low:
        worst = max(low, key=lambda r: r.ratio_to_floor)
        line(f"masking <= 0.1% vs floor (worst: {fmt_ratio(worst.ratio)} {worst.backend})", worst.ratio_to_floor, 1.10)
    one = [r for r in sparse if r.ratio == 0.01]
    if one:
        worst = max(one, key=lambda r: r.ratio_to_floor)
        line(f"masking 1% vs floor ({worst.backend})", worst.ratio_to_floor, 1.25)
    if lora and low:
        worst = max(low, key=lambda r: r.step_s)
        line(f"masking <= 0.1% step time vs LoRA ({fmt_ratio(worst.ratio)} {worst.backend})",
             worst.step_s / lora.step_s, 1.0)
    if sparse:
        worst = max(sparse, key=lambda r: r.trainable_state_bytes / max(1, r.trainable_params))
        line(f"trainable state per entry, bytes ({fmt_ratio(worst.ratio)} {worst.backend}; AdamW adds a "
             f"4-byte step counter per matrix)", worst.trainable_state_bytes / worst.trainable_params, 20.0, ".3f")
    if lora and lora.peak_mem_bytes is not None and low:
        worst = max(low, key=lambda r: r.peak_mem_bytes or 0)
        line(f"masking <= 0.1% peak memory vs LoRA ({fmt_ratio(worst.ratio)} {worst.backend})",
             (worst.peak_mem_bytes or 0) / max(1, lora.peak_mem_bytes), 1.0)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rmpeft-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true",
                   help="a quick CPU run: small model (--model small), batch 4 x 64, 2 steps after 1 warm-up")
    p.add_argument("--model", default=None, help=f"model shape: {', '.join(SHAPES)} (default opt-125m)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 8)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 128)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA) | fp32 | bf16 | fp16")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row and round (default 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before them (default 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="passes over all rows; step times are pooled (interleaving evens out machine noise)")
    p.add_argument("--ratios", type=float, nargs="+", default=list(MASKING_RATIOS),
                   help="Random Masking ratios (share of all parameters)")
    p.add_argument("--backends", nargs="+", default=None,
                   help="sparse backends to run (default: every available one, plus dense)")
    p.add_argument("--only-masking", action="store_true", help="skip the structured, LoRA and full rows")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 with --small, else torch's choice)")
    p.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                   help="wall: elapsed time; cpu: this process' CPU time (CPU runs only): steadier on a machine "
                        "shared with other jobs, best with --threads 1")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list instead of the table")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except RmpeftError as e:
        print(f"rmpeft-bench: error: {e}", file=sys.stderr)
        return 2
    finally:
        gc.unfreeze()


def _run(args: argparse.Namespace) -> int:
    from rmpeft.sparse import autotune
    from rmpeft.sparse.base import available_backends

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RmpeftError("--device cuda: no CUDA device is available")
    shape = args.model or ("small" if args.small else "opt-125m")
    if shape not in SHAPES:
        raise unknown_choice("--model", shape, SHAPES)
    dname = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if dname not in DTYPES:
        raise unknown_choice("--dtype", dname, DTYPES)
    batch_n, seq = args.batch or (4 if args.small else 8), args.seq or (64 if args.small else 128)
    steps = args.steps if args.steps is not None else (2 if args.small else 3)
    warmup = args.warmup if args.warmup is not None else 1
    if args.clock == "cpu" and device.type == "cuda":
        raise RmpeftError("--clock cpu measures CPU work; GPU runs are timed with --clock wall")
    threads = args.threads or (1 if args.small else None)
    if threads and device.type == "cpu":
        torch.set_num_threads(threads)
    sparse_names = [n for n in available_backends(device) if n != "dense"]
    backends = args.backends or [*sparse_names, "dense"]
    for b in backends:
        if b not in ("torch", "spops", "triton", "dense"):
            raise unknown_choice("--backends", b, ("torch", "spops", "triton", "dense"))
        if b not in available_backends(device):
            raise RmpeftError(f"--backends {b}: not available on {device.type} "
                              f"(available: {', '.join(available_backends(device))})")

    model = build_model(shape, DTYPES[dname], device)
    total = count_params(model)
    targets = sum(m.weight.numel() for n, m in model.named_modules()
                  if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in TARGETS)
    rows = plan_rows(args.ratios, backends, targets / total, not args.only_masking)
    batch = make_batch(model.config.vocab_size, batch_n, seq, device)
    runnable = [r for r in rows if not r.note.startswith("skipped")]
    autotune.reset()
    import peft  # noqa: F401  (imported before the objects below are frozen)

    from rmpeft import methods  # noqa: F401
    gc.collect()
    gc.freeze()  # the libraries' objects: later collections only scan what the rows create

    # Timing pass(es). On CUDA the allocator's statistics give memory in the same pass.
    times: dict[str, list[float]] = {r.label: [] for r in runnable}
    cuda_memory = Memory(device) if device.type == "cuda" else None
    for rnd in range(args.rounds):
        for row in runnable:
            times[row.label] += run_row(model, row, batch, total, device, warmup, steps,
                                        cuda_memory if rnd == 0 else None, args.clock)
    # CPU memory pass: one step per row, after all timings (see Memory).
    if device.type == "cpu" and Memory.cpu_supported():
        Memory.prepare_cpu()
        mem = Memory(device)
        run_row(model, Row("floor"), batch, total, device, 0, 1, None)  # one-time buffers land before baselines
        for row in runnable:
            saved = (row.trainable_params, row.trainable_state_bytes)
            run_row(model, row, batch, total, device, 0, 1, mem)
            row.trainable_params, row.trainable_state_bytes = saved

    for row in runnable:
        row.step_s = statistics.median(times[row.label]) if times[row.label] else None
    floor = rows[0].step_s
    for row in runnable:
        if row.step_s is not None and floor:
            row.ratio_to_floor = row.step_s / floor

    if args.json:
        keys = ("method", "ratio", "backend", "step_s", "ratio_to_floor", "peak_mem_bytes", "trainable_params",
                "trainable_state_bytes")
        print(json.dumps([{k: asdict(r)[k] for k in keys} for r in rows], indent=1))
        return 0
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else f", {torch.cuda.get_device_name()}"
    print(f"rmpeft-bench: {shape}-shaped random OPT ({total / 1e6:.1f}M parameters; q_proj/v_proj hold "
          f"{100 * targets / total:.2f}%), batch {batch_n} x {seq} tokens, {dname}, {device.type}{threads}, "
          f"torch {torch.__version__}")
    print(f"step time ({args.clock} clock): median of {steps * args.rounds} timed AdamW steps per row "
          f"({warmup} warm-up each, {args.rounds} round(s)); peak memory: above the frozen model, during "
          f"attach + step")
    print(table(rows))
    print("targets:")
    for line in check_targets(rows):
        print("  " + line)
    chosen = autotune.decisions()
    if chosen:
        print("torch backend strategies (shape/entries/tokens/dtype/device: choice):")
        for key, choice in chosen.items():
            print(f"  {key.removeprefix('torch/')}: {choice}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
