"""Model families: each family's source, loading and base-model fingerprint, on a fresh cache; the
family registry is where `model.family`'s choices come from."""

from __future__ import annotations

import ast

import pytest
from omegaconf import OmegaConf

from rmpeft.base_model import base_fingerprint
from rmpeft.errors import RmpeftError
from rmpeft.models import FAMILIES, build_model_on_meta, count_parameters, get_family, model_source
from rmpeft.run import check_config, registry_fields
from tests.helpers import CONF_DIR, REPO, compose_train

TINY_MODELS = {"tiny-opt": "causal_lm", "tiny-llama": "causal_lm", "tiny-clip": "clip"}


def _model_cfg(name: str):
    return OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")


@pytest.mark.parametrize("name", TINY_MODELS)
def test_the_base_fingerprint_of_every_family_is_taken_of_the_folder_it_loads(name, tmp_path):
    """A delta's base is fingerprinted from the checkpoint its family materialises, also when the cache
    is fresh (nothing materialised by a run before)."""
    cfg = _model_cfg(name)
    base = base_fingerprint(cfg, tmp_path / "fresh-cache")
    assert base["from"] == "weights"
    assert base["source"] == model_source(cfg, tmp_path / "fresh-cache")
    assert base["fingerprint"] == base_fingerprint(cfg, tmp_path / "another-cache")["fingerprint"]


@pytest.mark.parametrize("name,family", TINY_MODELS.items())
def test_every_tiny_model_is_of_its_family_and_builds_on_meta(name, family):
    cfg = _model_cfg(name)
    assert get_family(cfg).name == family
    model = build_model_on_meta(cfg)
    assert next(model.parameters()).device.type == "meta" and count_parameters(model) > 0


def test_model_family_choices_are_the_registered_families():
    assert set(TINY_MODELS.values()) == set(FAMILIES)
    assert registry_fields()["model.family"].choices == tuple(sorted(FAMILIES))
    with pytest.raises(RmpeftError, match=r"^unknown model.family 'audio'; valid choices: causal_lm, clip$"):
        get_family({"family": "audio"})
    cfg = compose_train(["model=tiny-opt", "+model.family=audio"])
    with pytest.raises(RmpeftError, match=r"^model.family='audio' is invalid; expected one of causal_lm, clip$"):
        check_config(cfg)


def test_models_imports_the_vision_package_only_to_register_its_family():
    tree = ast.parse((REPO / "rmpeft" / "models.py").read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    vision = [node for node in imports
              if any("vision" in name for name in [a.name for a in node.names] + [getattr(node, "module", None) or ""])]
    assert [ast.unparse(node) for node in vision] == ["import rmpeft.vision.family"]
