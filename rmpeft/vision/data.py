"""Image-classification examples and the train / validation / test splits of an image task.

The split protocol: validation (``task.num_val`` images) is sampled from the official train split with
the data seed, as for the text tasks (:func:`rmpeft.data.sampling.plan_splits`); training uses the rest
of the train split (``task.full_train: true``, the paper's vision setup) or ``task.num_train`` of it;
test is the official test split (or ``task.num_test`` images of it). Splits are lazy: an image is read
and decoded when an example is accessed.

``task.train_augment: random_resized_crop`` gives training images open_clip's training preprocessing
(the setups the paper cites for Table 2): a random crop of 90-100% of the image area with an aspect
ratio in [3/4, 4/3], resized (bicubic) to the model's input size. Each read of a training image draws
its crop (:attr:`ImageExample.box`) from the split's generator, seeded with the data seed; the resize
happens in :func:`collate_images`, which knows the processor's input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import torch
from PIL import Image

from rmpeft.data.sampling import plan_splits
from rmpeft.errors import RmpeftError, unknown_choice
from rmpeft.identity import config_value
from rmpeft.validation import TRAIN_AUGMENTS
from rmpeft.vision.classes import class_spec
from rmpeft.vision.layouts import ImageSource, read_sources


# open_clip's training transform (open_clip 2.0.2 and 2.10.1, src/open_clip/transform.py): torchvision's
# RandomResizedCrop with scale (0.9, 1.0), its default ratio (3/4, 4/3) and bicubic interpolation.
CROP_SCALE = (0.9, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
Box = tuple[int, int, int, int]   # (left, top, right, bottom) in pixels


@dataclass
class ImageExample:
    """One image and its label (an index into the task's class names); ``box``: a training crop
    (:data:`Box`) that :func:`collate_images` resizes to the model's input size, or None."""

    image: Image.Image
    label: int
    box: Box | None = None


def random_resized_crop_box(width: int, height: int, gen: torch.Generator,
                            scale: tuple[float, float] = CROP_SCALE, ratio: tuple[float, float] = CROP_RATIO) -> Box:
    """A random crop of ``scale`` of the image area with aspect ratio (width / height) log-uniform in
    ``ratio``: up to 10 draws; when none fits, the largest centred crop whose ratio lies in ``ratio``."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(2, generator=gen).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return left, top, left + w, top + h
    if width / height < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


class ImageSplit(Sequence[ImageExample]):
    """The examples of ``source`` at ``indices`` (int, slice and extended-slice access). With
    ``augment`` (a seed), every read draws a random resized crop box for the example from a generator
    seeded by (seed, epoch, example): the crops depend on nothing else (not on the read order, and not
    on earlier epochs, so a resumed run draws the crops of an uninterrupted one). The trainer sets
    the epoch (:meth:`set_epoch`)."""

    def __init__(self, source: ImageSource, indices: Sequence[int], augment: int | None = None, epoch: int = 0):
        self.source = source
        self.indices = list(indices)
        self.augment = augment
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, i: int) -> ImageExample: ...
    @overload
    def __getitem__(self, i: slice) -> ImageSplit: ...

    def __getitem__(self, i: int | slice) -> ImageExample | ImageSplit:
        if isinstance(i, slice):
            return ImageSplit(self.source, self.indices[i], self.augment, self.epoch)
        j = self.indices[i]
        image = self.source.image(j)
        box = None
        if self.augment is not None:
            gen = torch.Generator().manual_seed((self.augment * 1_000_003 + self.epoch) * 1_000_003 + j)
            box = random_resized_crop_box(*image.size, gen)
        return ImageExample(image, self.source.labels[j], box)

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


def input_size(processor: Any) -> tuple[int, int]:
    """(width, height) of the images the processor hands the model (its crop size, else its size)."""
    size = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
    if "height" in size and "width" in size:
        return int(size["width"]), int(size["height"])
    if "shortest_edge" in size:
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    raise RmpeftError(f"cannot tell the image processor's input size from crop_size/size {size!r}")


def collate_images(examples: Sequence[ImageExample], processor: Any) -> ImageBatch:
    """One batch through the model's own image preprocessing; an example's crop ``box`` is first cut
    out and resized (bicubic) to the processor's input size, as open_clip's RandomResizedCrop does."""
    images = [e.image if e.box is None else
              e.image.convert("RGB").resize(input_size(processor), Image.Resampling.BICUBIC, box=e.box)
              for e in examples]
    return ImageBatch(pixel_values(processor, images), torch.tensor([e.label for e in examples], dtype=torch.long))


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
    full = bool(config_value(task_cfg, "task.full_train", "task"))
    num_test = config_value(task_cfg, "task.num_test", "task")
    plan = plan_splits(len(train_src), len(test_src),
                       num_train=len(train_src) if full else int(task_cfg.num_train), num_val=int(task_cfg.num_val),
                       num_test=len(test_src) if num_test is None else int(num_test), seed=int(data_seed),
                       full_train=full, task=str(task_cfg.name))
    augment = str(config_value(task_cfg, "task.train_augment", "task"))
    if augment not in TRAIN_AUGMENTS:
        raise unknown_choice("task.train_augment", augment, TRAIN_AUGMENTS)
    crops = int(data_seed) if augment == "random_resized_crop" else None
    return {"train": ImageSplit(train_src, plan.train, crops), "validation": ImageSplit(train_src, plan.validation),
            "test": ImageSplit(test_src, sorted(plan.test))}
