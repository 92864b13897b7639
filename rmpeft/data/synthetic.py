"""A tiny learnable classification task generated in code, for smoke runs and tests (no files, offline).

Each record is a one-word sentence whose cue word gives the sentiment away, rendered like SST-2:
``"good. It was"`` -> ``" great"`` (label 1) / ``" terrible"`` (label 0). The prompt is kept this
short on purpose: a 2-layer random OPT with a byte-level tokenizer (``tiny-opt``) learns it within a
few dozen optimizer steps, also when only a small random mask of q_proj/v_proj is trained. The two pools
(the stand-ins for the official train and validation splits) are fixed by ``synthetic.pool_seed``;
the data seed then samples train / validation / test from them with the usual protocol, so the
sample is deterministic in the data seed and differs between seeds.
"""

from __future__ import annotations

import random
from typing import Any

from rmpeft.identity import config_value

CUES = {
    0: ("bad", "awful", "dull", "poor", "sad", "grim"),
    1: ("good", "nice", "fun", "fine", "cool", "neat"),
}


def make_pool(size: int, seed: int) -> list[dict[str, Any]]:
    """``size`` records ``{cue, label}`` with balanced labels, deterministic in ``seed``."""
    rng = random.Random(seed)
    pool = []
    for i in range(size):
        label = i % 2
        pool.append({"cue": rng.choice(CUES[label]), "label": label})
    rng.shuffle(pool)
    return pool


def synthetic_pools(task_cfg: Any) -> dict[str, list[dict[str, Any]]]:
    """The train and validation pools of the synthetic task (sizes and seed from ``task_cfg.synthetic``)."""
    seed = int(config_value(task_cfg, "task.synthetic.pool_seed", "task"))
    return {"train": make_pool(int(config_value(task_cfg, "task.synthetic.train_pool", "task")), seed),
            "test": make_pool(int(config_value(task_cfg, "task.synthetic.test_pool", "task")), seed + 1)}
