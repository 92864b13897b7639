"""Experiment loggers. The run record on disk is always written by the trainer; a logger mirrors it
to an external service. ``logger=none`` (default) logs nothing."""

from __future__ import annotations

from typing import Any


class RunLogger:
    """No-op logger; subclasses mirror a run to an external service. Never raises into training."""

    def log_config(self, config: dict[str, Any]) -> None: ...

    def log_epoch(self, epoch: int, train_loss: float, val_metric: float | None) -> None: ...

    def log_summary(self, record: dict[str, Any]) -> None: ...

    def finish(self) -> None: ...


def build_logger(cfg: Any) -> RunLogger:
    """The logger selected by ``cfg.logger.name``."""
    return RunLogger()
