"""``load_splits``: a task config and a data seed in, the rendered train / validation / test examples out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from rmpeft.data.example import Example
from rmpeft.data.sampling import plan_splits
from rmpeft.data.sources import load_raw
from rmpeft.data.tasks import get_task

log = logging.getLogger(__name__)


def render(task: str, raw: dict[str, Any], index: int | None = None) -> Example:
    """The :class:`Example` of one raw record; ``index`` (its position in the source split) goes to meta."""
    ex = get_task(task).template(raw)
    ex.meta = {"task": task, **({"index": index} if index is not None else {}), **ex.meta}
    return ex


def load_pools(task_cfg: Any) -> dict[str, Sequence[dict]]:
    """The raw official train split (``"train"``) and validation split (``"test"``) of a task."""
    return load_raw(task_cfg)


def load_splits(task_cfg: Any, data_seed: int) -> dict[str, list[Example]]:
    """Sample and render a task's ``train``, ``validation`` and ``test`` examples for ``data_seed``.

    ``task_cfg`` is a ``conf/task/*.yaml`` config (DictConfig or dict): ``name``, ``source`` or
    ``data_dir``/``files``, ``num_train``, ``num_val``, ``num_test``, ``full_train``.
    """
    name = get_task(str(task_cfg.get("name"))).name
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
