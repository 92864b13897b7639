"""Resuming an interrupted run from the end of its last completed epoch.

At every epoch end the trainer writes ``<run_dir>/resume.pt`` (atomically): the trainable values
(only those: a PEFT run's file stays small), the optimizer and schedule states, the method's own
training state (e.g. AdaLoRA's importance scores), the random-number generators, the best epoch so
far with its weights, the record's epochs and the wandb run id. A relaunch of the same run (same
identity: a SLURM requeue after a time limit or preemption, or a rerun after a crash) continues from
it, and its result equals an uninterrupted run's: each epoch's data order depends only on the seed
and the epoch. The file is removed once the run has a result; ``force=true`` starts afresh.

What is not resumed: the part of an epoch after its last end (a requeued run repeats it), and runs
sharded with FSDP or DeepSpeed (their optimizer states live in shards; they start afresh).
"""

from __future__ import annotations

import os
import random
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmpeft.run_folder import share_like_umask

RESUME_FILE = "resume.pt"


@dataclass
class ResumeState:
    """What a run needs to continue after ``epoch`` completed epochs."""

    identity_hash: str
    epoch: int
    step: int
    params: list[torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    method: dict[str, Any]
    rng: dict[str, Any]
    best: dict[str, Any]                 # {"val", "loss", "epoch", "state": [tensors]}
    epochs: list[dict[str, Any]]         # the record's epochs so far
    timer: dict[str, float]
    skipped_steps: int | None = None
    overflow_budget: dict[str, Any] | None = None
    wandb_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def new_wandb_id(identity_hash: str) -> str:
    """A wandb run id for a new attempt of a run (a resumed attempt keeps its predecessor's)."""
    return f"{identity_hash}-{uuid.uuid4().hex[:8]}"


def rng_states() -> dict[str, Any]:
    """Every generator a training step may draw from (dropout, sampling)."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                              "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(folder: Path, state: ResumeState) -> None:
    """Write ``resume.pt`` atomically (a reader sees the previous epoch's file or this one)."""
    folder = Path(folder)
    fd, tmp = tempfile.mkstemp(prefix=f".{RESUME_FILE}.", dir=folder)
    share_like_umask(tmp, fd)   # mkstemp makes it private; a results folder may be shared
    os.close(fd)
    try:
        torch.save(state.__dict__, tmp)
        os.replace(tmp, folder / RESUME_FILE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(folder: Path, identity_hash: str) -> ResumeState | None:
    """The resume state of this run in ``folder``; None when there is none, or it belongs to another
    identity (then it is ignored)."""
    path = Path(folder) / RESUME_FILE
    if not path.is_file():
        return None
    data = torch.load(path, map_location="cpu", weights_only=False)   # written by rmpeft itself
    if data.get("identity_hash") != identity_hash:
        return None
    return ResumeState(**data)


def peek_wandb_id(folder: Path, identity_hash: str) -> str | None:
    """The wandb run id of the attempt a relaunch would resume, if any."""
    state = load(folder, identity_hash)
    return state.wandb_id if state else None


def discard(folder: Path) -> None:
    (Path(folder) / RESUME_FILE).unlink(missing_ok=True)
