"""Experiment loggers. The run record on disk is always written by the run's lifecycle
(:mod:`rmpeft.lifecycle`); a logger mirrors it to an external service. ``logger=none`` (default) logs nothing; ``logger=wandb`` mirrors each run to
Weights & Biases (:mod:`rmpeft.reporting.sources` reads such runs back as records).

The lifecycle calls ``build_logger(cfg)``, then ``log_config(resolved)``; the trainer ``log_epoch(...)``
after each epoch; the lifecycle ``log_summary(record)`` at the end and ``finish()``. A logger never raises into training: a
wandb failure (not installed, no network, bad key) warns once and turns the logger into a no-op.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from rmpeft.errors import unknown_choice
from rmpeft.identity import config_value
from rmpeft.records import format_number, get_path, method_tag, setting_hash
from rmpeft.validation import LOGGERS, WANDB_MODES

# Names under which a run's curves live in wandb (kept apart from the summary's record keys so that
# wandb's automatic "last value" summary never overwrites the best-epoch `val_metric`).
HISTORY_EPOCH = "epoch"
HISTORY_TRAIN_LOSS = "train/loss"
HISTORY_VAL_METRIC = "val/metric"


class RunLogger:
    """No-op logger; subclasses mirror a run to an external service. Never raises into training."""

    def log_config(self, config: dict[str, Any]) -> None: ...

    def log_epoch(self, epoch: int, train_loss: float, val_metric: float | None) -> None: ...

    def log_summary(self, record: dict[str, Any]) -> None: ...

    def finish(self) -> None: ...


@dataclass
class WandbSettings:
    """Everything ``wandb.init`` gets, derived from the config (see conf/logger/wandb.yaml)."""

    project: str
    entity: str | None
    mode: str
    run_name: str
    group: str
    tags: list[str]
    dir: str | None = None
    init_timeout: float = 90.0
    config: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None   # wandb run id; a resumed run logs into its interrupted attempt's run


def derived_names(cfg: Any) -> tuple[str, str]:
    """(group, run name): the group is one table cell (model-task-method tag plus the setting hash of
    every other result-changing field, all LRs and seeds), the run name adds the LR and seed, e.g.
    ``opt-125m-rte-masking-r0.0001-3f2a9c01d4`` / ``...-lr0.01-s1``."""
    group = f"{get_path(cfg, 'model.name')}-{get_path(cfg, 'task.name')}-{method_tag(cfg)}-{setting_hash(cfg)}"
    return group, f"{group}-lr{format_number(get_path(cfg, 'optim.lr'))}-s{config_value(cfg, 'seed')}"


def wandb_settings(cfg: Any) -> WandbSettings:
    """Read ``cfg.logger`` (wandb fields) plus the run's identity; bad values are config errors."""
    mode = str(config_value(cfg, "logger.mode"))
    if mode not in WANDB_MODES:
        raise unknown_choice("logger.mode", mode, WANDB_MODES)
    group, run_name = derived_names(cfg)
    tags = [str(config_value(cfg, "name")), str(get_path(cfg, "model.name")), str(get_path(cfg, "task.name")),
            str(get_path(cfg, "method.name"))]
    for t in config_value(cfg, "logger.tags") or []:
        if str(t) not in tags:
            tags.append(str(t))
    return WandbSettings(
        project=str(config_value(cfg, "logger.project")),
        entity=config_value(cfg, "logger.entity"),
        mode=mode,
        run_name=str(config_value(cfg, "logger.run_name") or run_name),
        group=str(config_value(cfg, "logger.group") or group),
        tags=tags,
        dir=config_value(cfg, "logger.dir"),
        init_timeout=float(config_value(cfg, "logger.init_timeout")),
    )


_F = TypeVar("_F", bound=Callable[..., Any])


def _never_raises(method: _F) -> _F:
    """Run a logger method; on any exception warn once and disable the logger."""

    @functools.wraps(method)
    def wrapper(self: WandbLogger, *args: Any, **kwargs: Any) -> Any:
        if self.disabled:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - logging must never fail a training run
            self.give_up(e)
            return None

    return wrapper  # type: ignore[return-value]


class WandbLogger(RunLogger):
    """Mirror a run to wandb: resolved config, per-epoch curves, the final record as the summary."""

    def __init__(self, settings: WandbSettings):
        self.settings = settings
        self.run: Any = None
        self.disabled = False
        self.error: str | None = None
        self._status: str | None = None

    def give_up(self, error: BaseException) -> None:
        """Warn once and turn every later call into a no-op."""
        if self.disabled:
            return
        self.disabled = True
        self.error = f"{type(error).__name__}: {error}".splitlines()[0]
        warnings.warn(f"wandb logging disabled ({self.error}); the run record on disk is unaffected",
                      RuntimeWarning, stacklevel=3)

    def _start(self, config: dict[str, Any]) -> None:
        import wandb

        s = self.settings
        if wandb.run is not None:  # a previous run in this process that was not finished
            wandb.finish()
        if s.dir:
            Path(s.dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=s.project,
            entity=s.entity,
            mode=s.mode,
            name=s.run_name,
            group=s.group,
            tags=s.tags,
            dir=s.dir,
            id=s.run_id,
            resume="allow" if s.run_id else None,
            config=config,
            settings=wandb.Settings(init_timeout=s.init_timeout),
        )
        self.run.define_metric(HISTORY_EPOCH)
        self.run.define_metric(HISTORY_TRAIN_LOSS, step_metric=HISTORY_EPOCH)
        self.run.define_metric(HISTORY_VAL_METRIC, step_metric=HISTORY_EPOCH)

    @_never_raises
    def log_config(self, config: dict[str, Any]) -> None:
        if self.run is None:
            self._start(config)
        else:
            self.run.config.update(config, allow_val_change=True)

    @_never_raises
    def log_epoch(self, epoch: int, train_loss: float, val_metric: float | None) -> None:
        if self.run is None:
            self._start(self.settings.config)
        row: dict[str, Any] = {HISTORY_EPOCH: epoch, HISTORY_TRAIN_LOSS: train_loss}
        if val_metric is not None:
            row[HISTORY_VAL_METRIC] = val_metric
        self.run.log(row)

    @_never_raises
    def log_summary(self, record: dict[str, Any]) -> None:
        if self.run is None:
            self._start(record.get("config") or self.settings.config)
        self._status = record.get("status")
        self.run.summary.update(summary_from_record(record))

    def finish(self) -> None:
        """Close the wandb run, also after an earlier failure (so that it does not linger)."""
        run, self.run = self.run, None
        if run is None:
            return
        try:
            # A run finished without a summary (the training failed) is marked failed in wandb.
            run.finish(exit_code=0 if self._status in ("finished", "diverged") else 1)
        except Exception as e:  # noqa: BLE001
            self.give_up(e)


def summary_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record without its config (logged as the run config) and epochs (logged as history)."""
    return {k: v for k, v in record.items() if k not in ("config", "epochs")}


def _is_secondary_process() -> bool:
    """True in the non-zero ranks of a multi-process (torchrun / accelerate) run: only rank 0 logs."""
    for var in ("RANK", "LOCAL_RANK"):
        v = os.environ.get(var)
        if v is not None and v.strip().isdigit() and int(v) != 0:
            return True
    return False


def build_logger(cfg: Any, run_id: str | None = None) -> RunLogger:
    """The logger selected by ``cfg.logger.name`` (``none`` when the group is absent); ``run_id``: the
    wandb run to log into (created, or resumed when it exists)."""
    name = str(get_path(cfg, "logger.name", "none"))
    if name == "none":
        return RunLogger()
    if name == "wandb":
        settings = wandb_settings(cfg)
        settings.run_id = run_id
        if _is_secondary_process():
            return RunLogger()
        return WandbLogger(settings)
    raise unknown_choice("logger", name, LOGGERS)
