"""The paper's split protocol: train and validation sampled (disjoint) from the official train split,
test sampled from the official validation split, all deterministic in the data seed.

The permutations are MeZO's (``np.random.seed(seed); np.random.permutation(n)``, i.e. NumPy's legacy
Mersenne Twister), so the same seed selects the same examples as MeZO's sampler:

- ``k = min(N_train, num_train + num_val)`` examples are taken from the front of the permutation of
  the train split; the **last** ``num_val`` of them are the validation set and the others the
  training set. When the split is small (COPA, CB, WSC) validation therefore keeps its full size and
  training gets what is left, ``k - num_val`` examples (fewer than ``num_train``).
- ``full_train``: training gets every train-split example outside that same validation set.
- Test: the first ``num_test`` of a permutation of the validation split (all of it when smaller).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from rmpeft.errors import RmpeftError

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1  # NumPy's legacy seeding range


@dataclass(frozen=True)
class SplitPlan:
    """Indices into the source splits: ``train`` and ``validation`` index the official train split,
    ``test`` indexes the official validation split."""

    train: list[int]
    validation: list[int]
    test: list[int]


def _count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RmpeftError(f"task.{name} must be an integer >= {minimum}, got {value!r}")
    return value


def permutation(n: int, seed: int) -> list[int]:
    """MeZO's permutation of ``range(n)`` for ``seed``."""
    return np.random.RandomState(seed).permutation(n).tolist()


def plan_splits(n_train_split: int, n_val_split: int, *, num_train: int, num_val: int, num_test: int,
                seed: int, full_train: bool = False, task: str = "task") -> SplitPlan:
    """Sample the train / validation / test indices of one task for one data seed."""
    num_train = _count("num_train", num_train, 1)
    num_val = _count("num_val", num_val, 1)
    num_test = _count("num_test", num_test, 1)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise RmpeftError(f"data_seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    if n_train_split < 2:
        raise RmpeftError(f"the train split of {task} has {n_train_split} example(s); training and validation "
                          f"need at least 2")
    if n_train_split <= num_val:
        raise RmpeftError(f"task.num_val={num_val} leaves no training examples: the train split of {task} has "
                          f"{n_train_split} examples; set task.num_val below {n_train_split}")
    if n_val_split < 1:
        raise RmpeftError(f"the validation split of {task} is empty: nothing to sample the test set from")

    order = permutation(n_train_split, seed)
    k = min(n_train_split, num_train + num_val)
    validation = order[k - num_val: k]
    train = order[: k - num_val] + (order[k:] if full_train else [])
    if not full_train and len(train) < num_train:
        log.warning("%s: the train split has %d examples; validation keeps %d, training gets the other %d "
                    "(task.num_train=%d)", task, n_train_split, num_val, len(train), num_train)
    test = permutation(n_val_split, seed)[:num_test]
    return SplitPlan(train=train, validation=validation, test=test)
