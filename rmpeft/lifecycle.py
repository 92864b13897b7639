"""One run's record from launch to end, the same for training and for delta evaluation.

:class:`RecordedRun` checks the config (and resolves its ``auto`` fields and local data), reads the
record already in the run folder and, when it is a result, skips the run unless ``force=true``. As a
context manager it then makes the run's accelerator, claims the folder (:class:`~rmpeft.run_folder.RunLock`),
writes the ``running`` record and rewrites it every ``records.HEARTBEAT_S`` seconds while the block
runs. A block that raises leaves a ``failed`` record with the error's first line (and the exception
propagates); one that ends writes the record as filled. A forced rerun of a result writes
``record.next.json`` and replaces the old result only with a result of its own (``run_folder.promote_next``).
Every write is atomic and made by the main process only.

    recorded = RecordedRun(cfg)
    if recorded.done is not None:          # already a result: the record, with "skipped": true
        return recorded.done
    with recorded as rec:                  # rec: the RunRecord being filled
        ...
    return recorded.result                 # the record as written
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmpeft import records, resume
from rmpeft.errors import RmpeftError
from rmpeft.loggers import RunLogger, build_logger
from rmpeft.records import RunRecord
from rmpeft.resolve import resolve_run_config
from rmpeft.run import Run, check_config, make_accelerator
from rmpeft.run_folder import RunLock
from rmpeft.run_stats import Heartbeat

log = logging.getLogger(__name__)


def now() -> str:
    """The current UTC time as a record writes it (ISO 8601, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def existing_record(folder: Path, force: bool) -> dict[str, Any] | None:
    """The record in ``folder`` (None when there is none). A corrupt record, or a finished one
    without a test metric, is an error unless ``force``: it is never silently replaced."""
    try:
        existing = records.read_record(folder)
        if existing is not None:
            records.check_result(existing, folder / records.RECORD_FILE)
    except RmpeftError:
        if not force:
            raise
        return None
    return existing


def fill_sizes(rec: RunRecord, run: Run) -> None:
    """The record's parameter counts and split sizes, from the built run."""
    rec.total_params, rec.trainable_params = run.total_params, run.handle.num_trainable()
    rec.trainable_share = rec.trainable_params / run.total_params
    rec.split_sizes = {k: len(v) for k, v in run.splits.items()}


class RecordedRun:
    """The record of one run from launch to end (see the module docstring).

    ``resolve``: resolve the config's ``auto`` fields and local data first (a delta evaluation's config
    is its run's resolved config and is taken as it is). ``logged``: mirror the run to ``cfg.logger``
    (its wandb run kept by a resumed attempt). ``fields``: record fields known at launch.
    """

    def __init__(self, cfg: DictConfig, *, resolve: bool = True, logged: bool = False, **fields: Any) -> None:
        check_config(cfg)
        self.cfg = resolve_run_config(cfg) if resolve else cfg
        self.force = bool(self.cfg.force)
        self.folder = records.run_dir(self.cfg)
        self.logged, self.fields = logged, fields
        self.existing = existing_record(self.folder, self.force)
        done = self.existing is not None and self.existing["status"] in records.DONE_STATUSES
        # a forced rerun of a result: it writes beside that result until it has one of its own
        self.replacing: str | None = self.existing["status"] if done else None
        self.done: dict[str, Any] | None = None
        if done and not self.force:
            log.info("skipping %s: already %s (force=true reruns it)", self.folder, self.existing["status"])
            self.done = {**self.existing, "skipped": True}
        self.record = RunRecord()
        self.accelerator: Any = None
        self.logger = RunLogger()
        self.result: dict[str, Any] | None = None
        self._writing = threading.Lock()   # the heartbeat thread writes the record too

    @property
    def is_main(self) -> bool:
        """Whether this process writes the record (the main process; known once the block is entered)."""
        return bool(self.accelerator.is_main_process)

    def save(self) -> None:
        """Write the record as it stands (main process) and refresh the folder's claim."""
        if self.is_main:
            with self._writing:
                self.record.wall_s = round(time.time() - self._started, 3)
                self.record.heartbeat_at = now()
                records.write_record(self.folder, self.record, self._record_name)
                self._claim.beat()

    def __enter__(self) -> RunRecord:
        if self.done is not None:
            raise RuntimeError(f"{self.folder} is already {self.done['status']}: nothing to run")
        cfg = self.cfg
        self._started = time.time()
        resolved = OmegaConf.to_container(cfg, resolve=True)
        identity = records.identity_hash(cfg)
        self.record = RunRecord(status="running", config=resolved, run_dir=str(self.folder),
                                identity_hash=identity, metric=cfg.task.get("metric"), started_at=now(),
                                versions=records.versions(), git_commit=records.git_commit(), **self.fields)
        self.accelerator, _ = make_accelerator(cfg)
        self._claim = RunLock(self.folder, records.STALE_AFTER_S)
        if self.is_main:
            self._claim.acquire()   # another live launch of this run: one line, no record written
            if self.force:
                resume.discard(self.folder)   # a forced rerun starts afresh
        self._record_name = records.NEXT_RECORD_FILE if self.replacing else records.RECORD_FILE
        try:
            if self.is_main and not self.replacing:   # an earlier rerun's leftover attempt
                (self.folder / records.NEXT_RECORD_FILE).unlink(missing_ok=True)
            if self.logged:
                # a relaunch that will resume logs into the interrupted attempt's wandb run
                resuming = (self.existing and (self.folder / resume.RESUME_FILE).exists()
                            and self.existing.get("wandb_id"))
                self.record.wandb_id = self.existing["wandb_id"] if resuming else resume.new_wandb_id(identity)
            self.save()
            if self.logged and self.is_main:
                self.logger = build_logger(cfg, self.record.wandb_id)
            self.logger.log_config(resolved)
        except BaseException:
            self._claim.release()
            raise
        self._heartbeat = Heartbeat(self.save, records.HEARTBEAT_S).__enter__()
        return self.record

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        self._heartbeat.__exit__(exc_type, exc, tb)
        rec = self.record
        try:
            if exc_type is not None:
                rec.status, rec.error = "failed", f"{exc_type.__name__}: {exc}".splitlines()[0]
            rec.finished_at = now()
            self.save()
            if exc_type is None and self.is_main:
                resume.discard(self.folder)   # the run has a result
                if self.replacing:
                    self._settle_rerun()
        finally:
            if self.is_main and self.replacing and rec.status != "running":
                records.discard_next_delta(self.folder)
            self._claim.release()
        if exc_type is not None:
            self.logger.log_summary(rec.to_dict())
            self.logger.finish()
            return False
        self.result = records.to_json_dict(rec)
        self.logger.log_summary(self.result)
        self.logger.finish()
        if self.is_main:
            log.info("%s: status=%s best_epoch=%s val=%s test=%s", self.folder, rec.status, rec.best_epoch,
                     rec.val_metric, rec.test_metric)
        return False

    def _settle_rerun(self) -> None:
        """After a forced rerun: its result replaces the old one when it is finished, or when the old one
        was diverged and the new one is a result too; otherwise the old result stays and the attempt's
        record is kept beside it."""
        old, new = self.replacing, self.record.status
        if new == "finished" or (old == "diverged" and new in records.DONE_STATUSES):
            records.promote_next(self.folder)
        else:
            log.warning("%s: the rerun ended %s; the %s result is kept (this attempt: %s)", self.folder, new,
                        old, records.NEXT_RECORD_FILE)
