"""What test modules share besides fixtures: repository paths, the compose helper, and a way to
interrupt a training run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"


def compose_train(overrides: list[str]):
    """The resolved `train` config for the given command-line overrides (Hydra compose API)."""
    from rmpeft.config import compose_config

    return compose_config(overrides)


def interrupt_training_at(monkeypatch: Any, n: int) -> Callable[..., Any]:
    """Make the n-th training micro-batch raise KeyboardInterrupt (Ctrl-C, or a job killed for requeue);
    returns the real loss function."""
    import rmpeft.trainer as trainer

    real, calls = trainer.batch_loss, []

    def loss(run, batch):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(run, batch)

    monkeypatch.setattr(trainer, "batch_loss", loss)
    return real


def read_local_file(task: str, path: str | Path, role: str = "train") -> list[dict[str, Any]]:
    """Raw records of one official file of ``task``, read by its task's reader; ``role`` is the split it
    serves (train/test)."""
    from rmpeft.data.tasks import get_task

    return get_task(task).read(Path(path), role)


def expected_state_bytes(param_numels: list[int], element_size: int, position_bytes: int,
                         step_bytes: int = 4) -> int:
    """AdamW's trainable state: values + gradients + two moments (element_size each per entry), one step
    counter per parameter tensor, plus the mask positions."""
    return 4 * element_size * sum(param_numels) + step_bytes * len(param_numels) + position_bytes
