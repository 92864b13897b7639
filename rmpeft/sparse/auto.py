"""``backend: auto``: the fastest sparse backend available on the device, by measurement.

Candidates are the available backends other than the dense reference. With one candidate (plain CPU
installs: torch) nothing is timed. Otherwise one forward+backward of a synthetic layer with the most
common target shape and the median number of trainable entries, on ``AUTO_TOKENS`` tokens, is timed
for each candidate, and the fastest wins. On the meta device (parameter counting) the first candidate
is taken without timing.
"""

from __future__ import annotations

from collections import Counter
from statistics import median

import torch

from rmpeft.sparse import autotune
from rmpeft.sparse.base import available_backends, backends
from rmpeft.sparse.sampling import sample_positions

AUTO_TOKENS = 1024          # tokens of the synthetic batch (8 x 128, the paper's batch of short prompts)
PREFERENCE = ("torch", "triton", "spops")


def candidates(device: torch.device, shape: tuple[int, int]) -> list[str]:
    avail = set(available_backends(device))
    return [n for n in PREFERENCE if n in avail and backends()[n].supports(*shape, device)]


def _time_backend(name: str, shape: tuple[int, int], nnz: int, dtype: torch.dtype, device: torch.device) -> float:
    out_features, in_features = shape
    gen = torch.Generator().manual_seed(0)
    index = sample_positions(out_features * in_features, nnz, gen).to(device)
    weight = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    values = torch.zeros(nnz, device=device, dtype=dtype, requires_grad=True)
    x = torch.randn(AUTO_TOKENS, in_features, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    backend = backends()[name]

    class _Layer:  # what backends may read from a module (spops keeps its CSR caches on it)
        pass

    layer = _Layer()
    layer.out_features, layer.in_features, layer.index = out_features, in_features, index
    layer.register_buffer = lambda n, t, persistent=False: setattr(layer, n, t)
    backend.prepare(layer)

    def step() -> None:
        y = backend.linear(x, weight, None, values, index, layer)
        torch.autograd.grad(y.sum(), (x, values))

    with torch.enable_grad():
        return autotune.time_call(step, device, reps=3)


def resolve_auto(device: torch.device, shapes: list[tuple[int, int]], counts: list[int],
                 dtype: torch.dtype) -> tuple[str, dict[str, float]]:
    """The backend ``auto`` stands for, and the timings (seconds) it was chosen on (empty if untimed)."""
    shape = Counter(shapes).most_common(1)[0][0]
    names = candidates(device, shape)
    if not names:
        return "torch", {}
    if len(names) == 1 or device.type == "meta":
        return names[0], {}
    nnz = int(median(counts)) if counts else 0
    timings = {n: _time_backend(n, shape, nnz, dtype, device) for n in names}
    return min(timings, key=timings.get), timings
