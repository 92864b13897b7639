"""``optim.lr=auto`` and its ``optim.lr_auto`` settings."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

AUTO = "auto"   # the value of optim.lr that asks for a predicted learning rate


def is_auto(lr: Any) -> bool:
    """Whether an ``optim.lr`` value asks for a predicted learning rate."""
    return isinstance(lr, str) and lr == AUTO


@dataclass(frozen=True)
class LRAutoSettings:
    """``optim.lr_auto``: the estimator, the training batches measured, the power-iteration steps of the
    curvature estimators, and an optional constant replacing the calibrated one."""

    estimator: str = "first_order"
    batches: int = 2
    power_iters: int = 3
    constant: float | None = None

    @classmethod
    def from_config(cls, optim: Any) -> LRAutoSettings:
        """The settings under ``optim.lr_auto`` (defaults where absent)."""
        node = optim.get("lr_auto") if hasattr(optim, "get") else None
        if node is None:
            return cls()
        data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
