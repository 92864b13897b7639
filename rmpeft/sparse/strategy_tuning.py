"""Pick among several equivalent strategies by measurement, once per problem shape and machine.

The sparse backends have several ways to compute the same thing (a patched weight versus a dense
product plus a sparse one; three SDDMM kernels). Which one wins depends on the matrix shape, the
number of trainable entries, the number of tokens, the dtype, the device and the thread count, so each
choice is made by measurement the first time a problem of a given *key* is seen. Keys bucket the sizes
(powers of two) so that layers of the same shape share one decision.

A decision must not follow one moment's noise on a shared machine, so :func:`choose`

* times the candidates interleaved (one call of each per round, ``REPS`` rounds after a warm-up), so that
  a change of machine load hits all of them alike, and compares their medians;
* keeps the *default* (the backend's fixed rule) unless a challenger's median is faster by more than
  ``MARGIN``;
* stores the decision on disk (``<cache dir>/strategies.json``, the cache dir being
  :func:`set_strategy_cache_dir`'s, else ``$RMPEFT_CACHE``, else ``~/.cache/rmpeft``) under a key that also names
  the machine (CPU or GPU model, torch threads, torch version), so later processes reuse it instead of
  measuring again.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Hashable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

REPS = 7            # timed rounds per decision (after one warm-up call of every candidate)
MARGIN = 0.10       # a challenger replaces the default only when its median is this much faster
DROP_AFTER = 3.0    # a candidate this many times slower than the best after a round stops being timed
CACHE_FILE = "strategies.json"

# key -> chosen strategy name; shared by every layer and backend of the process.
_DECISIONS: dict[Hashable, str] = {}
_cache_dir: Path | None = None
_cache_dir_set = False


def bucket(n: int) -> int:
    """Power-of-two bucket of a size (0 stays 0)."""
    return 0 if n <= 0 else 1 << math.ceil(math.log2(n))


def set_strategy_cache_dir(path: str | Path | None) -> None:
    """Where decisions are stored (``None``: only in memory, for this process)."""
    global _cache_dir, _cache_dir_set
    _cache_dir, _cache_dir_set = (None if path is None else Path(path)), True


def strategy_cache_file() -> Path | None:
    """The file decisions are read from and written to, or None when they stay in memory."""
    if _cache_dir_set:
        return None if _cache_dir is None else _cache_dir / CACHE_FILE
    root = os.environ.get("RMPEFT_CACHE") or str(Path.home() / ".cache" / "rmpeft")
    return Path(root) / CACHE_FILE


@lru_cache(maxsize=None)
def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> str:
    """What a stored decision is valid for: the device model, torch threads (CPU) and torch version."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        where = f"{_processor()}, {torch.get_num_threads()} threads"
    else:
        where = device.type
    return f"{where}, torch {torch.__version__}"


def _disk_key(key: Hashable, device: torch.device) -> str:
    parts = key if isinstance(key, tuple) else (key,)
    return "/".join(str(p) for p in parts) + f" @ {machine(device)}"


def _load(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(path: Path, disk_key: str, name: str) -> None:
    """Add one decision to the file (read, merge, atomic replace; an unwritable cache is not an error)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _load(path)
        data[disk_key] = name
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".strategies-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)             # readable like the rest of the cache (mkstemp makes it private)
        os.replace(tmp, path)
    except OSError:
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> Callable[[], float]:
    """CUDA: wall time (around a synchronisation). CPU: the process' CPU time, which other jobs on a shared
    machine do not inflate the way they inflate wall time."""
    return time.perf_counter if device.type == "cuda" else time.process_time


def time_call(fn: Callable[[], Any], device: torch.device, reps: int = REPS) -> float:
    """Median time of ``reps`` calls of ``fn`` in seconds, after one warm-up call."""
    now = clock(device)
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = now()
        fn()
        _sync(device)
        times.append(now() - start)
    return statistics.median(times)


def measure(candidates: dict[str, Callable[[], Any]], device: torch.device,
            reps: int = REPS) -> dict[str, list[float]]:
    """Interleaved timings (seconds) of every candidate that runs: one call of each per round, after one
    warm-up call each. A kernel missing for this dtype/device is no candidate; one that is ``DROP_AFTER``
    times slower than the best so far stops being timed. Raises the first error when none runs."""
    now = clock(device)
    live: dict[str, Callable[[], Any]] = {}
    errors: list[Exception] = []
    for name, fn in candidates.items():
        try:
            fn()
            _sync(device)
            live[name] = fn
        except (RuntimeError, NotImplementedError) as e:
            errors.append(e)
    if not live:
        raise errors[0]
    times: dict[str, list[float]] = {n: [] for n in live}
    for _ in range(reps):
        for name, fn in live.items():
            start = now()
            fn()
            _sync(device)
            times[name].append(now() - start)
        best = min(min(t) for n, t in times.items() if n in live)
        live = {n: f for n, f in live.items() if min(times[n]) <= DROP_AFTER * best}
    return times


def decide(times: dict[str, list[float]], default: str | None, margin: float = MARGIN) -> str:
    """The candidate with the lowest median, unless ``default`` is within ``margin`` of it."""
    medians = {n: statistics.median(t) for n, t in times.items()}
    best = min(medians, key=medians.get)
    if default in medians and medians[best] >= (1.0 - margin) * medians[default]:
        return default
    return best


def choose(key: Hashable, candidates: dict[str, Callable[[], Any]], device: torch.device,
           default: str | None = None) -> str:
    """The strategy for ``key``: remembered in this process, else stored on disk for this machine, else
    measured (:func:`measure`, :func:`decide`) and stored."""
    if key in _DECISIONS:
        return _DECISIONS[key]
    path = strategy_cache_file()
    disk_key = _disk_key(key, device)
    name = _load(path).get(disk_key) if path is not None else None
    if name not in candidates:
        if len(candidates) == 1:
            name = next(iter(candidates))
        else:
            with torch.no_grad():
                name = decide(measure(candidates, device), default)
            if path is not None:
                _store(path, disk_key, name)
    _DECISIONS[key] = name
    return name


def strategy_decisions() -> dict[str, str]:
    """The choices made so far, as printable strings (for run records and benchmarks)."""
    return {"/".join(str(k) for k in key) if isinstance(key, tuple) else str(key): v
            for key, v in _DECISIONS.items()}


def reset_strategy_decisions() -> None:
    """Forget this process' decisions (those stored on disk stay: delete the file to measure again)."""
    _DECISIONS.clear()
