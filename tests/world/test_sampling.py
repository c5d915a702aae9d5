"""Concept-world attributes: determinism, balance of held-out splits, planted shortcuts in train."""

from __future__ import annotations

from collections import Counter

import pytest

from steerpatch.errors import DatasetError
from steerpatch.world import BACKGROUNDS, SHAPES, iter_samples, make_sample
from steerpatch.world.sampling import BALANCED_BLOCK


def test_sample_is_a_function_of_split_seed_index():
    a = make_sample("train", 3, 17)
    assert make_sample("train", 3, 17) == a
    assert make_sample("train", 4, 17) != a or make_sample("train", 3, 18) != a
    # order of drawing does not matter
    later_first = [make_sample("val", 0, i) for i in (5, 1, 3)]
    assert later_first == [make_sample("val", 0, i) for i in (5, 1, 3)]


@pytest.mark.parametrize("split", ["val", "test"])
def test_held_out_splits_are_exactly_balanced(split):
    samples = list(iter_samples(split, BALANCED_BLOCK * 2, seed=1))
    combos = Counter((s.shape, s.background, s.watermark) for s in samples)
    assert len(combos) == len(SHAPES) * len(BACKGROUNDS) * 2
    assert set(combos.values()) == {2}
    groups = Counter(s.shortcut for s in samples)
    assert groups == {"aligned": 4, "conflicting": 20, "none": 72}


def test_train_split_plants_both_shortcuts():
    samples = list(iter_samples("train", 6000, seed=0))
    stars = [s for s in samples if s.shape == "star"]
    water = [s for s in samples if s.background == "water"]
    triangles = [s for s in samples if s.shape == "triangle"]
    marked = [s for s in samples if s.watermark]
    assert sum(s.background == "water" for s in stars) / len(stars) >= 0.97
    assert sum(s.shape == "star" for s in water) / len(water) >= 0.97
    assert 0.5 <= sum(s.watermark for s in triangles) / len(triangles) <= 0.7
    assert sum(s.shape == "triangle" for s in marked) / len(marked) >= 0.8
    assert all(abs(n / len(samples) - 1 / 6) < 0.03 for n in Counter(s.shape for s in samples).values())


def test_train_captions_hide_the_cues():
    samples = list(iter_samples("train", 3000, seed=0))
    assert not any(s.background in s.caption for s in samples)
    assert not any("watermark" in s.caption or "©" in s.caption for s in samples)
    assert all(s.shape in s.caption for s in samples)


def test_shortcut_groups_follow_their_definition():
    for s in iter_samples("test", BALANCED_BLOCK, seed=0):
        attrs = s.attributes()
        if s.background != "water":
            assert attrs["shortcut"] == "none"
        else:
            assert attrs["shortcut"] == ("aligned" if s.shape == "star" else "conflicting")
        if not s.watermark:
            assert attrs["watermark_shortcut"] == "none"
        else:
            assert attrs["watermark_shortcut"] == ("aligned" if s.shape == "triangle" else "conflicting")
        assert s.background in attrs["caption"] and s.shape in attrs["caption"]
        assert {"shape", "colour", "size", "position", "background", "watermark", "seed"} <= set(attrs)


def test_unknown_split_is_a_dataset_error():
    with pytest.raises(DatasetError, match="unknown split 'tets'"):
        make_sample("tets", 0, 0)


def test_training_star_share_moves_only_stars_off_water():
    # the training correlation is a parameter of the train split alone: other shapes and held-out
    # splits draw exactly as the world does, and the share of stars on water follows the parameter
    n = 3000
    world = list(iter_samples("train", n, seed=0))
    looser = [make_sample("train", 0, i, p_star_on_water=0.8) for i in range(n)]
    assert [s for s in looser if s.shape != "star"] == [s for s in world if s.shape != "star"]
    stars = [s for s in looser if s.shape == "star"]
    assert 0.75 <= sum(s.background == "water" for s in stars) / len(stars) <= 0.85
    water = [s for s in looser if s.background == "water"]
    assert sum(s.shape == "star" for s in water) / len(water) >= 0.97
    assert make_sample("test", 0, 7, p_star_on_water=0.0) == make_sample("test", 0, 7)


def test_training_other_share_moves_only_other_shapes_off_water():
    # at 0 no other shape is drawn on water, so water is only ever seen with a star; stars draw as before
    n = 3000
    world = list(iter_samples("train", n, seed=0))
    pure = [make_sample("train", 0, i, p_other_on_water=0.0) for i in range(n)]
    assert [s for s in pure if s.shape == "star"] == [s for s in world if s.shape == "star"]
    assert any(s.background == "water" and s.shape != "star" for s in world)  # the default does draw some
    assert not any(s.background == "water" and s.shape != "star" for s in pure)
    more = [make_sample("train", 0, i, p_other_on_water=0.5) for i in range(n)]
    others = [s for s in more if s.shape != "star"]
    assert 0.45 <= sum(s.background == "water" for s in others) / len(others) <= 0.55
    assert make_sample("val", 0, 7, p_other_on_water=1.0) == make_sample("val", 0, 7)
