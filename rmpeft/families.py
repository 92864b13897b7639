"""Model families: what a ``model.family`` is loaded from, loaded as and built as on the meta device.

A family is one :class:`ModelFamily` subclass decorated with :func:`register_family`: the causal LMs in
:mod:`rmpeft.models`, the CLIP image classifiers in :mod:`rmpeft.vision.family`. :mod:`rmpeft.models`
imports every family and is the one entry point (``get_family``, ``load_model_and_tokenizer``,
``build_model_on_meta``, ``model_source``); nothing else branches on a family's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

# ``model.family`` of a model config without one (every causal LM's yaml: runs recorded before families
# existed keep their identity).
DEFAULT_FAMILY = "causal_lm"


class ModelFamily:
    """One kind of model.

    ``source`` is the checkpoint ``from_pretrained`` reads (hub id, local folder, or a folder
    materialised into ``cache_dir`` for random-init and converted models); a trained delta's base
    model is fingerprinted from it (:mod:`rmpeft.deltas.base_model`). ``load`` returns the model and
    its input preprocessor (a tokenizer; an image processor for image models); ``on_meta`` the model
    described by ``model.arch`` on the meta device (shapes only: parameter counts, config checks).
    """

    name: ClassVar[str] = ""
    # A merged delta is a checkpoint plain transformers loads (rmpeft-merge), and a masking delta
    # exports as a peft adapter (rmpeft-export --peft).
    plain_checkpoint: ClassVar[bool] = True

    def source(self, model_cfg: Any, cache_dir: str | Path) -> str:
        raise NotImplementedError

    def load(self, model_cfg: Any, cache_dir: str | Path, dtype: torch.dtype, task_cfg: Any) -> tuple[nn.Module, Any]:
        raise NotImplementedError

    def on_meta(self, model_cfg: Any) -> nn.Module:
        raise NotImplementedError


FAMILIES: dict[str, ModelFamily] = {}


def register_family(cls: type[ModelFamily]) -> type[ModelFamily]:
    """Class decorator: make an instance of ``cls`` the family named ``cls.name``."""
    FAMILIES[cls.name] = cls()
    return cls
