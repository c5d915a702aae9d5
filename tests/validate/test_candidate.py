"""Scoring a candidate from cached activations equals running the steered model from pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerpatch.models import build_zero_shot_head
from steerpatch.models.tower import encode_prefix, encode_suffix
from steerpatch.patch import Edit, new_patch
from steerpatch.steer import steer
from steerpatch.validate import CachedActivations, at_strength, score_patch

CLASSES = ["circle", "square", "star", "triangle"]
BLOCK = 8


@pytest.fixture(scope="module")
def setting(vitb32):
    gen = torch.Generator().manual_seed(3)
    pixels = torch.randn(3, 3, 224, 224, generator=gen)
    with torch.no_grad():
        hidden = encode_prefix(vitb32.model, pixels, BLOCK)
        features = encode_suffix(vitb32.model, hidden, BLOCK)
    cached = CachedActivations(ids=[f"x/{i}.png" for i in range(3)], hidden=hidden, features=features, undecodable=[])
    return pixels, cached, build_zero_shot_head(vitb32, CLASSES)


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
def test_cached_scoring_equals_the_steered_model(vitb32, setting, sae_factory, architecture):
    pixels, cached, head = setting
    sae = sae_factory(vitb32, BLOCK, architecture=architecture)
    edits = [(i, "scale", 0.0) for i in range(0, 40, 5)] + [(3, "add", 2.0), (7, "clamp_if_active", 3.0)]
    patch = new_patch("p", vitb32, sae, edits, rationale="t", author="t")
    labels = np.array([0, 1, 2])
    results = score_patch(vitb32.model, head, sae, patch, cached, labels=labels)
    with torch.no_grad(), steer(vitb32, patch, sae):
        expected = head.logits(vitb32.model.encode_image(pixels)).softmax(-1).double().numpy()
    np.testing.assert_allclose(results.probs_after, expected, atol=1e-5)
    assert (results.cos < 1 - 1e-6).all()  # the edit moved every embedding
    np.testing.assert_array_equal(results.pred_after, expected.argmax(-1))


def test_identity_patches_change_nothing(vitb32, setting, sae_factory):
    _, cached, head = setting
    sae = sae_factory(vitb32, BLOCK)
    labels = np.zeros(3, dtype=np.int64)
    for edits in ([], [(1, "scale", 1.0), (2, "add", 0.0)]):
        patch = new_patch("id", vitb32, sae, edits, rationale="t", author="t")
        results = score_patch(vitb32.model, head, sae, patch, cached, labels=labels)
        np.testing.assert_array_equal(results.probs_after, results.probs_before)
        np.testing.assert_allclose(results.cos, 1.0, atol=1e-12)
    suppress = new_patch("s", vitb32, sae, [(1, "scale", 0.0)], rationale="t", author="t")
    at_zero = score_patch(vitb32.model, head, sae, suppress, cached, labels=labels, strength=0.0)
    np.testing.assert_array_equal(at_zero.probs_after, at_zero.probs_before)


def test_at_strength_interpolates_ops_with_an_identity():
    edits = [Edit(latent=1, op="scale", value=0.0), Edit(latent=2, op="add", value=4.0),
             Edit(latent=3, op="clamp", value=5.0)]
    half = at_strength(edits, 0.5)
    assert [e.value for e in half] == [0.5, 2.0, 5.0]
    assert [e.value for e in edits] == [0.0, 4.0, 5.0]  # the originals are untouched
