"""``load_splits``: a task config and a data seed in, the rendered train / validation / test examples out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from rmpeft.data.example import Example
from rmpeft.data.sampling import permutation, plan_splits
from rmpeft.data.sources import load_raw
from rmpeft.data.tasks import get_task
from rmpeft.identity import config_value

log = logging.getLogger(__name__)


def render(task: str, raw: dict[str, Any], index: int | None = None) -> Example:
    """The :class:`Example` of one raw record; ``index`` (its position in the source split) goes to meta."""
    ex = get_task(task, "text").template(raw)
    ex.meta = {"task": task, **({"index": index} if index is not None else {}), **ex.meta}
    return ex


# The fixed permutation that divides one file between the test and training pools (task.test_pool_share):
# independent of the data seed, so every seed tests on the same pool, as with an official split.
POOL_SPLIT_SEED = 0


def load_pools(task_cfg: Any) -> dict[str, Sequence[dict]]:
    """The raw official train split (``"train"``) and validation split (``"test"``) of a task.

    With ``task.test_pool_share`` set, both pools come from the validation split alone (for data whose
    train split is not at hand): a fixed permutation gives that share of it to the test pool and the
    rest, disjoint from it, to the training pool."""
    pools = load_raw(task_cfg)
    share = config_value(task_cfg, "task.test_pool_share", "task")
    if share is None:
        return pools
    source = pools["test"]
    order = permutation(len(source), POOL_SPLIT_SEED)
    cut = int(round(len(source) * float(share)))
    log.info("%s: %d test-pool and %d training-pool examples from one split (task.test_pool_share=%s)",
             task_cfg.get("name"), cut, len(source) - cut, share)
    return {"train": [source[i] for i in order[cut:]], "test": [source[i] for i in order[:cut]]}


def load_splits(task_cfg: Any, data_seed: int) -> dict[str, list[Example]]:
    """Sample and render a task's ``train``, ``validation`` and ``test`` examples for ``data_seed``.

    ``task_cfg`` is a ``conf/task/*.yaml`` config (DictConfig or dict): ``name``, ``source`` or
    ``data_dir``/``files``, ``num_train``, ``num_val``, ``num_test``, ``full_train``.
    """
    name = get_task(str(task_cfg.get("name")), "text").name
    pools = load_pools(task_cfg)
    plan = plan_splits(len(pools["train"]), len(pools["test"]),
                       num_train=config_value(task_cfg, "task.num_train", "task"),
                       num_val=config_value(task_cfg, "task.num_val", "task"),
                       num_test=config_value(task_cfg, "task.num_test", "task"), seed=data_seed,
                       full_train=bool(config_value(task_cfg, "task.full_train", "task")), task=name)
    splits = {
        "train": [render(name, pools["train"][i], i) for i in plan.train],
        "validation": [render(name, pools["train"][i], i) for i in plan.validation],
        "test": [render(name, pools["test"][i], i) for i in plan.test],
    }
    log.info("%s (data seed %d): %s", name, data_seed, ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return splits
