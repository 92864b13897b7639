"""GPU correctness smoke: what runs on a GPU that no CPU test can reach.

    python scripts/gpu_smoke.py backends         # every sparse backend against the dense reference
    python scripts/gpu_smoke.py records DIR...   # one line per run record under DIR (status, metrics)

``backends`` compares each available backend's output and gradients (input and values) with the dense
reference's on the device (CUDA when present, else CPU), in fp32 and under bf16 autocast, on a target
shape of OPT-1.3b (2048 x 2048, 1024 tokens) at 0.1% and 1% of entries, and exits 1 when one differs beyond the tolerance.
``records`` prints the runs of ``scripts/gpu_smoke.sh`` side by side. Called by that script.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from rmpeft.records import read_record
from rmpeft.sparse import available_backends, get_backend
from rmpeft.sparse.dense import DenseBackend
from rmpeft.sparse.layers import MaskedLinear
from rmpeft.sparse.mask_sampling import sample_positions

# Relative error (max |a - b| / max |b|) a backend may show against the dense reference: fp32 differs by
# summation order only; bf16 rounds the product's inputs and output to 8 bits of mantissa.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def _outputs(backend_name: str, device: torch.device, dtype: torch.dtype, size: int, tokens: int,
             nnz: int) -> list[torch.Tensor]:
    """Output, input gradient and values' gradient of one masked ``size x size`` layer on ``tokens`` rows."""
    gen = torch.Generator().manual_seed(0)
    base = nn.Linear(size, size).requires_grad_(False)
    with torch.no_grad():
        base.weight.copy_(torch.randn(size, size, generator=gen) * 0.02)
        base.bias.copy_(torch.randn(size, generator=gen) * 0.02)
    index = sample_positions(size * size, nnz, gen)
    backend = DenseBackend() if backend_name == "dense" else get_backend(backend_name, device)
    layer = MaskedLinear(base, index, backend).to(device)
    with torch.no_grad():
        layer.values.copy_(torch.randn(nnz, generator=gen).to(device) * 0.02)
    x = torch.randn(tokens, size, generator=gen).to(device).requires_grad_(True)
    gy = torch.randn(tokens, size, generator=gen).to(device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        y = layer(x)
    gx, gv = torch.autograd.grad(y, (x, layer.values), gy.to(y.dtype))
    return [t.float() for t in (y, gx, gv)]


def check_backends(size: int = 2048, tokens: int = 1024) -> int:
    """0 when every available backend matches the dense reference (OPT-1.3b's target shape by default)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = [n for n in available_backends(device) if n != "dense"]
    print(f"gpu_smoke: backends on {device}: {', '.join(names)} against dense")
    failed = 0
    for dtype in (torch.float32, torch.bfloat16):
        for nnz in (size * size // 1000, size * size // 100):   # 0.1% and 1% of the matrix
            ref = _outputs("dense", device, dtype, size, tokens, nnz)
            for name in names:
                got = _outputs(name, device, dtype, size, tokens, nnz)
                errors = [((g - r).abs().max() / r.abs().max().clamp_min(1e-30)).item() for g, r in zip(got, ref)]
                ok = max(errors) <= TOLERANCE[dtype]
                failed += not ok
                print(f"  {'ok  ' if ok else 'FAIL'} {name:7s} {str(dtype).removeprefix('torch.'):9s} nnz {nnz:6d}: "
                      "relative error output {:.1e}, grad input {:.1e}, grad values {:.1e}".format(*errors))
    return 1 if failed else 0


def _metric(value: object) -> str:
    return f"{value:6.3f}" if isinstance(value, (int, float)) else f"{'-':>6s}"


def print_records(roots: list[str]) -> int:
    """One line per run record under ``roots``; 1 when there is none or one did not finish."""
    rows = []
    for root in roots:
        for path in sorted(Path(root).rglob("record.json")):
            rec = read_record(path.parent) or {}
            cfg = rec.get("config", {})
            method = cfg.get("method", {})
            rows.append((f"{method.get('name', '?')}", str(method.get("backend", "-")),
                         str((rec.get("method_state") or {}).get("backend", "-")),
                         str(cfg.get("protocol", {}).get("name", "-")), str(cfg.get("trainer", {}).get("device")),
                         str(cfg.get("trainer", {}).get("precision")), rec.get("status", "?"),
                         rec.get("val_metric"), rec.get("test_metric")))
    print(f"{'method':20s} {'backend':8s} {'used':8s} {'protocol':9s} {'device':6s} {'precision':9s} "
          f"{'status':9s} {'val':>6s} {'test':>6s}")
    bad = 0
    for method, asked, used, protocol, device, precision, status, val, test in rows:
        bad += status != "finished"
        print(f"{method:20s} {asked:8s} {used:8s} {protocol:9s} {device:6s} {precision:9s} {status:9s} "
              f"{_metric(val)} {_metric(test)}")
    return 1 if bad or not rows else 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "backends":
        sys.exit(check_backends())
    if len(sys.argv) >= 3 and sys.argv[1] == "records":
        sys.exit(print_records(sys.argv[2:]))
    sys.exit(__doc__)
