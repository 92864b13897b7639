"""Image classification with CLIP: fixed zero-shot heads, image tasks and their loaders.

- :mod:`rmpeft.vision.classes`: class names and prompt templates per task.
- :mod:`rmpeft.vision.layouts`: reading images from the hub or local folders.
- :mod:`rmpeft.vision.data`: examples and the train / validation / test splits.
- :mod:`rmpeft.vision.tiny`: the tiny random CLIP for tests and smoke runs.
- :mod:`rmpeft.vision.model`: the classifier (image encoder + fixed head) and its loading.
- :mod:`rmpeft.vision.family`: the ``clip`` model family (registered by :mod:`rmpeft.models`).
"""

from rmpeft.vision.classes import CLASS_SPECS, ClassSpec, class_spec
from rmpeft.vision.data import (
    ImageBatch,
    ImageExample,
    ImageSplit,
    collate_images,
    load_image_splits,
    pixel_values,
)
from rmpeft.vision.model import (
    ImageClassifier,
    build_classifier,
    classifier_on_meta,
    load_clip,
    load_image_classifier,
    zero_shot_head,
)

__all__ = ["CLASS_SPECS", "ClassSpec", "ImageBatch", "ImageClassifier", "ImageExample",
           "ImageSplit", "build_classifier", "class_spec", "classifier_on_meta", "collate_images", "load_clip",
           "load_image_classifier", "load_image_splits", "pixel_values", "zero_shot_head"]
