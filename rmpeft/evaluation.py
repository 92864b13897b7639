"""Measuring a built run's model without training it: the task metric on a split and the training
objective on the validation split, both sharded over processes and in eval mode.

Used by the trainer (validation after each epoch, test at the chosen epoch), by zero-shot runs and by
delta evaluation (:mod:`rmpeft.deltas.evaluate`).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from rmpeft.data import Example
from rmpeft.run import Run


@torch.no_grad()
def evaluate(run: Run, examples: list[Example], desc: str = "eval") -> float:
    """The task metric (accuracy or F1, in [0, 1]) on ``examples``, sharded over processes."""
    acc = run.accelerator
    model = run.model
    was_training = model.training
    model.eval()
    shard = examples[acc.process_index:: acc.num_processes]
    size = int(run.cfg.trainer.eval_batch_size)
    scores: list[float] = []
    bar = tqdm(range(0, len(shard), size), desc=desc, leave=False,
               disable=not (run.cfg.trainer.progress and acc.is_main_process))
    for start in bar:
        with acc.autocast():
            scores += run.objective.scores(model, shard[start: start + size], run.device)
    gathered = acc.gather_for_metrics(scores, use_gather_object=True) if acc.num_processes > 1 else scores
    if was_training:
        model.train()
    return run.objective.aggregate(gathered)


@torch.no_grad()
def validation_loss(run: Run) -> float:
    """The training objective on the validation split (mean over examples), sharded over processes."""
    acc, model = run.accelerator, run.model
    was_training = model.training
    model.eval()
    shard = run.splits["validation"][acc.process_index:: acc.num_processes]
    with acc.autocast():
        mean = run.objective.mean_loss(model, shard, int(run.cfg.trainer.eval_batch_size), run.device) if shard else 0.0
    parts = [(mean * len(shard), len(shard))]
    if acc.num_processes > 1:
        parts = acc.gather_for_metrics(parts, use_gather_object=True)
    if was_training:
        model.train()
    return sum(t for t, _ in parts) / max(sum(n for _, n in parts), 1)
