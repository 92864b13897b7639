"""A sweep's runs with their identity, folder and status, as read from their records.

A run's folder is ``rmpeft.records.run_dir`` of its composed config (which ends in the run's identity
hash), computed for every run by the fast composer. A finished (or diverged) record there means the
run is done. A record that cannot be read counts as failed with its path, and is never overwritten
unless the sweep is launched with ``force=true``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmpeft import records
from rmpeft.config import compose_run
from rmpeft.errors import RmpeftError
from rmpeft.resolve import resolve_run_config
from rmpeft.run_folder import RunLock
from rmpeft.sweeps.compose import RunConfigs
from rmpeft.sweeps.spec import SweepFile


@dataclass
class SweepRun:
    """One run of a sweep: its overrides, folder, identity hash, launch group and current status."""

    overrides: tuple[str, ...]
    folder: Path
    identity: str = ""
    launch_key: str = ""
    status: str = "missing"
    error: str | None = None
    logs: tuple[str, ...] = ()
    corrupt: bool = False  # the record exists but cannot be read: failed, kept until force=true

    @property
    def done(self) -> bool:
        return self.status in records.DONE_STATUSES


def run_location(cfg: DictConfig) -> tuple[Path, str]:
    """(run folder, identity hash) of a composed config: what decides whether a run is done. The folder's
    name ends in ``-<identity hash>``; taking the hash from it halves the cost of 10^4 runs. ``auto`` fields
    resolve as on the machine the run will use (``rmpeft.resolve``)."""
    folder = records.run_dir(resolve_run_config(cfg))
    return folder, folder.name.rsplit("-", 1)[-1]


def locate(runs: Sequence[Sequence[str]], exact: bool = False) -> list[tuple[Path, str]]:
    """``run_location`` of every run (Hydra must be initialised): composed in full by Hydra when
    ``exact``, else by the fast composer (checked against Hydra on the first and last run)."""
    configs = RunConfigs(with_hydra=False)
    if exact:
        return configs.evaluate_exact(runs, run_location)
    found = configs.evaluate(runs, run_location)
    configs.check_exact(runs, run_location, found)
    return found


def expand(sweep: SweepFile, exact: bool = False) -> list[SweepRun]:
    """Every run of the sweep with its folder and identity (Hydra must be initialised)."""
    overrides = sweep.runs()
    runs = [SweepRun(tuple(o), folder, identity) for o, (folder, identity) in zip(overrides, locate(overrides, exact))]
    owners: dict[Path, SweepRun] = {}
    for run in runs:
        other = owners.setdefault(run.folder, run)
        if other is not run:
            a, b = " ".join(other.overrides), " ".join(run.overrides)
            raise RmpeftError(f"two runs share the run folder {run.folder}: '{a}' and '{b}'; give them different `name`s")
    return runs


def refresh_status(runs: list[SweepRun]) -> None:
    """Read each run's record; an unreadable one makes the run failed, with the reason and its path, and
    so does a stale ``running`` one (no heartbeat for :data:`rmpeft.records.STALE_AFTER_S`)."""
    for run in runs:
        try:
            record = records.read_record(run.folder)
            if record is not None:
                records.check_result(record, run.folder / records.RECORD_FILE)
        except RmpeftError as e:
            run.status, run.error, run.corrupt = "failed", str(e), True
            continue
        run.corrupt = False
        run.status = "missing" if record is None else str(record["status"])
        run.error = None if record is None else record.get("error")
        if record is not None and records.is_stale(record):   # killed from outside: it will never finish
            run.status, run.error = "failed", records.stale_reason(record)


def counts(runs: list[SweepRun]) -> dict[str, int]:
    c = Counter(run.status for run in runs)
    return {
        "total": len(runs),
        "finished": c["finished"] + c["diverged"],
        "failed": c["failed"],
        "missing": c["missing"],
        "running": c["running"],
        "diverged": c["diverged"],
        "corrupt": sum(run.corrupt for run in runs),
    }


def summary_line(path: Path, n: dict[str, int]) -> str:
    finished = f"{n['finished']} finished" + (f" ({n['diverged']} diverged)" if n["diverged"] else "")
    corrupt = f" ({n['corrupt']} unreadable records)" if n.get("corrupt") else ""
    running = f", {n['running']} running" if n["running"] else ""
    return f"{path}: {n['total']} runs: {finished}, {n['failed']} failed{corrupt}, {n['missing']} missing{running}"


def mark_dead(run: SweepRun, outcome_error: str | None, logs: tuple[str, ...], ended_job: str | None = None) -> None:
    """A launched run whose job ended without a final record failed: say why, and where the logs are.
    The record is read and written under the run folder's claim: a folder another live process holds
    (its launch here was refused) is left alone, and no run can finish between the read and the write.
    A claim left by ``ended_job`` (the run's own SLURM job, now ended) is taken over at once, even one
    made on another host. An unreadable record is left as it is (it is reported as failed with its path)."""
    claim = RunLock(run.folder, records.STALE_AFTER_S, ended_job)
    try:
        claim.acquire()
    except RmpeftError:
        return   # the run is alive elsewhere (or its folder cannot be made): its own record says how it ends
    try:
        _mark_failed(run, outcome_error, logs)
    finally:
        claim.release()


def _mark_failed(run: SweepRun, outcome_error: str | None, logs: tuple[str, ...]) -> None:
    try:
        record = records.read_record(run.folder)
    except RmpeftError:
        return
    if record is not None and record["status"] not in ("running",):
        return
    reason = outcome_error or "the job ended without writing a result"
    if logs:
        reason += f"; log: {', '.join(logs)}"
    if record is None:
        record = {"status": "failed", "error": reason, "config": _resolved(run.overrides)}
    else:
        record.update(status="failed", error=reason)
    records.write_record(run.folder, record)


def _resolved(overrides: tuple[str, ...]) -> dict[str, Any] | None:
    try:
        return OmegaConf.to_container(compose_run(overrides), resolve=True)  # type: ignore[return-value]
    except Exception:  # a config that cannot even be resolved: the error says why
        return None
