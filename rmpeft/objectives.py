"""Training objectives, one per task kind: how examples become batches, the training loss, and the
task metric.

- ``classification`` / ``multiple_choice`` (:class:`ChoiceObjective`): every candidate is scored by
  its mean log-probability per candidate token given the prompt; the loss is the cross-entropy over
  the candidates' scores, the metric the accuracy of the argmax (any index in ``meta["gold_set"]``
  counts as correct: ReCoRD's entities can appear under several names).
- ``generation`` (:class:`GenerationObjective`): the loss is the LM loss on the gold answer's
  tokens; evaluation decodes greedily and scores the max token F1 over the gold answers.
- ``image_classification`` (:class:`ImageClassificationObjective`): images through the model's image
  processor, cross-entropy over the classifier's logits, accuracy of the argmax (:mod:`rmpeft.vision`).

An objective also names how its task's examples are loaded (:meth:`Objective.load_splits`).

A task config's ``kind`` picks the objective through :data:`OBJECTIVES`; a new kind is one class
registered here with :func:`register` (plus the task's yaml naming it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from rmpeft import metrics, scoring
from rmpeft.data import load_splits
from rmpeft.data.example import Example
from rmpeft.errors import unknown_choice
from rmpeft.identity import config_value
from rmpeft.validation import TASK_OBJECTIVES
from rmpeft.vision.data import ImageBatch, ImageExample, collate_images, load_image_splits


def _identity(model: nn.Module) -> nn.Module:
    return model


class Objective:
    """How one task kind trains and is scored.

    ``tokenizer`` is the model's input preprocessor (its tokenizer; an image classifier's image
    processor), ``trainer_cfg`` the ``trainer`` config (``max_length``, ``max_new_tokens``), ``unwrap`` returns the plain model inside a distributed wrapper (for
    ``generate``).
    """

    kinds: ClassVar[tuple[str, ...]] = ()
    metric: ClassVar[str] = ""
    modality: ClassVar[str] = "text"     # what its examples are (a task's TaskSpec.modality)

    def __init__(self, tokenizer: Any, trainer_cfg: Any, unwrap: Callable[[nn.Module], nn.Module] = _identity):
        self.tokenizer = tokenizer
        self.max_length = int(config_value(trainer_cfg, "trainer.max_length", "trainer"))
        self.max_new_tokens = int(config_value(trainer_cfg, "trainer.max_new_tokens", "trainer"))
        self.eval_max_tokens = config_value(trainer_cfg, "trainer.eval_max_tokens", "trainer")
        self.train_max_tokens = config_value(trainer_cfg, "trainer.train_max_tokens", "trainer")
        self.unwrap = unwrap
        self.max_batch_tokens = 0   # largest batch built so far, in tokens (candidate rows x padded length)

    @classmethod
    def load_splits(cls, task_cfg: Any, data_seed: int) -> dict[str, Any]:
        """The task's ``train`` / ``validation`` / ``test`` examples (text tasks: :func:`rmpeft.data.load_splits`)."""
        return load_splits(task_cfg, data_seed)

    def collate(self, examples: list[Example]) -> scoring.Batch:
        """One training batch of ``examples``."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: scoring.Batch) -> torch.Tensor:
        """The training loss of one batch (already on the model's device)."""
        raise NotImplementedError

    def scores(self, model: nn.Module, examples: list[Example], device: torch.device) -> list[float]:
        """The metric's value on each example (the task metric is their mean)."""
        raise NotImplementedError

    def train_parts(self, batch: Any) -> list[tuple[Any, float]]:
        """A training micro-batch as the parts that are backpropagated one after another, each with its
        share of the micro-batch's loss (the shares add up to 1): here the batch whole."""
        return [(batch, 1.0)]

    @staticmethod
    def aggregate(scores: Sequence[float]) -> float:
        """The task metric from per-example scores: their mean, in [0, 1] (0 for no scores)."""
        return float(sum(scores) / max(len(scores), 1))

    @torch.no_grad()
    def mean_loss(self, model: nn.Module, examples: list[Example], batch_size: int, device: torch.device) -> float:
        """The training objective on ``examples`` (e.g. the validation loss): batch losses averaged
        with each batch weighted by its number of examples. The caller sets eval mode and autocast."""
        total, count = 0.0, 0
        for start in range(0, len(examples), batch_size):
            chunk = examples[start: start + batch_size]
            total += float(self.loss(model, self.collate(chunk).to(device))) * len(chunk)
            count += len(chunk)
        return total / max(count, 1)


OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make ``cls`` the objective of each task kind in ``cls.kinds``."""
    for kind in cls.kinds:
        OBJECTIVES[kind] = cls
    return cls


class TextObjective(Objective):
    """Examples as token sequences ``prompt + candidate``: ``candidates`` says which candidates a
    batch holds (``"all"``, or ``"gold"``: the training target only); ``scoring_path`` how they are
    scored (:data:`rmpeft.scoring.PATHS`: ``auto`` shares each prompt's pass among its candidates)."""

    candidates: ClassVar[str] = "all"
    scoring_path: str = "auto"

    def collate(self, examples: list[Example]) -> scoring.Batch:
        batch = scoring.collate(examples, self.tokenizer, self.max_length, self.candidates)
        self.max_batch_tokens = max(self.max_batch_tokens, batch.num_tokens)
        return batch

    def eval_batches(self, examples: list[Example]) -> list[scoring.Batch]:
        """Batches of ``examples`` of at most ``trainer.eval_max_tokens`` tokens each (candidate rows x
        padded length; an example larger than that is a batch of its own; null: one batch)."""
        if not self.eval_max_tokens:
            return [self.collate(examples)]
        rows = [scoring.encode_example(e, self.tokenizer, self.max_length, self.candidates) for e in examples]
        out = []
        for idx in scoring.token_chunks(rows, int(self.eval_max_tokens)):
            gold = [0 if self.candidates == "gold" else examples[i].gold for i in idx]
            out.append(scoring.collate_rows([rows[i] for i in idx], gold, scoring.pad_id(self.tokenizer)))
            self.max_batch_tokens = max(self.max_batch_tokens, out[-1].num_tokens)
        return out

    def train_parts(self, batch: scoring.Batch) -> list[tuple[scoring.Batch, float]]:
        """Consecutive examples of the micro-batch whose flat layout (candidate rows x padded length)
        holds at most ``trainer.train_max_tokens`` tokens (a larger example alone), each with its share
        of the loss (:meth:`loss_share`): the shares' weighted losses add up to the micro-batch's, so the
        gradient does not change beyond float order."""
        if not self.train_max_tokens or batch.num_tokens <= int(self.train_max_tokens):
            return [(batch, 1.0)]
        chunks = scoring.size_chunks(batch.example_sizes(), int(self.train_max_tokens))
        if len(chunks) == 1:
            return [(batch, 1.0)]
        parts = [batch.select(c) for c in chunks]
        return [(p, self.loss_share(p, batch)) for p in parts]

    def loss_share(self, part: scoring.Batch, whole: scoring.Batch) -> float:
        """``part``'s weight in ``whole``'s loss: its share of the examples (the loss is their mean)."""
        return len(part.num_candidates) / len(whole.num_candidates)

    @torch.no_grad()
    def mean_loss(self, model: nn.Module, examples: list[Example], batch_size: int, device: torch.device) -> float:
        """As :meth:`Objective.mean_loss`, with batches also bounded by ``trainer.eval_max_tokens``."""
        total, count = 0.0, 0
        for start in range(0, len(examples), batch_size):
            for batch in self.eval_batches(examples[start: start + batch_size]):
                n = len(batch.num_candidates)
                total += float(self.loss(model, batch.to(device))) * n
                count += n
        return total / max(count, 1)


@register
class ChoiceObjective(TextObjective):
    """Candidates scored by mean log-probability; cross-entropy over them; accuracy of the argmax."""

    kinds = ("classification", "multiple_choice")
    metric = "accuracy"

    def loss(self, model: nn.Module, batch: scoring.Batch) -> torch.Tensor:
        return scoring.classification_loss(model, batch, self.scoring_path)

    def scores(self, model: nn.Module, examples: list[Example], device: torch.device) -> list[float]:
        preds = [p for batch in self.eval_batches(examples)
                 for p in scoring.predict_choices(model, batch.to(device), self.scoring_path)]
        # ReCoRD: an entity can appear under several names, all of them correct (meta["gold_set"]).
        return [float(metrics.is_correct(p, e.meta.get("gold_set", e.gold))) for p, e in zip(preds, examples)]


@register
class GenerationObjective(TextObjective):
    """LM loss on the gold answer; greedy decoding scored by max token F1 over the gold answers."""

    kinds = ("generation",)
    metric = "f1"
    candidates = "gold"

    def loss(self, model: nn.Module, batch: scoring.Batch) -> torch.Tensor:
        return scoring.lm_loss(model, batch, self.scoring_path)

    def loss_share(self, part: scoring.Batch, whole: scoring.Batch) -> float:
        """The LM loss is a mean over answer tokens: ``part``'s share of them."""
        return lm_token_share(part, whole)

    def scores(self, model: nn.Module, examples: list[Example], device: torch.device) -> list[float]:
        preds = scoring.generate_answers(self.unwrap(model), self.tokenizer, [e.prompt for e in examples],
                                         self.max_length, self.max_new_tokens, device)
        return [metrics.squad_f1(p, e.answers or e.candidates) for p, e in zip(preds, examples)]


@register
class ImageClassificationObjective(Objective):
    """Cross-entropy over an image classifier's logits; accuracy of the argmax."""

    kinds = ("image_classification",)
    metric = "accuracy"
    modality = "image"

    @classmethod
    def load_splits(cls, task_cfg: Any, data_seed: int) -> dict[str, Any]:
        return load_image_splits(task_cfg, data_seed)

    def collate(self, examples: Sequence[ImageExample]) -> ImageBatch:  # type: ignore[override]
        return collate_images(examples, self.tokenizer)

    def loss(self, model: nn.Module, batch: ImageBatch) -> torch.Tensor:  # type: ignore[override]
        return nn.functional.cross_entropy(model(batch.pixel_values).float(), batch.labels)

    def scores(self, model: nn.Module, examples: Sequence[ImageExample],  # type: ignore[override]
               device: torch.device) -> list[float]:
        batch = self.collate(examples).to(device)
        return (model(batch.pixel_values).argmax(dim=-1) == batch.labels).float().tolist()


class CandidateLMObjective(ChoiceObjective):
    """``task.objective=lm`` on a task with candidates: trains (and measures the validation loss) with
    the LM loss on the gold-filled candidate, as MeZO's ``train_as_classification False``; evaluation
    still scores every candidate."""

    def collate(self, examples: list[Example]) -> scoring.Batch:
        batch = scoring.collate(examples, self.tokenizer, self.max_length, "gold")
        self.max_batch_tokens = max(self.max_batch_tokens, batch.num_tokens)
        return batch

    def loss(self, model: nn.Module, batch: scoring.Batch) -> torch.Tensor:
        return scoring.lm_loss(model, batch, self.scoring_path)

    def loss_share(self, part: scoring.Batch, whole: scoring.Batch) -> float:
        """The LM loss is a mean over the gold candidates' tokens: ``part``'s share of them."""
        return lm_token_share(part, whole)

    def eval_batches(self, examples: list[Example]) -> list[scoring.Batch]:
        if not self.eval_max_tokens:
            return [super().collate(examples)]     # every candidate
        return super().eval_batches(examples)




def lm_token_share(part: scoring.Batch, whole: scoring.Batch) -> float:
    """``part``'s share of ``whole``'s candidate tokens (what :func:`rmpeft.scoring.lm_loss` averages over)."""
    return float(part.option_mask.sum()) / max(float(whole.option_mask.sum()), 1.0)


def objective_type(task_cfg: Any) -> type[Objective]:
    """The objective class of ``task_cfg.kind`` (and ``task_cfg.objective`` for tasks with candidates);
    an unknown value raises a one-line error listing the valid ones."""
    kind = str(task_cfg.get("kind"))
    if kind not in OBJECTIVES:
        raise unknown_choice("task.kind", kind, OBJECTIVES)
    if OBJECTIVES[kind] is not ChoiceObjective:   # task.objective is a field of tasks with candidates
        return OBJECTIVES[kind]
    objective = str(config_value(task_cfg, "task.objective", "task"))
    if objective not in TASK_OBJECTIVES:
        raise unknown_choice("task.objective", objective, TASK_OBJECTIVES)
    return CandidateLMObjective if objective == "lm" else ChoiceObjective


def build_objective(task_cfg: Any, tokenizer: Any, trainer_cfg: Any,
                    unwrap: Callable[[nn.Module], nn.Module] = _identity) -> Objective:
    """The objective of ``task_cfg.kind`` (see :func:`objective_type`)."""
    return objective_type(task_cfg)(tokenizer, trainer_cfg, unwrap)
