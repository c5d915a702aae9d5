"""Rendering: golden hashes pin the pixels; the drawn content matches the attributes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from steerpatch.world import BACKGROUNDS, SHAPES, compose, make_sample
from steerpatch.world.render import background, shape_mask

# sha256 of the raw RGB bytes; a change here means every shipped artifact trained on the world changes too
GOLDEN = {
    ("test", 0, 0): "9103536b99d187dab1360c8d1ae66c923caa92ff09b1e5d3f6ca551ddbbd3234",
    ("test", 0, 29): "dbf6ff109493eef9956c98037f0fe07cbd802f488bf8cb8a0020a40ebf9f1d66",
    ("train", 0, 7): "f2c810239c088ac107ed901505f36b2a8586b0f2badb9769bb100cb1d8df7ea8",
    ("val", 5, 123): "ff360b67f6e0cc6bbddb5532a4998a555062eedce11c50ebd12d59ebbb03f85e",
}


def _digest(img) -> str:
    return hashlib.sha256(np.asarray(img).tobytes()).hexdigest()


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_golden_images(key):
    img = make_sample(*key).render()
    assert img.mode == "RGB" and img.size == (64, 64)
    assert _digest(img) == GOLDEN[key]


def test_rendering_twice_gives_the_same_bytes():
    sample = make_sample("train", 9, 1234)
    assert _digest(sample.render()) == _digest(sample.render())
    assert _digest(sample.render()) != _digest(make_sample("train", 9, 1235).render())


def test_shapes_have_distinct_masks():
    masks = {s: shape_mask(s, 64, (32.0, 32.0), 12.0, 0.0) for s in SHAPES}
    for shape, mask in masks.items():
        assert mask.min() >= 0.0 and mask.max() <= 1.0
        assert mask[32, 32] > 0.5 or shape == "heart"  # filled at the centre
        assert mask[0, 0] == 0.0
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(masks[a] - masks[b]).sum() > 20, (a, b)


def test_backgrounds_have_their_characteristic_colour():
    rng = np.random.default_rng(0)
    means = {kind: background(kind, 64, rng).reshape(-1, 3).mean(axis=0) for kind in BACKGROUNDS}
    assert means["water"][2] > means["water"][0] + 60  # blue
    assert means["grass"][1] > means["grass"][0] + 40  # green
    assert means["sand"][0] > means["sand"][2] + 40  # tan
    assert abs(means["plain"][0] - means["plain"][2]) < 30  # neutral


def test_watermark_brightens_the_bottom_right_corner():
    kwargs = dict(shape="circle", colour="red", size_name="small", position="centre", background_kind="grass")
    plain = np.asarray(compose(watermark=False, rng=np.random.default_rng(1), **kwargs)).astype(float)
    marked = np.asarray(compose(watermark=True, rng=np.random.default_rng(1), **kwargs)).astype(float)
    corner = (slice(50, 64), slice(50, 64))
    assert marked[corner].mean() > plain[corner].mean() + 20
    assert np.abs(marked[:40, :40] - plain[:40, :40]).mean() < 8


def test_shape_is_drawn_at_the_jittered_centre():
    for index in range(0, 24, 6):  # circles on each background
        sample = make_sample("test", 0, index)
        assert sample.shape == "circle" and sample.position == "centre"
        img = np.asarray(sample.render()).astype(float)
        centre = img[29:36, 29:36].reshape(-1, 3).mean(axis=0)
        corner = img[:6, :6].reshape(-1, 3).mean(axis=0)
        assert np.abs(centre - corner).sum() > 40, sample
