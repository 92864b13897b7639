"""Rows' figures from their timed steps, the benchmark's text table and the sparse engine's targets."""

from __future__ import annotations

import statistics

from rmpeft.bench.steps import BenchRow

# Targets for Random Masking at every ratio up to MAX_RATIO (step time; state and memory as below).
MAX_RATIO = 0.01
VS_FLOOR = 1.10
VS_LORA = 1.05


def summarize(rows: list[BenchRow], times: dict[str, list[list[float]]]) -> None:
    """Fill each row's step time, spread and ratios from ``times`` (label -> per round, the timed steps).

    Ratios are taken within each round (rows of one round ran close in time, so a slow spell of the
    machine hits both sides) and their median over rounds is reported.
    """
    medians = {label: [statistics.median(r) for r in rounds if r] for label, rounds in times.items()}
    floor = medians.get(BenchRow("floor").label)
    lora = medians.get(BenchRow("lora").label)
    for row in rows:
        m = medians.get(row.label)
        if not m:
            continue
        row.round_step_s = m
        row.step_s = statistics.median(m)
        row.spread = (max(m) - min(m)) / row.step_s if row.step_s else 0.0
        if floor and len(floor) == len(m) and all(floor):
            row.ratio_to_floor = statistics.median(a / b for a, b in zip(m, floor))
        if lora and len(lora) == len(m) and all(lora):
            row.ratio_to_lora = statistics.median(a / b for a, b in zip(m, lora))


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


def table(rows: list[BenchRow]) -> str:
    head = f"{'method':<19}{'ratio':>8}  {'backend':<8}{'step_s':>9}{'spread':>8}{'x floor':>9}{'x lora':>8}" \
           f"{'peak mem':>12}{'trainable':>12}{'state':>12}{'B/entry':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        per = f"{r.trainable_state_bytes / r.trainable_params:.2f}" if r.trainable_params else "-"
        step = "-" if r.step_s is None else f"{r.step_s:.4f}"
        spread = "-" if r.spread is None else f"{100 * r.spread:.0f}%"
        xf = "-" if r.ratio_to_floor is None else f"{r.ratio_to_floor:.3f}"
        xl = "-" if r.ratio_to_lora is None else f"{r.ratio_to_lora:.3f}"
        lines.append(f"{r.method:<19}{fmt_ratio(r.ratio):>8}  {(r.backend or '-'):<8}{step:>9}{spread:>8}{xf:>9}{xl:>8}"
                     f"{fmt_bytes(r.peak_mem_bytes):>12}{r.trainable_params:>12}"
                     f"{fmt_bytes(r.trainable_state_bytes):>12}{per:>9}" + (f"  {r.note}" if r.note else ""))
    return "\n".join(lines)


def check_targets(rows: list[BenchRow]) -> list[str]:
    """The sparse engine's targets, each as one line with the measured figure."""
    done = [r for r in rows if r.step_s is not None]
    lora = next((r for r in done if r.method == "lora"), None)
    sparse = [r for r in done if r.method == "masking" and r.backend not in ("dense",)]
    out = []

    def line(name: str, value: float, bound: float, fmt: str = ".3f") -> None:
        out.append(f"{'ok  ' if value <= bound else 'MISS'} {name}: {value:{fmt}} (target <= {bound:{fmt}})")

    low = [r for r in sparse if r.ratio is not None and r.ratio <= MAX_RATIO]
    share = fmt_ratio(MAX_RATIO)
    timed = [r for r in low if r.ratio_to_floor is not None]
    if timed:
        worst = max(timed, key=lambda r: r.ratio_to_floor)
        line(f"masking <= {share} step time vs floor (worst: {fmt_ratio(worst.ratio)} {worst.backend})",
             worst.ratio_to_floor, VS_FLOOR)
    timed = [r for r in low if r.ratio_to_lora is not None]
    if lora and timed:
        worst = max(timed, key=lambda r: r.ratio_to_lora)
        line(f"masking <= {share} step time vs LoRA (worst: {fmt_ratio(worst.ratio)} {worst.backend})",
             worst.ratio_to_lora, VS_LORA)
    counted = [r for r in sparse if r.trainable_params]
    if counted:
        worst = max(counted, key=lambda r: r.trainable_state_bytes / r.trainable_params)
        line(f"trainable state per entry, bytes ({fmt_ratio(worst.ratio)} {worst.backend}; AdamW adds a "
             f"4-byte step counter per matrix)", worst.trainable_state_bytes / worst.trainable_params, 20.0, ".3f")
    low = [r for r in low if r.ratio <= 0.001]
    if lora and lora.peak_mem_bytes is not None and low:
        worst = max(low, key=lambda r: r.peak_mem_bytes or 0)
        line(f"masking <= 0.1% peak memory vs LoRA ({fmt_ratio(worst.ratio)} {worst.backend})",
             (worst.peak_mem_bytes or 0) / max(1, lora.peak_mem_bytes), 1.0)
    return out
