"""Uniform sampling of mask positions without replacement, without ever enumerating the union.

Random Masking draws ``k`` entries uniformly without replacement from the union of several target
matrices. That is done in two exact steps, neither of which allocates anything of the union's size:

1. split ``k`` over the matrices with a multivariate hypergeometric draw (how many of ``k`` uniform
   draws without replacement fall into each matrix);
2. inside each matrix, draw its count uniformly without replacement (rejection from a uniform stream
   when the count is small against the matrix, a permutation of the matrix's entries otherwise).

Positions are flat row-major indices (``row * in_features + col``), sorted, which is also the order
of CSR storage.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# Below this share of a matrix, rejection sampling from a uniform stream beats a full permutation.
_REJECTION_MAX_SHARE = 1 / 16


_NUMPY_MAX_POPULATION = 10**9    # numpy's multivariate hypergeometric needs sum(sizes) below this


def split_count(k: int, sizes: Sequence[int], seed: int) -> list[int]:
    """How many of ``k`` uniform draws without replacement from the union land in each part.

    That is a multivariate hypergeometric draw. numpy draws it directly for populations below 10**9;
    beyond (OPT-13b's q/v hold 2.1e9 entries) it is drawn exactly as independent binomials
    ``Bin(size_m, k / total)`` conditioned on summing to ``k`` (a uniform Bernoulli selection of the
    union, conditioned on its size, is a uniform k-subset), by vectorised rejection.
    """
    total = sum(sizes)
    if k < 0 or k > total:
        raise ValueError(f"cannot draw {k} entries from {total}")
    if len(sizes) == 1:
        return [int(k)]
    rng = np.random.Generator(np.random.PCG64(seed))
    colors = np.asarray(sizes, dtype=np.int64)
    if total < _NUMPY_MAX_POPULATION:
        return [int(c) for c in rng.multivariate_hypergeometric(colors, int(k), method="marginals")]
    p = k / total
    while True:
        trials = rng.binomial(colors[None, :], p, size=(4096, len(sizes)))
        hits = np.flatnonzero(trials.sum(axis=1) == k)
        if hits.size:
            return [int(c) for c in trials[hits[0]]]


def index_dtype(numel: int) -> torch.dtype:
    """int32 while flat indices fit (any matrix below 2**31 entries), int64 beyond."""
    return torch.int32 if numel < 2**31 else torch.int64


def sample_positions(numel: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct flat positions in ``[0, numel)``, uniform over subsets, sorted, compact dtype."""
    if not 0 <= count <= numel:
        raise ValueError(f"cannot draw {count} positions from {numel}")
    dtype = index_dtype(numel)
    if count == 0:
        return torch.empty(0, dtype=dtype)
    if count <= numel * _REJECTION_MAX_SHARE:
        # Draw exactly the shortfall each round, keeping distinct values: the result is the set of the
        # first `count` distinct values of an i.i.d. uniform stream, hence uniform over subsets.
        picked = torch.empty(0, dtype=torch.int64)
        while picked.numel() < count:
            draw = torch.randint(numel, (count - picked.numel(),), generator=generator, dtype=torch.int64)
            picked = torch.unique(torch.cat([picked, draw]))
    else:
        chosen = torch.zeros(numel, dtype=torch.bool)
        chosen[torch.randperm(numel, generator=generator)[:count]] = True
        picked = chosen.nonzero().view(-1)      # sorted, in one pass instead of a sort
    return picked.to(dtype)


def column_order(widths: Sequence[int], order: str, generator: torch.Generator) -> list[tuple[int, int]]:
    """Every column ``(matrix, column)`` of the target matrices, in the order columns are taken.

    ``random``: a uniform random permutation of all columns of all matrices (follows the generator).
    ``head``: column 0 of every matrix (model order), then column 1 of every matrix, and so on.
    """
    if order == "random":
        flat = torch.randperm(sum(widths), generator=generator).tolist()
        offsets = np.cumsum([0, *widths])
        which = np.searchsorted(offsets, flat, side="right") - 1
        return [(int(m), int(f - offsets[m])) for m, f in zip(which, flat)]
    if order == "head":
        return [(m, j) for j in range(max(widths, default=0)) for m, w in enumerate(widths) if j < w]
    raise ValueError(order)


def take_columns(ordered: Sequence[tuple[int, int]], heights: Sequence[int], k: int) -> list[tuple[int, int]]:
    """Columns taken in order while adding the next one brings the entry total closer to ``k``.

    Ties add the column and at least one column is always taken, so with equal heights ``h`` this is
    ``max(1, floor(k / h + 1/2))`` columns.
    """
    taken: list[tuple[int, int]] = []
    total = 0
    for m, j in ordered:
        h = heights[m]
        if taken and abs(total + h - k) > abs(total - k):
            break
        taken.append((m, j))
        total += h
    return taken
