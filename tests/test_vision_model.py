"""The CLIP image classifier: tiny random CLIP round trip, fixed zero-shot head, no head gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rmpeft.models import count_parameters
from rmpeft.vision.classes import ClassSpec
from rmpeft.vision.data import pixel_values
from rmpeft.vision.model import build_classifier, classifier_on_meta, load_clip
from rmpeft.vision.tiny import materialize_tiny_clip

TINY_CLIP = {
    "name": "tiny-clip-test", "random_init": True, "init_seed": 0, "tokenizer": "byte",
    "arch": {"model_type": "clip", "projection_dim": 16, "logit_scale_init_value": 2.6592,
             "text_config": {"vocab_size": 258, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 0,
                             "eos_token_id": 1, "pad_token_id": 1},
             "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 2, "image_size": 16, "patch_size": 8}},
}
SPEC = ClassSpec(("cat", "dog", "a much longer class name"), ("a photo of a {c}.", "a blurry {c}"))


@pytest.fixture(scope="module")
def clip_parts(cache_dir):
    return load_clip(TINY_CLIP, cache_dir)


def _images(n: int, size: int = 20) -> list[Image.Image]:
    rng = np.random.RandomState(0)
    return [Image.fromarray(rng.randint(0, 256, (size, size + 3, 3), dtype=np.uint8)) for _ in range(n)]


def test_tiny_clip_round_trip(cache_dir, clip_parts):
    folder = materialize_tiny_clip(TINY_CLIP, cache_dir)
    assert materialize_tiny_clip(TINY_CLIP, cache_dir) == folder  # built once, then reused
    clip, tokenizer, processor = clip_parts
    again, _, _ = load_clip(TINY_CLIP, cache_dir)
    for (name, a), b in zip(clip.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    ids = tokenizer(["ab"])["input_ids"][0]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id == clip.config.text_config.eos_token_id
    assert len(ids) == 4
    assert tuple(pixel_values(processor, _images(2)).shape) == (2, 3, 16, 16)


def test_head_equals_clip_zero_shot_logits(clip_parts):
    clip, tokenizer, processor = clip_parts
    single = ClassSpec(SPEC.classnames, ("a photo of a {c}.",))
    clf = build_classifier(clip, tokenizer, single)
    pixels = pixel_values(processor, _images(4))
    prompts = [single.prompts(c)[0] for c in single.classnames]
    tokens = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = clip(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                        pixel_values=pixels).logits_per_image
        got = clf(pixels)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_head_averages_normalised_template_embeddings(clip_parts):
    clip, tokenizer, _ = clip_parts
    clf = build_classifier(clip, tokenizer, SPEC)
    rows = []
    with torch.no_grad():
        for name in SPEC.classnames:  # one unpadded forward per prompt
            embs = [clip.get_text_features(**tokenizer([p], return_tensors="pt")).pooler_output[0]
                    for p in SPEC.prompts(name)]
            mean = torch.stack([e / e.norm() for e in embs]).mean(0)
            rows.append(mean / mean.norm())
    expected = torch.stack(rows) * clip.logit_scale.exp()
    torch.testing.assert_close(clf.head, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(clf.head[0], clf.head[1])


def test_head_is_fixed_and_only_the_image_encoder_trains(clip_parts):
    clip, tokenizer, processor = clip_parts
    clf = build_classifier(clip, tokenizer, SPEC)
    head_before = clf.head.clone()
    names = [n for n, _ in clf.named_parameters()]
    assert "head" not in names and all(n.startswith(("vision_model.", "visual_projection.")) for n in names)
    assert count_parameters(clf) == count_parameters(clip.vision_model) + count_parameters(clip.visual_projection)
    opt = torch.optim.SGD(clf.parameters(), lr=1.0)
    loss = torch.nn.functional.cross_entropy(clf(pixel_values(processor, _images(3))), torch.tensor([0, 1, 2]))
    loss.backward()
    assert not clf.head.requires_grad and clf.head.grad is None
    assert clf.vision_model.encoder.layers[0].mlp.fc1.weight.grad is not None
    opt.step()
    assert torch.equal(clf.head, head_before)
    assert any("mlp.fc1" in n for n in names) and any("mlp.fc2" in n for n in names)


def test_classifier_on_meta_counts_like_the_loaded_model(clip_parts):
    clip, tokenizer, _ = clip_parts
    meta = classifier_on_meta(TINY_CLIP, num_classes=3)
    assert next(meta.parameters()).is_meta
    assert count_parameters(meta) == count_parameters(build_classifier(clip, tokenizer, SPEC))
