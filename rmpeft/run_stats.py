"""What a run measures about itself: time and examples spent training and evaluating, peak memory."""

from __future__ import annotations

import logging
import resource
import threading
from collections.abc import Callable
from typing import Any

import torch

from rmpeft.records import RunRecord

log = logging.getLogger(__name__)


def peak_memory(device: torch.device) -> int:
    """Peak memory of this process: allocated GPU memory on CUDA, else the peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def examples_in(batch: Any) -> int:
    """Examples in one training batch (text: one per candidate group; images: one per label)."""
    groups = getattr(batch, "num_candidates", None)
    if groups is not None:
        return len(groups)
    labels = getattr(batch, "labels", None)
    return int(labels.shape[0]) if labels is not None else 0


class Timer:
    """Seconds and examples spent training and evaluating: the record's throughput fields."""

    def __init__(self) -> None:
        self.train_s = self.eval_s = 0.0
        self.train_examples = self.eval_examples = 0

    def fill(self, rec: RunRecord) -> None:
        rec.train_s, rec.eval_s = round(self.train_s, 3), round(self.eval_s, 3)
        rec.train_examples_per_s = round(self.train_examples / self.train_s, 3) if self.train_s > 0 else None
        rec.eval_examples_per_s = round(self.eval_examples / self.eval_s, 3) if self.eval_s > 0 else None


class Heartbeat:
    """Calls ``beat`` every ``every_s`` seconds from a daemon thread while the block runs, whatever
    the run is doing (loading a model, training, evaluating, measuring): a record whose heartbeat
    stops is one whose process died (see ``rmpeft.records.is_stale``)."""

    def __init__(self, beat: Callable[[], None], every_s: float) -> None:
        self._beat, self._every = beat, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rmpeft-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._beat()
            except Exception as e:  # a missed heartbeat must never stop the run
                log.debug("heartbeat failed: %s", e)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
