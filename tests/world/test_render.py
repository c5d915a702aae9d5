"""Rendering: golden hashes pin the pixels; the drawn content matches the attributes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from steerpatch.world import BACKGROUNDS, SHAPES, compose, make_sample
from steerpatch.world.render import background, shape_mask

# sha256 of the raw RGB bytes; a change here means every shipped artifact trained on the world changes too
GOLDEN = {
    ("test", 0, 0): "46985446d5ffec8a6c8ae8a2f2109f85538c6e6e70be7e2afc2376029ec8711f",
    ("test", 0, 29): "580d7d07181b722cdf398695353c153a0f4b8f63c3d6896c3240fe484124c464",
    ("train", 0, 7): "78df58ba7055aa764d13955a3de747252fa41c945de5beada22b3669b4733f7b",
    ("val", 5, 123): "7dfb67cb1d2b3e4c0a7cd8ce0a3e4174ac40baf22fc0928cbbd5d88de3ba3791",
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
    kwargs = dict(
        shape="circle", colour="red", size_name="small", position="top-left", background_kind="grass"
    )
    plain = np.asarray(compose(watermark=False, rng=np.random.default_rng(1), **kwargs)).astype(float)
    marked = np.asarray(compose(watermark=True, rng=np.random.default_rng(1), **kwargs)).astype(float)
    corner = (slice(50, 64), slice(50, 64))
    assert marked[corner].mean() > plain[corner].mean() + 20
    assert np.abs(marked[:40, :40] - plain[:40, :40]).mean() < 8


def test_shape_is_drawn_where_the_position_says():
    sample = make_sample("test", 0, 3)  # a balanced-split sample on plain background
    img = np.asarray(sample.render()).astype(float)
    cx, cy = {"left": 24, "centre": 32, "right": 40}, {"top": 24, "middle": 32, "bottom": 40}
    parts = sample.position.split("-") if sample.position != "centre" else ["middle", "centre"]
    y, x = cy[parts[0]], cx[parts[1]]
    patch = img[y - 3 : y + 4, x - 3 : x + 4].reshape(-1, 3).mean(axis=0)
    border = (
        img[:4, :].reshape(-1, 3).mean(axis=0)
        if parts[0] != "top"
        else img[-4:, :].reshape(-1, 3).mean(axis=0)
    )
    assert np.abs(patch - border).sum() > 40
