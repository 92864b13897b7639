"""What a run measures about itself: time and examples spent training and evaluating, peak memory."""

from __future__ import annotations

import resource
from typing import Any

import torch

from rmpeft.records import RunRecord


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
