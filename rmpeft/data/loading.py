"""``load_splits``: a task config and a data seed in, the rendered train / validation / test examples out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from rmpeft.data import Example
from rmpeft.data.sampling import plan_splits
from rmpeft.data.sources import load_raw
from rmpeft.data.synthetic import synthetic_pools
from rmpeft.data.templates import render
from rmpeft.errors import unknown_choice

log = logging.getLogger(__name__)

# The paper's 11 tasks, in the order of its tables, plus the offline synthetic task.
PAPER_TASKS = ("sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc", "copa", "record", "squad", "drop")
TASK_NAMES = PAPER_TASKS + ("synthetic",)
KINDS = {"sst2": "classification", "rte": "classification", "cb": "classification", "boolq": "classification",
         "wsc": "classification", "wic": "classification", "multirc": "classification",
         "copa": "multiple_choice", "record": "multiple_choice", "squad": "generation", "drop": "generation",
         "synthetic": "classification"}


def load_pools(task_cfg: Any) -> dict[str, Sequence[dict]]:
    """The raw official train split (``"train"``) and validation split (``"test"``) of a task."""
    name = str(task_cfg.get("name"))
    if name not in TASK_NAMES:
        raise unknown_choice("task", name, TASK_NAMES)
    if name == "synthetic":
        return synthetic_pools(task_cfg)
    return load_raw(task_cfg)


def load_splits(task_cfg: Any, data_seed: int) -> dict[str, list[Example]]:
    """Sample and render a task's ``train``, ``validation`` and ``test`` examples for ``data_seed``.

    ``task_cfg`` is a ``conf/task/*.yaml`` config (DictConfig or dict): ``name``, ``source`` or
    ``data_dir``/``files``, ``num_train``, ``num_val``, ``num_test``, ``full_train``.
    """
    name = str(task_cfg.get("name"))
    pools = load_pools(task_cfg)
    plan = plan_splits(len(pools["train"]), len(pools["test"]),
                       num_train=task_cfg.get("num_train", 1000), num_val=task_cfg.get("num_val", 500),
                       num_test=task_cfg.get("num_test", 1000), seed=data_seed,
                       full_train=bool(task_cfg.get("full_train", False)), task=name)
    splits = {
        "train": [render(name, pools["train"][i], i) for i in plan.train],
        "validation": [render(name, pools["train"][i], i) for i in plan.validation],
        "test": [render(name, pools["test"][i], i) for i in plan.test],
    }
    log.info("%s (data seed %d): %s", name, data_seed, ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return splits
