"""``rmpeft-sweep FILE [overrides] [--dry-run] [--json]``: count a sweep's runs by status and launch the
ones that are not finished, through the launcher of the chosen ``cluster=`` profile.

    rmpeft-sweep sweeps/table1.yaml --dry-run                    # what would run, nothing launched
    rmpeft-sweep sweeps/table1.yaml model=opt-125m task=rte      # only those runs of the sweep
    rmpeft-sweep sweeps/table1.yaml cluster=slurm cluster.partition=gpu

A run's folder comes from ``rmpeft.records.run_dir`` on its composed config (it ends in the run's
identity hash); a finished (or diverged) record there means the run is done and is never launched
again. A run whose job dies without writing its record (killed, out of memory, node failure) is marked
failed with the reason and its log files, so that the summary says so and the next launch reruns it.
An unreadable record counts as failed and is relaunched (overwritten) only with ``force=true``. Before
anything is launched (also with ``--dry-run`` and ``--list``, which launch nothing), the config of every
run to launch is checked as ``rmpeft-train`` checks it: one bad run refuses the sweep. The exit status is
0 when every run of the sweep is done, 1 when some failed or are still missing, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmpeft import records
from rmpeft.config import REPO, check_choices, compose_run, hydra_initialized
from rmpeft.errors import RmpeftError
from rmpeft.sweeps.compose import RunConfigs
from rmpeft.sweeps.launch import launch, local_parallelism
from rmpeft.sweeps.lr_grid import predicted_grid_sweep, split_lr_grid
from rmpeft.sweeps.spec import SweepFile, load_sweep, override_key, parse_override
from rmpeft.sweeps.status import SweepRun, counts, expand, mark_dead, refresh_status, summary_line

SWEEPS_DIR = REPO / "sweeps"
# Value overrides that can change a run's launcher configuration.
LAUNCH_KEY_PREFIXES = ("hydra.", "cluster.")
# Launcher fields worth showing when describing a launch group.
SHOWN_LAUNCHER_FIELDS = ("partition", "account", "qos", "gpus_per_node", "tasks_per_node", "cpus_per_task",
                         "mem_gb", "timeout_min", "array_parallelism", "max_num_timeout")


def resolve_sweep_path(text: str) -> Path:
    """A sweep file path, or the name of a file in the repository's sweeps/ folder."""
    path = Path(text)
    if path.is_file():
        return path
    named = SWEEPS_DIR / (text if text.endswith(".yaml") else f"{text}.yaml")
    if named.is_file():
        return named
    choices = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
    raise RmpeftError(f"sweep file not found: {text}; sweeps in {SWEEPS_DIR}: {choices}")


def launch_key(cfg: DictConfig) -> str:
    """Runs with equal keys share one launcher configuration (resources) and are launched together."""
    node = {
        "launcher": OmegaConf.to_container(cfg.hydra.launcher, resolve=True),
        "parallel": local_parallelism(cfg),
    }
    return json.dumps(node, sort_keys=True, default=str)


def describe_group(key: str) -> str:
    node = json.loads(key)
    launcher = node["launcher"]
    target = str(launcher.get("_target_", "")).rsplit(".", 1)[-1]
    fields = [f"{k}={launcher[k]}" for k in SHOWN_LAUNCHER_FIELDS if launcher.get(k) is not None]
    if target == "LocalLauncher":
        fields.append(f"parallel={node['parallel']}")
    return f"{target} {' '.join(fields)}".strip()


def hydra_split(overrides: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(Hydra's own overrides, the task's overrides) of one run."""
    hydra, task = [], []
    for o in overrides:
        (hydra if parse_override(o).is_hydra_override() else task).append(o)
    return hydra, task


def pin_sweep_dir(sweep: SweepFile) -> SweepFile:
    """Fix ``hydra.sweep.dir`` once (it holds a timestamp), so every job and this process agree on it."""
    runs = sweep.runs()
    if not runs or any(o.startswith("hydra.sweep.dir=") for o in sweep.fixed):
        return sweep
    sweep_dir = compose_run(runs[0], with_hydra=True).hydra.sweep.dir
    return sweep.with_overrides([f"hydra.sweep.dir={Path(str(sweep_dir)).resolve()}"])


def assign_launch_keys(runs: list[SweepRun], exact: bool = False) -> None:
    """Group the runs by launcher configuration. Resources follow from the group choices (model,
    method, cluster) and from hydra./cluster. overrides, so they are resolved once per combination."""
    overrides = [list(r.overrides) for r in runs]
    configs = RunConfigs()
    if exact:
        keys = configs.evaluate_exact(overrides, launch_key)
    else:
        keys = configs.evaluate(overrides, launch_key, depends_on=LAUNCH_KEY_PREFIXES)
        configs.check_exact(overrides, launch_key, keys)
    for run, key in zip(runs, keys):
        run.launch_key = key


def check_runs(runs: list[SweepRun], exact: bool = False) -> None:
    """``rmpeft.run.check_config`` on the composed config of every run, before any is launched: one bad
    run refuses the whole sweep, in one line naming the bad value and a run that has it."""
    from rmpeft.run import check_config

    def problem(cfg: DictConfig) -> str | None:
        try:
            check_config(cfg)
        except RmpeftError as e:
            return str(e)
        return None

    overrides = [list(r.overrides) for r in runs]
    configs = RunConfigs(with_hydra=False)
    found = configs.evaluate_exact(overrides, problem) if exact else configs.evaluate(overrides, problem)
    bad = [(run, text) for run, text in zip(runs, found) if text]
    if bad:
        run, text = bad[0]
        raise RmpeftError(f"{text} ({len(bad)} of {len(runs)} runs, e.g. '{' '.join(run.overrides)}'); "
                          "nothing was launched")


def launch_runs(todo: list[SweepRun], say: Any) -> None:
    """Launch the runs, one launch group per launcher configuration; mark the ones whose job died."""
    groups: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    for i, run in enumerate(todo):
        groups.setdefault((run.launch_key, tuple(hydra_split(run.overrides)[0])), []).append(i)
    for (key, _), members in groups.items():
        say(f"  {len(members)} runs: {describe_group(key)}")
    finished = 0

    def on_done(i: int, outcome: Any) -> None:
        nonlocal finished
        finished += 1
        run = todo[i]
        try:
            rec = records.read_record(run.folder)
            status = "missing" if rec is None else rec["status"]
        except RmpeftError:
            status = "failed (unreadable record)"
        if outcome.error and status in ("missing", "running"):
            status = "failed"
        say(f"[{finished}/{len(todo)}] {status}: {run.folder}")

    outcomes = launch(
        [hydra_split(run.overrides)[1] for run in todo],
        [(list(hydra), members) for (_, hydra), members in groups.items()],
        on_done=on_done,
    )
    for run, outcome in zip(todo, outcomes):
        mark_dead(run, outcome.error, outcome.logs, outcome.slurm_job)
        run.logs = outcome.logs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="rmpeft-sweep",
        description="Report a sweep's runs by status and launch those not finished.",
        epilog="Overrides of a swept key restrict the sweep to those values (seed=1, model=opt-125m,opt-1.3b); "
        "other overrides apply to every run (cluster=slurm, cluster.partition=gpu, results_root=DIR); "
        "lr_grid=auto:K replaces each cell's learning rates by K points half a decade apart centred on the LR "
        "predicted for it (docs/lr-prediction.md).",
    )
    p.add_argument("file", help="sweep file (or the name of one in sweeps/)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides")
    p.add_argument("--dry-run", action="store_true", help="report and show what would be launched; launch nothing")
    p.add_argument("--json", action="store_true", help="print the counts as one JSON object on stdout")
    p.add_argument("--list", action="store_true",
                   help="print the overrides of every run not done, one per line; launch nothing")
    p.add_argument("--skip-running", action="store_true",
                   help="leave runs whose record says 'running' alone (they may still run elsewhere)")
    p.add_argument("--exact", action="store_true", help="compose every run in full with Hydra (slow; a reference)")
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = sys.stderr if args.json else sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    try:
        path = resolve_sweep_path(args.file)
        lr_points, overrides = split_lr_grid(args.overrides)
        sweep = load_sweep(path).with_overrides(overrides)
        check_choices(list(sweep.fixed) + [o for axes in sweep.grid_axes() for a in axes for o in a.overrides])
        with hydra_initialized(job_name=f"rmpeft-{sweep.name}"):
            if lr_points is not None:   # lr_grid=auto:K: each cell's grid centred on its predicted LR
                sweep = predicted_grid_sweep(sweep, lr_points, say=say)
            shown, sweep = sweep, pin_sweep_dir(sweep)
            runs = expand(sweep, exact=args.exact)
            refresh_status(runs)
            before = counts(runs)
            say(summary_line(path, before))
            force = forced(sweep)
            todo = [r for r in runs if not r.done and not (args.skip_running and r.status == "running")
                    and (force or not r.corrupt)]
            check_runs(todo, exact=args.exact)
            if before["corrupt"] and not force:
                say(f"{before['corrupt']} runs have an unreadable record (counted as failed); they are not "
                    "relaunched: fix or remove those files, or relaunch with force=true to overwrite them")
            assign_launch_keys(todo, exact=args.exact)
            if before["running"] and not args.skip_running:
                say(f"{before['running']} runs have a 'running' record (a job that died, or one still running "
                    "elsewhere); they are relaunched (--skip-running leaves them alone)")
            if args.list:
                for run in todo:
                    say(" ".join(run.overrides))
            if args.dry_run or args.list or not todo:
                if args.dry_run and todo:
                    report_dry_run(shown, todo, say)
                return _finish(args, path, runs, before, launched=0, say=say)
            say(f"launching {len(todo)} runs:")
            try:
                launch_runs(todo, say)
            except KeyboardInterrupt:
                say("interrupted: jobs already submitted to a cluster keep running; rerun rmpeft-sweep to see them")
                return 130
            refresh_status(runs)
            return _finish(args, path, runs, counts(runs), launched=len(todo), say=say)
    except RmpeftError as e:
        print(f"rmpeft-sweep: error: {e}", file=sys.stderr)
        return 2


def forced(sweep: SweepFile) -> bool:
    """Whether the sweep sets ``force=true`` (unreadable records are then relaunched and overwritten)."""
    for text in sweep.fixed:
        o = parse_override(text)
        if override_key(o) == "force" and not o.is_delete():
            return o.value() is True or str(o.value()).lower() == "true"
    return False


def report_dry_run(sweep: SweepFile, todo: list[SweepRun], say: Any) -> None:
    say(f"would launch {len(todo)} runs:")
    for key, n in Counter(r.launch_key for r in todo).items():
        say(f"  {n} runs: {describe_group(key)}")
    say("the same sweep with plain Hydra (one multirun per sub-grid; finished runs are skipped):")
    for cmd in sweep.multirun_commands():
        say(f"  {cmd}")


def _finish(args: argparse.Namespace, path: Path, runs: list[SweepRun], n: dict[str, int], launched: int, say: Any) -> int:
    failed = [r for r in runs if r.status == "failed"]
    if launched:
        say(summary_line(path, n))
    for run in failed[:50]:
        error = run.error.strip().splitlines()[0] if run.error and run.error.strip() else "no error recorded"
        logs = f" (log: {', '.join(run.logs)})" if run.logs and "log:" not in error else ""
        say(f"  failed: {run.folder}: {error}{logs}")
    if len(failed) > 50:
        say(f"  ... and {len(failed) - 50} more failed runs (see their record.json)")
    if args.json:
        print(json.dumps({"sweep": str(path), **n, "launched": launched,
                          "failed_runs": [{"run_dir": str(r.folder), "error": r.error, "logs": list(r.logs)}
                                          for r in failed]}))
    if args.dry_run or args.list:
        return 0
    return 0 if n["failed"] == 0 and n["missing"] == 0 and n["running"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
