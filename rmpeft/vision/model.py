"""CLIP image classifiers with a fixed zero-shot head (Ilharco et al., 2023; Ortiz-Jimenez et al., 2023).

:class:`ImageClassifier` is CLIP's image encoder (``vision_model`` + ``visual_projection``, the part
that is fine-tuned; methods find its ``...mlp.fc1`` / ``...mlp.fc2`` layers by name) followed by a
frozen head: one row per class, the mean over the task's prompt templates of the text encoder's
normalised embeddings, normalised again and multiplied by CLIP's logit scale. The head is a buffer, so
it has no gradient and is not counted as a parameter: the model's parameters are exactly the image
encoder's. At initialisation the logits are CLIP's zero-shot logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmpeft.errors import RmpeftError
from rmpeft.vision.classes import ClassSpec
from rmpeft.vision.tiny import clip_config, clip_source


def _pooled(out: Any) -> torch.Tensor:
    """The projected embedding from ``get_*_features`` (a tensor, or an output with ``pooler_output``)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class ImageClassifier(nn.Module):
    """CLIP image encoder + fixed classification head; ``forward(pixel_values)`` returns the logits."""

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module, head: torch.Tensor, config: Any = None):
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection
        self.register_buffer("head", head.detach().float().clone())
        # Not ``config``: peft would take the classifier for a transformers model and remap its modules.
        self.vision_config = config

    @property
    def num_classes(self) -> int:
        return int(self.head.shape[0])

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected (unnormalised) image embeddings."""
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = _normalize(self.embed(pixel_values))
        return feats @ self.head.to(feats.dtype).t()


@torch.no_grad()
def zero_shot_head(clip: nn.Module, tokenizer: Any, spec: ClassSpec) -> torch.Tensor:
    """``[num_classes, projection_dim]`` head rows: per class, the normalised mean over templates of the
    normalised text embeddings, times ``exp(logit_scale)``. Computed in fp32 on the text tower's device."""
    device = next(clip.text_model.parameters()).device
    rows = []
    for name in spec.classnames:
        tokens = tokenizer(spec.prompts(name), padding=True, truncation=True, return_tensors="pt").to(device)
        emb = _normalize(_pooled(clip.get_text_features(input_ids=tokens["input_ids"],
                                                        attention_mask=tokens["attention_mask"])).float())
        rows.append(_normalize(emb.mean(dim=0)))
    return torch.stack(rows) * clip.logit_scale.detach().float().exp()


def build_classifier(clip: nn.Module, tokenizer: Any, spec: ClassSpec) -> ImageClassifier:
    """The classifier of ``spec``'s classes from a loaded ``CLIPModel`` (its text tower is only read)."""
    text_dtype = next(clip.text_model.parameters()).dtype
    clip.text_model.float()
    clip.text_projection.float()
    head = zero_shot_head(clip, tokenizer, spec)
    clip.text_model.to(text_dtype)
    clip.text_projection.to(text_dtype)
    return ImageClassifier(clip.vision_model, clip.visual_projection, head, clip.config.vision_config)


def load_clip(model_cfg: Any, cache_dir: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any, Any]:
    """(CLIPModel, tokenizer, image processor) through ``from_pretrained`` (hub id, folder or tiny random CLIP)."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    source = clip_source(model_cfg, cache_dir)
    revision = model_cfg.get("revision") or None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        processor = AutoImageProcessor.from_pretrained(source, revision=revision)
        clip = CLIPModel.from_pretrained(source, revision=revision, dtype=dtype)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RmpeftError(f"cannot load model '{source}': {first}") from e
    return clip, tokenizer, processor


def load_image_classifier(model_cfg: Any, spec: ClassSpec, cache_dir: str | Path,
                          dtype: torch.dtype = torch.float32) -> tuple[ImageClassifier, Any]:
    """(classifier for ``spec``'s classes, the model's image processor). The text tower is dropped."""
    clip, tokenizer, processor = load_clip(model_cfg, cache_dir, dtype)
    return build_classifier(clip, tokenizer, spec), processor


def classifier_on_meta(model_cfg: Any, num_classes: int = 1) -> ImageClassifier:
    """The classifier described by ``model_cfg.arch`` on the meta device (shapes only; parameter counts)."""
    from transformers import CLIPModel

    config = clip_config(model_cfg["arch"])
    with torch.device("meta"):
        clip = CLIPModel(config)
        head = torch.zeros(num_classes, config.projection_dim)
    return ImageClassifier(clip.vision_model, clip.visual_projection, head, config.vision_config)
