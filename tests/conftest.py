"""Shared fixtures (temporary results/cache folders, the real-data folder) and the test process's
environment. Helpers that test modules import live in ``tests/helpers.py``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from tests.helpers import SHARED_DATA

torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never write the user's cache (materialised models, the sparse engine's strategy decisions).
os.environ["RMPEFT_CACHE"] = tempfile.mkdtemp(prefix="rmpeft-test-cache-")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the whole session, so random-init models are materialised once."""
    return tmp_path_factory.mktemp("rmpeft-cache")


@pytest.fixture
def results_root(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def smoke_overrides(cache_dir, results_root) -> list[str]:
    """Overrides of a fast offline run: tiny-opt on the synthetic task, no progress bars."""
    return ["experiment=smoke", f"cache_dir={cache_dir}", f"results_root={results_root}", "trainer.progress=false"]


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real task data not available at {SHARED_DATA}")
    return SHARED_DATA

