"""Pick the fastest of several equivalent strategies by timing them once per problem shape.

The sparse backends have several ways to compute the same thing (a merged weight versus a dense
product plus a sparse one; three SDDMM kernels). Which one wins depends on the matrix shape, the
number of trainable entries, the number of tokens, the dtype and the device, so each choice is made
by measurement the first time a problem of a given *key* is seen and cached for the process.
Keys bucket the sizes (powers of two) so that layers of the same shape share one decision.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from typing import Any

import torch

# key -> chosen strategy name; shared by every layer and backend of the process.
_DECISIONS: dict[Hashable, str] = {}


def bucket(n: int) -> int:
    """Power-of-two bucket of a size (0 stays 0)."""
    return 0 if n <= 0 else 1 << math.ceil(math.log2(n))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, reps: int = 3) -> float:
    """Best-of-``reps`` time of ``fn`` in seconds, after one warm-up call (min is robust to noise).

    On CUDA: wall time around a synchronisation. On CPU: the process' CPU time, which other jobs on a
    shared machine do not inflate the way they inflate wall time.
    """
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    fn()
    _sync(device)
    best = math.inf
    for _ in range(reps):
        start = clock()
        fn()
        _sync(device)
        best = min(best, clock() - start)
    return best


def choose(key: Hashable, candidates: dict[str, Callable[[], Any]], device: torch.device) -> str:
    """The fastest candidate for ``key``: measured on first use, then cached."""
    if key in _DECISIONS:
        return _DECISIONS[key]
    if len(candidates) == 1:
        name = next(iter(candidates))
    else:
        timings: dict[str, float] = {}
        errors: list[Exception] = []
        with torch.no_grad():
            for cand, fn in candidates.items():
                try:  # a kernel missing for this dtype/device is simply not a candidate
                    timings[cand] = time_call(fn, device)
                except (RuntimeError, NotImplementedError) as e:
                    errors.append(e)
        if not timings:
            raise errors[0]
        name = min(timings, key=timings.get)
    _DECISIONS[key] = name
    return name


def strategy_decisions() -> dict[str, str]:
    """The choices made so far, as printable strings (for run records and benchmarks)."""
    return {"/".join(str(k) for k in key) if isinstance(key, tuple) else str(key): v
            for key, v in _DECISIONS.items()}


def reset_strategy_decisions() -> None:
    """Forget every decision (tests, benchmarks that change the machine load)."""
    _DECISIONS.clear()
