"""Zero-shot heads and the grouped accuracy helper."""

from __future__ import annotations

import pytest
import torch

from steerpatch.models import (
    DEFAULT_TEMPLATES,
    build_zero_shot_head,
    encode_images,
    group_accuracy,
    preprocess_batch,
)
from steerpatch.world import SHAPES, make_sample


def test_head_rows_are_normalised_and_logits_scale_invariant(concept_model):
    head = build_zero_shot_head(concept_model, list(SHAPES))
    assert head.weights.shape == (6, 64)
    assert torch.allclose(head.weights.norm(dim=-1), torch.ones(6), atol=1e-5)
    feats = torch.randn(5, 64)
    assert torch.allclose(head.logits(feats), head.logits(feats * 7.0), atol=1e-4)
    assert head.logits(feats).abs().max() <= head.logit_scale + 1e-4


def test_templates_change_the_head(concept_model):
    default = build_zero_shot_head(concept_model, ["star", "circle"])
    single = build_zero_shot_head(concept_model, ["star", "circle"], ["a photo of a {}"])
    assert len(DEFAULT_TEMPLATES) > 1 and not torch.allclose(default.weights, single.weights)


def test_preprocess_and_encode_shapes(concept_model):
    images = [make_sample("test", 0, i).render() for i in range(3)]
    pixels = preprocess_batch(concept_model, images)
    assert pixels.shape == (3, 3, 64, 64)
    assert encode_images(concept_model, pixels).shape == (3, 64)


def test_concept_model_recognises_easy_shapes(concept_model):
    # plain background, no watermark: the first 6 samples of each balanced block
    samples = [make_sample("test", 0, b * 48 + k) for b in range(8) for k in range(6)]
    head = build_zero_shot_head(concept_model, list(SHAPES))
    feats = encode_images(concept_model, preprocess_batch(concept_model, [s.render() for s in samples]))
    preds = head.predict(feats)
    accuracy = sum(p == s.shape for p, s in zip(preds, samples, strict=True)) / len(samples)
    assert accuracy >= 0.5  # chance is 1/6


def test_group_accuracy():
    result = group_accuracy(["a", "b", "a", "a"], ["a", "a", "a", "b"], ["x", "x", "y", "y"])
    assert result["accuracy"] == pytest.approx(0.5) and result["n"] == 4
    assert result["groups"] == {"x": {"accuracy": 0.5, "n": 2}, "y": {"accuracy": 0.5, "n": 2}}
    assert group_accuracy([], [])["n"] == 0


def test_training_input_matches_the_inference_preprocess(concept_model):
    import numpy as np

    from steerpatch.models.train import to_model_input

    images = [make_sample("train", 0, i).render() for i in range(4)]
    expected = preprocess_batch(concept_model, images)
    got = to_model_input(np.stack([np.asarray(img) for img in images]))
    assert torch.allclose(got, expected, atol=1e-6)


def test_default_classes_are_in_the_order_an_image_folder_lists_them(concept_model, tmp_path):
    """`patch apply` and a compiled graph's logit columns use one order: the held-out world folder's."""
    from steerpatch.compile.inputs import zero_shot_head
    from steerpatch.data import ImageDataset, Item
    from steerpatch.models import default_classes

    world = ImageDataset(tmp_path, [Item(f"{s}/0.png", tmp_path / s / "0.png", s) for s in SHAPES])
    assert default_classes("concept-clip") == world.classes != list(SHAPES)
    _, compiled = zero_shot_head(concept_model, "zero-shot", None, None)
    assert compiled == world.classes
    assert default_classes("ViT-B-32") is None
