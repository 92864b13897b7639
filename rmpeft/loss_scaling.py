"""What fp16 training with DeepSpeed's dynamic loss scaling does with a step whose gradients overflow.

The paper's runs used DeepSpeed fp16 with dynamic loss scaling: a step whose gradients are not finite
is skipped (no update) and the loss scale is lowered; the run stops only when the scale is already at
its minimum and the gradients overflow again. rmpeft trains in fp32 or bf16 and scales no loss, so
under ``trainer.nonfinite_steps=skip`` (``protocol=paper``) it keeps the part that decides a run's
fate: :class:`OverflowBudget` replays the scaler's bookkeeping on the non-finite steps, skips them and
reports divergence exactly when DeepSpeed would have stopped the run.

The bookkeeping follows ``DynamicLossScaler.update_scale`` in DeepSpeed's
``deepspeed/runtime/fp16/loss_scaler.py`` with DeepSpeed's fp16 defaults (``initial_scale_power``
16, ``hysteresis`` 2, ``loss_scale_window`` 1000, ``min_loss_scale`` 1, no consecutive hysteresis):
from a fresh start the first overflow spends the hysteresis, each further one halves the scale, and
the 18th overflow (2 + 16) arrives at the minimum scale and ends the run, unless 1000 clean steps
doubled the scale in between. A single worker's ``scale_factor`` is 2.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OverflowBudget:
    """DeepSpeed's dynamic loss scale state, advanced once per optimizer step."""

    scale: float = 2.0 ** 16
    min_scale: float = 1.0
    hysteresis: int = 2
    window: int = 1000
    factor: float = 2.0
    skipped: int = 0

    def __post_init__(self) -> None:
        self._hysteresis_left = self.hysteresis
        self._step = 0
        self._last_overflow = -1

    def step(self, overflow: bool) -> bool:
        """Record one optimizer step; True when DeepSpeed would stop the run here (an overflow at the
        minimum scale)."""
        stop = False
        if overflow:
            self.skipped += 1
            if self.hysteresis == 1 or self._hysteresis_left == 1:
                if self.scale <= self.min_scale:
                    stop = True
                else:
                    self.scale = max(self.scale / self.factor, self.min_scale)
            else:
                self._hysteresis_left -= 1
            self._last_overflow = self._step
        elif (self._step - self._last_overflow) % self.window == 0:
            self._hysteresis_left = self.hysteresis
            self.scale *= self.factor
        self._step += 1
        return stop
