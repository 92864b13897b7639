"""The benchmark's text table and the sparse engine's targets, from measured rows."""

from __future__ import annotations

from rmpeft.bench.steps import Row


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
