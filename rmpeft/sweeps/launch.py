"""Launch a list of runs with the Hydra launcher their config selects (``cluster=`` profiles set
``hydra/launcher``), wait for every one, and report each run's outcome.

Each launch group (runs that share one launcher configuration, e.g. the same GPU/memory request) gets
its own launcher instance, created by Hydra from the group's composed config exactly as
``rmpeft-train --multirun`` would. Jobs run the same task function as ``rmpeft-train``.

For the submitit launchers (``submitit_local``, ``submitit_slurm``) the jobs are submitted here with the
plugin's own executor settings instead of calling its ``launch()``: that method returns nothing until all
jobs are done and raises at the first job that died (killed, out of memory, node failure) while later
jobs may still be running. A sweep must instead wait for every job and record each outcome, so one dead
job never hides the others. Any other launcher (the basic in-process one by default) is used through
its ``launch()``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmpeft.config import compose_run
from rmpeft.run_folder import slurm_job_name
from rmpeft.sweeps.hydra_internals import (
    JobReturn,
    JobStatus,
    instantiate_launcher,
    is_submitit_launcher,
    singleton_state,
    submitit_executor,
    submitit_kind,
)

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What became of one launched run's job. ``error`` is None when the job returned normally;
    ``slurm_job`` names an ended SLURM job as run claims do (:func:`rmpeft.run_folder.slurm_job_name`)."""

    error: str | None = None
    logs: tuple[str, ...] = ()
    job_id: str | None = None
    slurm_job: str | None = None


@dataclass
class _Queue:
    """Runs of one launch group waiting for submission through a submitit executor."""

    launcher: Any
    executor: Any
    items: list[tuple[int, list[str], int]]  # (run index, task overrides, hydra job number)
    limit: int  # jobs of this group alive at once (SLURM: all, as one array)
    slurm: bool  # the jobs run on SLURM (else as local processes)
    active: list[tuple[int, Any]] = field(default_factory=list)


def run_task(cfg: DictConfig) -> Any:
    """The task function of every launched job: the same code path as ``rmpeft-train``'s."""
    from rmpeft.job import run_job

    try:
        return run_job(cfg)
    except SystemExit as e:  # an entrypoint that exits instead of raising must not end other runs
        raise RuntimeError(f"run exited with status {e.code}") from None


def local_parallelism(cfg: DictConfig) -> int:
    """Jobs a submitit_local launch group runs at once (``cluster.parallel``, default 1)."""
    return max(1, int(OmegaConf.select(cfg, "cluster.parallel", default=1) or 1))


def describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _outcome_of_return(ret: JobReturn, logs: tuple[str, ...] = (), job_id: str | None = None,
                       slurm_job: str | None = None) -> Outcome:
    error = describe(ret._return_value) if ret.status == JobStatus.FAILED else None
    return Outcome(error=error, logs=logs, job_id=job_id, slurm_job=slurm_job)


def _job_logs(job: Any) -> tuple[str, ...]:
    return tuple(str(p) for p in (job.paths.stdout, job.paths.stderr))


def _job_outcome(job: Any, slurm: bool) -> Outcome:
    """The outcome of a submitit job that is done; ``slurm``: it ran on SLURM (else as a local process)."""
    logs, job_id = _job_logs(job), str(job.job_id)
    slurm_job = slurm_job_name(job_id) if slurm else None
    try:
        ret = job.results()[0]
    except Exception:  # the job ended without a result: killed, out of memory, time limit, node failure
        state = getattr(job, "state", "UNKNOWN")
        return Outcome(error=f"job {job_id} ended without a result (state: {state})", logs=logs, job_id=job_id,
                       slurm_job=slurm_job)
    if isinstance(ret, JobReturn):
        return _outcome_of_return(ret, logs, job_id, slurm_job)
    return Outcome(logs=logs, job_id=job_id, slurm_job=slurm_job)


def _submit(queue: _Queue, refused: Callable[[int, Outcome], None]) -> None:
    """Submit as many queued runs as the group's limit allows (SLURM: one job array). A submission the
    cluster refuses (bad partition, account, ...) fails those runs with the scheduler's message."""
    room = queue.limit - len(queue.active)
    batch, queue.items = queue.items[:room], queue.items[room:]
    if not batch:
        return
    params = [(list(ov), "hydra.sweep.dir", num, f"job_id_for_{num}", singleton_state()) for _, ov, num in batch]
    try:
        jobs = queue.executor.map_array(queue.launcher, *zip(*params))
    except Exception as e:  # sbatch refused the array: every run of it fails with the reason
        for i, _, _ in batch:
            refused(i, Outcome(error=f"submission failed: {describe(e)}"))
        return
    for (i, overrides, num), job in zip(batch, jobs):
        log.info("submitted job %s: #%d %s", job.job_id, num, " ".join(overrides))
        queue.active.append((i, job))


def launch(
    runs: Sequence[list[str]],
    groups: Sequence[tuple[list[str], Sequence[int]]],
    on_done: Callable[[int, Outcome], None] = lambda i, o: None,
    config_name: str = "train",
    poll_s: float = 1.0,
) -> list[Outcome]:
    """Launch ``runs`` (the task overrides of each) in ``groups`` of (Hydra overrides, run indices) that
    share one launcher configuration; return each run's outcome once every job has ended.
    Hydra must be initialised (``initialize_config_dir``)."""
    outcomes = [Outcome() for _ in runs]

    def finish(i: int, outcome: Outcome) -> None:
        outcomes[i] = outcome
        on_done(i, outcome)

    queues: list[_Queue] = []
    job_num = 0
    for hydra_overrides, group in groups:
        overrides = list(hydra_overrides) + ["hydra.mode=MULTIRUN"] + list(runs[group[0]])
        master = compose_run(overrides, config_name, with_hydra=True)
        launcher = instantiate_launcher(master, run_task)
        items = [(i, list(runs[i]), job_num + k) for k, i in enumerate(group)]
        job_num += len(group)
        if is_submitit_launcher(launcher):
            slurm = submitit_kind(launcher) == "slurm"
            limit = len(items) if slurm else local_parallelism(master)
            Path(str(master.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
            queues.append(_Queue(launcher, submitit_executor(launcher), items, limit, slurm))
            continue
        try:
            returns = [_outcome_of_return(r) for r in launcher.launch([ov for _, ov, _ in items], items[0][2])]
        except Exception as e:  # the launcher itself failed: every run of the group fails with the reason
            returns = [Outcome(error=f"launch failed: {describe(e)}")] * len(items)
        for (i, _, _), outcome in zip(items, returns):
            finish(i, outcome)

    for queue in queues:
        _submit(queue, finish)
    while any(q.active or q.items for q in queues):
        time.sleep(poll_s)
        for queue in queues:
            still = []
            for i, job in queue.active:
                if job.done():
                    finish(i, _job_outcome(job, queue.slurm))
                else:
                    still.append((i, job))
            queue.active = still
            _submit(queue, finish)
    return outcomes
