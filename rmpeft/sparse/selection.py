"""Which backend a masked model computes with: :func:`select_backend` resolves ``method.backend`` for the
training device; :func:`use_backend` switches every masked layer of a model for the duration of a block.

``auto`` is the fastest sparse backend available on the device, by measurement. Candidates are the
available backends other than the dense reference. With one candidate (plain CPU installs: torch)
nothing is timed. Otherwise one forward+backward of a synthetic layer with the most common target shape
and the median number of trainable entries, on ``AUTO_TOKENS`` tokens, is timed for each candidate, and
the fastest wins. On the meta device (parameter counting) the first candidate is taken without timing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from statistics import median
from typing import Any

import torch
from torch import nn

from rmpeft.errors import unknown_choice
from rmpeft.sparse import strategy_tuning
from rmpeft.sparse.base import SparseBackend
from rmpeft.sparse.layers import MaskedLinear
from rmpeft.sparse.registry import BACKEND_NAMES, CONCRETE_NAMES, available_backends, backends, get_backend
from rmpeft.sparse.mask_sampling import sample_positions
from rmpeft.sparse.torch_backend import TorchBackend

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
        return strategy_tuning.time_call(step, device, reps=3)


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


def select_backend(requested: str, device: torch.device, shapes: list[tuple[int, int]], counts: list[int],
                   dtype: torch.dtype, autotune: bool = True) -> tuple[SparseBackend, dict[str, Any]]:
    """The backend for ``method.backend=requested`` on ``device``, and the facts for the run record.

    ``shapes`` and ``counts`` are the target matrices' shapes and their (nonzero) trainable entries,
    used by ``auto``. ``autotune`` is the torch backend's setting (time its strategies, or a fixed rule).
    Facts: ``backend_requested``, ``backend`` and, when ``auto`` timed candidates, ``backend_timings_s``.
    """
    if requested not in BACKEND_NAMES:
        raise unknown_choice("method.backend", requested, BACKEND_NAMES)
    facts: dict[str, Any] = {"backend_requested": requested}
    name = requested
    if requested == "auto":
        name, timings = resolve_auto(device, shapes, counts, dtype)
        if timings:
            facts["backend_timings_s"] = timings
    facts["backend"] = name
    if name == "torch":
        return TorchBackend(autotune=autotune), facts
    if device.type == "meta":  # counting parameters only: nothing will run
        return backends()[name], facts
    return get_backend(name, device), facts


@contextmanager
def use_backend(model: nn.Module, name: str) -> Iterator[int]:
    """Compute every Random Masking layer of ``model`` with the backend ``name`` inside the block.

    Yields the number of layers switched (those not already on ``name``) and restores each layer's own
    backend on exit, also after an error. E.g. ``use_backend(model, "dense")``: plain autograd through a
    dense delta, so double backward is exact (sharpness), at the memory cost of one dense delta per layer.
    """
    if name not in CONCRETE_NAMES:
        raise unknown_choice("sparse backend", name, CONCRETE_NAMES)
    swapped: list[tuple[MaskedLinear, SparseBackend]] = []
    try:
        for module in model.modules():
            if isinstance(module, MaskedLinear) and module.backend.name != name:
                backend = get_backend(name, module.values.device)
                backend.prepare(module)
                swapped.append((module, module.backend))
                module.backend = backend
        yield len(swapped)
    finally:
        for module, backend in swapped:
            module.backend = backend
