"""``rmpeft-train``: the Hydra entrypoint. A thin wrapper around :func:`rmpeft.trainer.train`.

    rmpeft-train model=opt-125m task=rte method=masking method.ratio=0.0001 optim.lr=1e-2 seed=1
    rmpeft-train experiment=smoke
    rmpeft-train --multirun method=masking method.ratio=0.01,0.001 optim.lr=1e-3,1e-2
"""

from __future__ import annotations

import itertools
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from rmpeft.config import CONF_DIR, check_new_fields, compose_run, hydra_initialized, run_hydra_command
from rmpeft.errors import USAGE_EXIT, RmpeftError
from rmpeft.job import run_job


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    try:
        return run_job(cfg)
    except RmpeftError as e:
        if HydraConfig.get().mode == RunMode.RUN:
            print(f"rmpeft-train: error: {e}", file=sys.stderr)
            sys.exit(USAGE_EXIT)
        raise


MULTIRUN_FLAGS = ("-m", "--multirun")


def check_multirun(args: list[str]) -> None:
    """Every job of ``rmpeft-train --multirun ...`` composed and checked as ``rmpeft-sweep`` checks a sweep's
    runs, before Hydra launches any: one bad value refuses the whole multirun in one line (Hydra would
    stop at the first bad job, with a traceback, after running the jobs before it). Other Hydra flags and
    continuous sweeps are left to Hydra."""
    from hydra.errors import HydraException

    from rmpeft.run import check_config
    from rmpeft.sweeps.hydra_internals import new_override_parser

    flags = [a for a in args if a.startswith("-")]
    if not flags or any(f not in MULTIRUN_FLAGS for f in flags):
        return
    try:
        parsed = new_override_parser().parse_overrides([a for a in args if not a.startswith("-")])
    except HydraException as e:
        raise RmpeftError(f"invalid override: {(str(e).strip().splitlines() or [''])[0]}") from None
    if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed):
        return
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [str(o.input_line)] for o in parsed]
    jobs = list(itertools.product(*choices))
    bad = []
    with hydra_initialized():
        for job in jobs:
            try:
                check_config(compose_run(list(job)))
            except RmpeftError as e:
                try:
                    check_new_fields(job, plain=True)   # an unknown field: say which, not Hydra's several lines
                except RmpeftError as named:
                    e = named
                bad.append((job, str(e)))
    if bad:
        job, text = bad[0]
        raise RmpeftError(f"{text} ({len(bad)} of {len(jobs)} jobs, e.g. '{' '.join(job)}'); nothing was launched")


def main() -> None:
    run_hydra_command("rmpeft-train", hydra_main, check_args=check_multirun)


if __name__ == "__main__":
    main()
