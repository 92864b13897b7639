"""The ``clip`` model family: CLIP's image encoder with a fixed zero-shot head built for the run's task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmpeft.errors import RmpeftError
from rmpeft.families import ModelFamily, register_family
from rmpeft.vision.classes import class_spec
from rmpeft.vision.model import classifier_on_meta, load_image_classifier
from rmpeft.vision.tiny import clip_source


@register_family
class Clip(ModelFamily):
    """An image classifier (:class:`rmpeft.vision.model.ImageClassifier`) loaded with its image
    processor; on the meta device, its image encoder (the parameters trainable shares are taken of)."""

    name = "clip"
    plain_checkpoint = False

    def source(self, model_cfg: Any, cache_dir: str | Path) -> str:
        return clip_source(model_cfg, cache_dir)

    def load(self, model_cfg: Any, cache_dir: str | Path, dtype: torch.dtype, task_cfg: Any) -> tuple[nn.Module, Any]:
        if task_cfg is None:
            raise RmpeftError(f"model '{model_cfg.get('name')}' is an image classifier: its head needs the task")
        return load_image_classifier(model_cfg, class_spec(str(task_cfg.get("name"))), cache_dir, dtype)

    def on_meta(self, model_cfg: Any) -> nn.Module:
        return classifier_on_meta(model_cfg)
