"""``rmpeft-bench``: per-step time and memory of masked fine-tuning against the frozen-model floor.

One process, one random model and one batch. Each row attaches a method to its own copy of the model
and runs AdamW training steps (forward, backward, optimizer step), one step of every row in turn, so
that the rows' steps are compared seconds apart (``--sequential``: row after row on the one model):

* ``floor``: no trainable parameter; backward through the activations down to the first layer;
* ``masking`` at 10%, 1%, 0.1%, 0.01%, 0.001% for every available sparse backend and ``dense``;
* ``structured_masking`` at 0.1%; ``lora`` (r=8, alpha=16, q_proj/v_proj); ``shira`` (peft's SHiRA, r=8 on
  q_proj/v_proj: as many entries as LoRA) and ``masking`` at SHiRA's trainable count; ``ft`` (every parameter).

It prints a table (or, with ``--json``, a list of rows) with the median step time, its ratio to the
floor, peak memory, trainable entries and the trainable state in bytes (values, gradients, optimizer
moments and step counters, mask positions), then checks the targets of the sparse engine.

    rmpeft-bench --small          # seconds on CPU
    rmpeft-bench                  # OPT-125m-shaped model, batch 8 x 128, on the available device
    rmpeft-bench --e2e            # whole-run scoring throughput, flat vs shared prompt (SmolLM2-135M)

``--e2e`` runs :mod:`rmpeft.bench.e2e` instead: training and evaluation examples/s of FT, LoRA and
Random Masking with flat and shared-prompt candidate scoring, and the memory of scoring one
ReCoRD-shaped example.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from dataclasses import asdict

import torch
from torch import nn

from rmpeft.bench.e2e import (
    CELL_SECONDS,
    MAX_STEPS,
    check_e2e_targets,
    check_mode_targets,
    e2e_table,
    memory_rows,
    memory_table,
    mode_memory,
    modes_table,
    run_e2e,
    run_modes,
)
from rmpeft.bench.report import check_targets, summarize, table
from rmpeft.bench.steps import CLOCKS, Memory, BenchRow, run_row, shira_entries, time_rows_in_turn
from rmpeft.bench.workload import (
    DTYPES,
    TARGETS,
    build_model,
    load_pretrained,
    make_batch,
    model_choices,
    pretrained_source,
)
from rmpeft.cpu_allocator import keep_freed_memory
from rmpeft.errors import RmpeftError, unknown_choice
from rmpeft.models import count_parameters, cpu_has_bf16
from rmpeft.sparse import available_backends, reset_strategy_decisions, strategy_cache_file, strategy_decisions

MASKING_RATIOS = (0.1, 0.01, 0.001, 0.0001, 0.00001)
STRUCTURED_RATIO = 0.001


def plan_rows(ratios: list[float], backends: list[str], max_ratio: float, extra: bool,
              shira_ratio: float | None = None) -> list[BenchRow]:
    rows = [BenchRow("floor")]
    for r in ratios:
        for b in backends:
            rows.append(BenchRow("masking", r, b, note="" if r <= max_ratio else "skipped: above the target share"))
    if extra:
        rows += [BenchRow("structured_masking", STRUCTURED_RATIO, "columns"), BenchRow("lora")]
        if shira_ratio is not None:   # SHiRA and Random Masking with the same trainable count
            sparse = next((b for b in backends if b != "dense"), backends[0])
            rows += [BenchRow("shira"), BenchRow("masking", shira_ratio, sparse, note="SHiRA's count")]
        rows.append(BenchRow("ft"))
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rmpeft-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true",
                   help="a quick CPU run: small model (--model small), batch 4 x 64, 2 steps after 1 warm-up")
    p.add_argument("--model", default=None,
                   help="model shape: a conf/model config (its `arch`) or small (default opt-125m)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 8)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 128)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA) | fp32 | bf16 | fp16")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per row and round (default 3; --e2e: the least timed batches per cell, default 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before them (default 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="passes over all rows; each row reports the median of its round medians and their spread, "
                        "and ratios are taken within each round (rows of one round ran close in time); --e2e: "
                        "passes over all cells, a cell's batches pooled over the rounds")
    p.add_argument("--sequential", action="store_true",
                   help="time row after row on the one model (default: every row on its own copy of the model, "
                        "one step of each in turn, so that ratios compare steps seconds apart; needs a copy per row)")
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
    p.add_argument("--e2e", action="store_true",
                   help="whole-run throughput of candidate scoring (flat vs shared prompt) and its memory, "
                        "on SmolLM2-135M (its real weights when the rmpeft[smollm2] extra is installed, else "
                        "its shape with random weights; --model to change it)")
    p.add_argument("--cell-seconds", type=float, default=None,
                   help=f"--e2e: after the least timed batches, keep timing a cell's batches (both paths, in turn) "
                        f"until they add up to this many seconds, at most {MAX_STEPS} (default {CELL_SECONDS:g}; "
                        f"0 with --small)")
    p.add_argument("--modes", nargs="+", default=None, choices=["bf16", "checkpointing"],
                   help="--e2e: Random Masking in the run's precision against bf16 autocast and against activation "
                        "checkpointing (default: checkpointing, and bf16 where the run is in fp32 on a GPU or on a CPU "
                        "with bf16 instructions; without them bf16 is many times slower)")
    p.add_argument("--random-weights", action="store_true",
                   help="--e2e: random weights even where the real model is installed")
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
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RmpeftError("--device cuda: no CUDA device is available")
    default = "smollm2-135m" if args.e2e and "smollm2-135m" in model_choices() else "opt-125m"
    shape = args.model or ("small" if args.small else default)
    if shape not in model_choices():
        raise unknown_choice("--model", shape, model_choices())
    dname = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if dname not in DTYPES:
        raise unknown_choice("--dtype", dname, DTYPES)
    batch_n, seq = args.batch or (4 if args.small else 8), args.seq or (64 if args.small else 128)
    steps = args.steps if args.steps is not None else (2 if args.small else (5 if args.e2e else 3))
    seconds = args.cell_seconds if args.cell_seconds is not None else (0.0 if args.small else CELL_SECONDS)
    if seconds < 0:
        raise RmpeftError(f"--cell-seconds {seconds:g}: must be at least 0")
    if args.rounds < 1:
        raise RmpeftError(f"--rounds {args.rounds}: must be at least 1")
    warmup = args.warmup if args.warmup is not None else 1
    if args.clock == "cpu" and device.type == "cuda":
        raise RmpeftError("--clock cpu measures CPU work; GPU runs are timed with --clock wall")
    threads = args.threads or (1 if args.small else None)
    if threads and device.type == "cpu":
        torch.set_num_threads(threads)
    if device.type == "cpu":
        keep_freed_memory()  # as a CPU run does (rmpeft.run.make_accelerator)
    sparse_names = [n for n in available_backends(device) if n != "dense"]
    backends = args.backends or [*sparse_names, "dense"]
    for b in backends:
        if b not in ("torch", "spops", "triton", "dense"):
            raise unknown_choice("--backends", b, ("torch", "spops", "triton", "dense"))
        if b not in available_backends(device):
            raise RmpeftError(f"--backends {b}: not available on {device.type} "
                              f"(available: {', '.join(available_backends(device))})")

    source = pretrained_source(shape) if args.e2e and not args.random_weights else None
    model = load_pretrained(source, DTYPES[dname], device) if source else build_model(shape, DTYPES[dname], device)
    total = count_parameters(model)
    if args.e2e:
        return _run_e2e(args, model, shape, dname, device, steps, warmup, seconds, source)
    targets = sum(m.weight.numel() for n, m in model.named_modules()
                  if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in TARGETS)
    rows = plan_rows(args.ratios, backends, targets / total, not args.only_masking, shira_entries(model) / total)
    batch = make_batch(model.config.vocab_size, batch_n, seq, device)
    runnable = [r for r in rows if not r.note.startswith("skipped")]
    reset_strategy_decisions()
    import peft  # noqa: F401  (imported before the objects below are frozen)

    gc.collect()
    gc.freeze()  # the libraries' objects: later collections only scan what the rows create

    # Timing: all rows in turn (each on its own model copy), or row after row on the one model.
    if args.sequential:
        times: dict[str, list[list[float]]] = {r.label: [] for r in runnable}
        for _ in range(args.rounds):
            for row in runnable:
                times[row.label].append(run_row(model, row, batch, total, device, warmup, steps, None, args.clock))
    else:
        times = time_rows_in_turn(model, runnable, batch, total, device, warmup, steps, args.rounds, args.clock)
    # Memory: one step per row on the one model, after all timings (see Memory).
    if device.type == "cuda" or Memory.cpu_supported():
        if device.type == "cpu":
            Memory.prepare_cpu()
        mem = Memory(device)
        run_row(model, BenchRow("floor"), batch, total, device, 0, 1, None)  # one-time buffers land before baselines
        for row in runnable:
            saved = (row.trainable_params, row.trainable_state_bytes)
            run_row(model, row, batch, total, device, 0, 1, mem)
            row.trainable_params, row.trainable_state_bytes = saved

    summarize(runnable, times)
    if args.json:
        keys = ("method", "ratio", "backend", "step_s", "spread", "ratio_to_floor", "ratio_to_lora",
                "round_step_s", "peak_mem_bytes", "trainable_params", "trainable_state_bytes")
        print(json.dumps([{k: asdict(r)[k] for k in keys} for r in rows], indent=1))
        return 0
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else f", {torch.cuda.get_device_name()}"
    print(f"rmpeft-bench: {shape}-shaped random {model.config.model_type.upper()} ({total / 1e6:.1f}M parameters; "
          f"q_proj/v_proj hold {100 * targets / total:.2f}%), batch {batch_n} x {seq} tokens, {dname}, "
          f"{device.type}{threads}, torch {torch.__version__}")
    how = ("rows one after another on one model" if args.sequential else
           "every row on its own model copy, one step of each in turn")
    print(f"step time ({args.clock} clock; {how}): per round, the median of {steps} timed AdamW steps per row "
          f"({warmup} warm-up each); over {args.rounds} round(s): the median, the spread (max - min) of the "
          f"round medians and the median of the per-round ratios to the floor and to LoRA; peak memory: above "
          f"the frozen model, during attach + step")
    print(table(rows))
    print("targets:")
    for line in check_targets(rows):
        print("  " + line)
    chosen = strategy_decisions()
    if chosen:
        where = strategy_cache_file()
        print(f"torch backend strategies (shape/entries/tokens/dtype/device: choice; stored in "
              f"{where or 'memory only'}):")
        for key, choice in chosen.items():
            print(f"  {key.removeprefix('torch/')}: {choice}")
    return 0


def _run_e2e(args: argparse.Namespace, model: nn.Module, shape: str, dname: str, device: torch.device,
             steps: int, warmup: int, seconds: float, source: str | None) -> int:
    total = count_parameters(model)
    autocast = DTYPES[dname] if dname != "fp32" else None
    rows = run_e2e(model, total, device, args.small, warmup, steps, autocast, seconds, args.rounds)
    cpu_bf16 = cpu_has_bf16() if device.type == "cpu" else None
    wanted = tuple(args.modes) if args.modes else (
        ("bf16", "checkpointing") if device.type == "cuda" or cpu_bf16 else ("checkpointing",))
    wanted = tuple(m for m in wanted if not (m == "bf16" and autocast is not None))   # already the run's precision
    modes = run_modes(model, total, device, args.small, warmup, steps, autocast, seconds, args.rounds, wanted)
    measurable = device.type == "cuda" or Memory.cpu_supported()
    if device.type == "cpu" and Memory.cpu_supported():
        Memory.prepare_cpu()
    mem = memory_rows(model, device, args.small) if measurable else []
    if measurable:
        mode_memory(model, total, device, args.small, modes, autocast)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if args.json:
        print(json.dumps({"model": shape, "weights": source or "random", "throughput": [asdict(r) for r in rows],
                          "memory": [{"scoring": n, "peak_mem_bytes": b} for n, b in mem],
                          "modes": [asdict(r) for r in modes], "cpu_bf16_instructions": cpu_bf16,
                          "model_bytes": model_bytes}, indent=1))
        return 0
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name()
    what = f"{shape} (pretrained weights from {source})" if source else \
        f"{shape}-shaped random {model.config.model_type.upper()}"
    print(f"rmpeft-bench --e2e: {what} ({total / 1e6:.1f}M "
          f"parameters, vocabulary {model.config.vocab_size}), {dname}, {device.type}, {where}; per cell and round "
          f"({args.rounds} round(s)), {warmup} warm-up batch(es), then at least {steps} timed batches per path, more "
          f"until the cell has run {seconds:g} s (at most {MAX_STEPS}), the two paths in turn; ex/s from the median "
          f"batch time; speed-up: the median of the per-batch ratios of all rounds, with their quartiles")
    print(e2e_table(rows))
    if mem:
        print(memory_table(mem, model_bytes))
    base = dname if autocast is not None else "fp32"
    bf16_note = "" if cpu_bf16 is None else f"; this CPU {'has' if cpu_bf16 else 'has no'} bf16 instructions"
    if "bf16" not in wanted and autocast is None:
        bf16_note += " (bf16 rows: --modes bf16 checkpointing)"
    print(f"precision and activation checkpointing: Random Masking 0.1%, shared-prompt scoring, {base} against "
          f"{' and against '.join(wanted)} (record train: batch 2), batches in turn; speed-up: the median of the "
          f"per-batch ratios ({base} time / mode time); mem: one training batch, above the model{bf16_note}")
    print(modes_table(modes, base))
    print("targets:")
    for line in check_e2e_targets(rows) + check_mode_targets(modes, cpu_bf16):
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
