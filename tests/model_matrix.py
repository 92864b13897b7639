"""The tiny model of each model family that the method and delta tests run on, and the (model, method)
pairs a config check refuses."""

from __future__ import annotations

from typing import Any

import pytest

# The tiny model of each family, with a task of its modality (an image classifier's head is the task's):
# a causal LM in the OPT layout, one in the Llama layout (no biases, grouped key/value heads), and an
# image classifier.
MODELS: dict[str, str] = {"tiny-opt": "synthetic", "tiny-llama": "synthetic", "tiny-clip": "digits"}

# (model, method) pairs the config check refuses in one line, with the reason.
NOT_APPLICABLE: dict[tuple[str, str], str] = {
    ("tiny-llama", "bitfit"): "Llama's linear layers have no biases",
    ("tiny-clip", "adalora"): "peft's AdaLoRA model is a causal-LM task model",
    ("tiny-clip", "prefix"): "the prefix is past keys/values of a causal LM's attention",
}


def model_method_pairs(methods: list[str], models: tuple[str, ...] = tuple(MODELS)) -> list[Any]:
    """``pytest.param(model, method)`` for every pair, the ones in :data:`NOT_APPLICABLE` skipped with their reason."""
    return [pytest.param(model, method, id=f"{model}-{method}",
                         marks=[pytest.mark.skip(reason=NOT_APPLICABLE[model, method])]
                         if (model, method) in NOT_APPLICABLE else [])
            for model in models for method in methods]
