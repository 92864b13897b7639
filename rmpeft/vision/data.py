"""Image-classification examples and the train / validation / test splits of an image task.

The split protocol: validation (``task.num_val`` images) is sampled from the official train split with
the data seed, as for the text tasks (:func:`rmpeft.data.sampling.plan_splits`); training uses the rest
of the train split (``task.full_train: true``, the paper's vision setup) or ``task.num_train`` of it;
test is the official test split (or ``task.num_test`` images of it). Splits are lazy: an image is read
and decoded when an example is accessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import torch
from PIL import Image

from rmpeft.data.sampling import plan_splits
from rmpeft.errors import RmpeftError
from rmpeft.vision.classes import class_spec
from rmpeft.vision.layouts import ImageSource, read_sources


@dataclass
class ImageExample:
    """One image and its label (an index into the task's class names)."""

    image: Image.Image
    label: int


class ImageSplit(Sequence[ImageExample]):
    """The examples of ``source`` at ``indices`` (int, slice and extended-slice access)."""

    def __init__(self, source: ImageSource, indices: Sequence[int]):
        self.source = source
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, i: int) -> ImageExample: ...
    @overload
    def __getitem__(self, i: slice) -> ImageSplit: ...

    def __getitem__(self, i: int | slice) -> ImageExample | ImageSplit:
        if isinstance(i, slice):
            return ImageSplit(self.source, self.indices[i])
        j = self.indices[i]
        return ImageExample(self.source.image(j), self.source.labels[j])

    @property
    def labels(self) -> list[int]:
        return [self.source.labels[j] for j in self.indices]


@dataclass
class ImageBatch:
    """Preprocessed images ``[n, 3, H, W]`` and their labels ``[n]``."""

    pixel_values: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> ImageBatch:
        return ImageBatch(self.pixel_values.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def collate_images(examples: Sequence[ImageExample], processor: Any) -> ImageBatch:
    """One batch through the model's own image preprocessing."""
    return ImageBatch(pixel_values(processor, [e.image for e in examples]),
                      torch.tensor([e.label for e in examples], dtype=torch.long))


def pixel_values(processor: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """The model's own preprocessing (resize, crop, normalise) of PIL images: ``[n, 3, H, W]``."""
    return processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]


def _check_labels(source: ImageSource, num_classes: int, task: str, split: str) -> None:
    bad = [y for y in set(source.labels) if not 0 <= y < num_classes]
    if bad:
        raise RmpeftError(f"task '{task}': {split} labels {sorted(bad)[:5]} are outside 0..{num_classes - 1} "
                          f"({num_classes} class names)")


def load_image_splits(task_cfg: Any, data_seed: int) -> dict[str, ImageSplit]:
    """``{"train", "validation", "test"}`` splits of an image task for one data seed."""
    spec = class_spec(str(task_cfg.name))
    train_src, test_src = read_sources(task_cfg)
    for source, split in ((train_src, "train"), (test_src, "test")):
        _check_labels(source, len(spec.classnames), str(task_cfg.name), split)
    full = bool(task_cfg.get("full_train", True))
    num_test = task_cfg.get("num_test")
    plan = plan_splits(len(train_src), len(test_src),
                       num_train=len(train_src) if full else int(task_cfg.num_train), num_val=int(task_cfg.num_val),
                       num_test=len(test_src) if num_test is None else int(num_test), seed=int(data_seed),
                       full_train=full, task=str(task_cfg.name))
    return {"train": ImageSplit(train_src, plan.train), "validation": ImageSplit(train_src, plan.validation),
            "test": ImageSplit(test_src, sorted(plan.test))}
